//! The status page at `GET /`: one server-rendered HTML page for a person
//! at a browser, refreshing itself every few seconds, with no script and no
//! front-end build.
//!
//! It shows the downloads in flight (progress, clients following each), the
//! hit ratio, bytes served against bytes fetched upstream (what the cache
//! saved), store use against its cap, and each upstream registry's health
//! and last error. Every figure comes from the same counters `/metrics`
//! exports; anything that came from outside (error texts) is escaped.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use http::{Response, StatusCode};

use super::{response, Body};
use crate::app::App;
use crate::coordinator::Progress;
use crate::metrics::{CacheLabels, CacheStatus};

/// Seconds between the page's own refreshes.
const REFRESH_SECS: u32 = 5;

pub(crate) fn render(app: &Arc<App>) -> Response<Body> {
    let html = page(app);
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(http::header::CACHE_CONTROL, "no-store")
        .header(http::header::CONTENT_LENGTH, html.len())
        .body(response::full(html))
        .expect("valid headers")
}

fn page(app: &Arc<App>) -> String {
    let m = &app.metrics;
    let count = |result: CacheStatus| m.cache.get_or_create(&CacheLabels { result }).get();
    let answered: u64 = CacheStatus::ALL.iter().map(|r| count(*r)).sum();
    let saved: u64 = CacheStatus::ALL
        .iter()
        .filter(|r| r.saved_upstream())
        .map(|r| count(*r))
        .sum();
    let served = m.bytes_served.get();
    let registries = app.coordinator.router().registries();
    let fetched: u64 = registries
        .iter()
        .map(|r| r.upstream.stats().bytes.get())
        .sum();
    let lc = app.coordinator.lifecycle();
    let (used, blobs, cap) = (lc.index.total(), lc.index.len(), lc.config.max_size);

    let mut h = String::with_capacity(8192);
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ferry status</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 62rem; color: #1d2330; background: #f7f8fa; padding: 0 1rem; }}
h1 {{ font-size: 1.5rem; margin: 0 0 .2rem; }} h2 {{ font-size: 1.1rem; margin: 1.8rem 0 .6rem; }}
.sub {{ color: #5b6478; margin: 0 0 1.2rem; }}
.cards {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(13rem, 1fr)); gap: .8rem; }}
.card {{ background: #fff; border: 1px solid #dfe3ea; border-radius: 8px; padding: .8rem 1rem; }}
.card b {{ display: block; font-size: 1.6rem; }} .card span {{ color: #5b6478; font-size: .85rem; }}
table {{ border-collapse: collapse; width: 100%; background: #fff; border: 1px solid #dfe3ea; }}
th, td {{ text-align: left; padding: .45rem .7rem; border-bottom: 1px solid #eef0f4; font-size: .9rem; }}
th {{ background: #eef1f6; }} code {{ font-size: .85rem; }}
.bar {{ background: #e6e9ef; border-radius: 4px; height: .7rem; min-width: 8rem; }}
.bar i {{ display: block; height: 100%; border-radius: 4px; background: #2f7de1; }}
.ok {{ color: #16803c; font-weight: 600; }} .bad {{ color: #c0262d; font-weight: 600; }} .none {{ color: #5b6478; }}
</style></head><body>
<h1>ferry</h1>
<p class="sub">pull-through cache · version {version} · up {uptime} · listening on {listen} · store {store} ({free} free) · this page refreshes every {REFRESH_SECS} s</p>
<div class="cards">
<div class="card"><b>{ratio}</b><span>answered from cache ({saved} of {answered} blob and manifest answers)</span></div>
<div class="card"><b>{served}</b><span>served to clients</span></div>
<div class="card"><b>{fetched}</b><span>fetched upstream (saved {saved_bytes})</span></div>
<div class="card"><b>{used}</b><span>in the store, {blobs} blobs, {cap}</span></div>
</div>
"#,
        version = env!("CARGO_PKG_VERSION"),
        uptime = humantime::format_duration(std::time::Duration::from_secs(
            app.started.elapsed().as_secs()
        )),
        listen = app.config.listen,
        store = escape(&app.config.storage_root.display().to_string()),
        free = size(lc.space.probe().available()),
        ratio = percent(saved, answered),
        served = size(served),
        fetched = size(fetched),
        saved_bytes = size(served.saturating_sub(fetched)),
        used = size(used),
        cap = match cap {
            Some(c) => format!("cap {} ({})", size(c), percent(used, c)),
            None => "no size cap".to_string(),
        },
    );
    if let Some(e) = lc.space.write_failure() {
        let _ = writeln!(
            h,
            "<p class=\"bad\">The store cannot be written: {} (blobs are served uncached until writes work again; /readyz is 503)</p>",
            escape(&e)
        );
    }
    downloads(app, &mut h);
    pins(app, &mut h);
    upstreams(app, &mut h);
    peers(app, &mut h);
    h.push_str("</body></html>\n");
    h
}

/// `ferry.pin`: each pin, what it covers and its size (never evicted).
fn pins(app: &Arc<App>, h: &mut String) {
    let pins = app.coordinator.lifecycle().pinned.snapshot();
    if app.config.lifecycle.pins.is_empty() {
        return;
    }
    let total: u64 = pins.iter().map(|(_, p)| p.bytes).sum();
    let _ = writeln!(
        h,
        "<h2>Pinned images ({}, {})</h2>\n<table><tr><th>pin</th><th>covers</th><th>blobs</th><th>size</th><th>last refresh</th></tr>",
        app.config.lifecycle.pins.len(),
        size(total)
    );
    for pin in &app.config.lifecycle.pins {
        let state = pins
            .iter()
            .find(|(name, _)| *name == pin.image)
            .map(|(_, p)| p);
        let (covers, blobs, bytes, refresh) = match state {
            None => (
                "-".to_string(),
                0,
                0,
                "<span class=\"none\">not resolved yet</span>".to_string(),
            ),
            Some(p) => (
                escape(&p.references.join(", ")),
                p.blobs.len(),
                p.bytes,
                match &p.error {
                    Some(e) => format!(
                        "<span class=\"bad\">{}</span> (keeps what it had)",
                        escape(e)
                    ),
                    None => "<span class=\"ok\">ok</span>".to_string(),
                },
            ),
        };
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code></td><td>{covers}</td><td>{blobs}</td><td>{}</td><td>{refresh}</td></tr>",
            escape(&pin.image),
            size(bytes)
        );
    }
    h.push_str("</table>\n");
}

fn downloads(app: &Arc<App>, h: &mut String) {
    let mut flights = app.coordinator.flights();
    flights.sort_by_key(|f| f.started);
    let _ = writeln!(h, "<h2>Downloads in flight ({})</h2>", flights.len());
    if flights.is_empty() {
        h.push_str("<p class=\"none\">None right now.</p>\n");
        return;
    }
    h.push_str(
        "<table><tr><th>blob</th><th>repository</th><th>progress</th><th></th><th>rate, ETA</th><th>clients</th><th>from</th><th>sent to</th><th>running</th></tr>\n",
    );
    for f in flights {
        let (done, total, state) = match f.progress() {
            Progress::Connecting => (0, None, "connecting"),
            Progress::Streaming { size, written } => (written, size, "streaming"),
            Progress::Verified { size } => (size, Some(size), "verified"),
            Progress::Done { size } => (size, Some(size), "stored"),
            Progress::Failed(_) => (0, None, "failed"),
        };
        let width = total.map_or(0, |t| (done * 100).checked_div(t).unwrap_or(100));
        let secs = f.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let eta = match total {
            Some(t) if rate > 0.0 && t > done => {
                let left = std::time::Duration::from_secs(((t - done) as f64 / rate) as u64);
                format!(", {} left", humantime::format_duration(left))
            }
            _ => String::new(),
        };
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{} of {} ({state})</td><td><div class=\"bar\"><i style=\"width:{width}%\"></i></div></td><td>{}/s{eta}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} s</td></tr>",
            escape(&short(&f.digest.to_string())),
            escape(&f.repo),
            size(done),
            total.map_or("?".to_string(), size),
            size(rate as u64),
            f.readers(),
            escape(&match (f.source(), &f.via_peer) {
                (Some(s), Some(owner)) if s == *owner => format!("owner {s}"),
                (Some(s), _) => format!("relay {s}"),
                (None, _) => "upstream".to_string(),
            }),
            match f.peers_sent_to() {
                0 => String::new(),
                1 => "1 peer".to_string(),
                n => format!("{n} peers"),
            },
            f.started.elapsed().as_secs_f64(),
        );
    }
    h.push_str("</table>\n");
}

/// The cluster's peers and their state (nothing without `ferry.cluster`).
fn peers(app: &Arc<App>, h: &mut String) {
    let Some(c) = app.cluster.as_ref() else {
        return;
    };
    let m = &app.metrics.cluster;
    let _ = writeln!(
        h,
        "<h2>Cluster peers</h2>\n<p class=\"sub\">this replica: <code>{}</code>{} · {} from peers, {} to peers · {} peer requests answered, {} sent</p>",
        escape(c.me().as_deref().unwrap_or("not among the peers")),
        c.zone().map(|z| format!(" in zone {}", escape(z))).unwrap_or_default(),
        size(m.peer_bytes.get()),
        size(m.peer_bytes_sent.get()),
        m.requests_in.get(),
        m.requests_out.get(),
    );
    h.push_str("<table><tr><th>peer</th><th>zone</th><th>state</th></tr>\n");
    for p in c.peers() {
        let mut state = match (p.live, p.reason) {
            (true, _) => "<span class=\"ok\">ready</span>".to_string(),
            (false, why) => format!(
                "<span class=\"bad\">left out: {}</span>",
                escape(why.unwrap_or("not ready"))
            ),
        };
        if !p.routes_differ.is_empty() {
            let list: Vec<&str> = p.routes_differ.iter().map(String::as_str).collect();
            let _ = write!(
                state,
                " <span class=\"bad\">routes otherwise (left out for): {}</span>",
                escape(&list.join(", "))
            );
        }
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td>{state}</td></tr>",
            escape(&p.addr),
            escape(p.zone.as_deref().unwrap_or("")),
        );
    }
    h.push_str("</table>\n");
}

fn upstreams(app: &Arc<App>, h: &mut String) {
    h.push_str("<h2>Upstream registries</h2>\n<table><tr><th>registry</th><th>state</th><th>last answer</th><th>last error</th><th>fetched</th><th>retries</th><th>pull budget</th></tr>\n");
    for r in app.coordinator.router().registries() {
        let s = r.upstream.stats();
        let health = s.health();
        let state = match (&health.last_ok, health.failures_in_a_row) {
            (_, 0) if health.last_ok.is_some() => "<span class=\"ok\">answering</span>".to_string(),
            (_, 0) => "<span class=\"none\">not asked yet</span>".to_string(),
            (_, n) => format!("<span class=\"bad\">failing ({n} in a row)</span>"),
        };
        let last_error = match &health.last_error {
            Some((at, e)) => format!("{} ago: {}", ago(*at), escape(e)),
            None => "none".to_string(),
        };
        let b = &s.budget;
        let mut budget = match b.left() {
            Some(left) => {
                let window = match b.window.get() {
                    0 => String::new(),
                    w => format!(
                        " per {}",
                        humantime::format_duration(std::time::Duration::from_secs(w as u64))
                    ),
                };
                let low = left.saturating_mul(10) < b.limit.get().max(0) as u64;
                let class = if low { "bad" } else { "ok" };
                format!(
                    "<span class=\"{class}\">{left} of {}{window} left</span>",
                    b.limit.get()
                )
            }
            None => "<span class=\"none\">not stated</span>".to_string(),
        };
        if let Some(wait) = b.cooling() {
            let _ = write!(
                budget,
                " <span class=\"bad\">429: not asked for {} s</span>",
                wait.as_secs().max(1)
            );
        }
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code></td><td>{state}</td><td>{}</td><td>{last_error}</td><td>{}</td><td>{}</td><td>{budget}</td></tr>",
            escape(&r.name),
            health.last_ok.map_or("never".to_string(), |t| format!("{} ago", ago(t))),
            size(s.bytes.get()),
            s.retries.get(),
        );
    }
    h.push_str("</table>\n");
}

fn short(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) if hex.len() > 16 => format!("{alg}:{}…", &hex[..16]),
        _ => digest.to_string(),
    }
}

fn ago(t: SystemTime) -> String {
    let s = SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "–".to_string()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// Text made safe inside HTML elements and attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_figures_read_well() {
        assert_eq!(
            escape(r#"<script>"x"&'y'"#),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;"
        );
        assert_eq!(percent(1, 4), "25.0%");
        assert_eq!(percent(1, 0), "–");
        assert_eq!(
            short("sha256:0123456789abcdef0123"),
            "sha256:0123456789abcdef…"
        );
    }
}
