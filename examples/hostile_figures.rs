//! Figures for the hostile-input limits, measured in one process (ferry and
//! its fake upstreams together, release build):
//!
//! ```sh
//! cargo run --release --example hostile_figures
//! ```
//!
//! 1. peak anonymous memory while an upstream serves an endless paged tag
//!    list (1 MiB pages, each linking to another);
//! 2. anonymous memory after 15,000 invented repository names against an
//!    upstream that demands a 2 KB bearer token for every one, twice;
//! 3. time to first byte of an unrelated cold blob after 64 downloads whose
//!    clients went away (their upstreams stall);
//! 4. upstream connections at once under an HTTP/2 flood (30 connections
//!    × 200 streams of `tags/list`) against an upstream that never answers;
//! 5. time to first byte of one client's cold blob while another client
//!    holds all 64 fetch slots with downloads it reads and has 64 more
//!    queued (from the moment the first 64 can finish).
//!
//! It measures and prints; the tests assert the behaviour.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Empty};
use support::raw_upstream::{endless_tags, RawUpstream};
use support::*;

const MIB: f64 = 1024.0 * 1024.0;

/// Samples anonymous memory every 5 ms until stopped; returns the peak.
fn sample_peak() -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let t = std::thread::spawn(move || {
        let mut peak = 0;
        while !s.load(Ordering::SeqCst) {
            peak = peak.max(anon_rss());
            std::thread::sleep(Duration::from_millis(5));
        }
        peak
    });
    (stop, t)
}

#[tokio::main]
async fn main() {
    // 1. Endless paged tag list.
    let up = RawUpstream::start(endless_tags(5000, 200)).await;
    let ferry = Ferry::start(&up.url()).await;
    let base = anon_rss();
    let (stop, peak) = sample_peak();
    let w = get(&ferry.url("/v2/x/tags/list")).await;
    stop.store(true, Ordering::SeqCst);
    let peak = peak.join().unwrap();
    println!(
        "1. endless paged tag list: status {}, {} pages read, anonymous memory {:.1} MiB, peak {:.1} MiB (+{:.1} MiB)",
        w.status.as_u16(),
        up.requests(),
        base as f64 / MIB,
        peak as f64 / MIB,
        peak.saturating_sub(base) as f64 / MIB
    );
    drop(ferry);

    // 2. A token for every invented name.
    let up = FakeRegistry::start().await;
    let token_bytes: usize = std::env::var("TOKEN_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    up.require_bearer(&"t".repeat(token_bytes));
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url("");
    let mut before = anon_rss();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for run in 1..=runs {
        let done = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|w| {
                let (url, done) = (url.clone(), done.clone());
                tokio::spawn(async move {
                    for i in (w..15_000).step_by(16) {
                        let p = format!("{url}/v2/run{run}/name{i}/manifests/latest");
                        let _ = request(Method::HEAD, &p, &[]).await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let asked = up.token_queries().len();
        // The fake notes every request (its Authorization included): that
        // is the fake's memory, not ferry's.
        up.forget_requests();
        let after = anon_rss();
        println!(
            "2. token cache, run {run}: {} invented names, {} token requests this run; anonymous memory {:.1} -> {:.1} MiB ({:+.0} bytes per name)",
            done.load(Ordering::Relaxed),
            asked,
            before as f64 / MIB,
            after as f64 / MIB,
            (after as f64 - before as f64) / 15_000.0
        );
        before = after;
    }
    drop(ferry);

    // 3. 64 abandoned downloads, then an unrelated cold blob.
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let big: Vec<String> = (0..64)
        .map(|i| {
            up.add_blob_with(
                blob_bytes(8 << 20, 7000 + i),
                Fault::PauseAt(1 << 20, gate.clone()),
            )
        })
        .collect();
    let cold = up.add_blob(blob_bytes(1 << 20, 7100));
    let ferry = Ferry::start(&up.url()).await;
    for d in &big {
        let resp = send(Method::GET, &ferry.url(&format!("/v2/x/blobs/{d}")), &[]).await;
        let mut body = resp.into_body();
        read_at_least(&mut body, 1).await;
    }
    let t = Instant::now();
    let resp = send(Method::GET, &ferry.url(&format!("/v2/x/blobs/{cold}")), &[]).await;
    let mut body = resp.into_body();
    read_at_least(&mut body, 1).await;
    println!(
        "3. first byte of a cold blob after 64 abandoned downloads: {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    gate.open();
    drop(ferry);

    // 5. A greedy client and a modest one.
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let greedy: Vec<String> = (0..128)
        .map(|i| {
            up.add_blob_with(
                blob_bytes(8 << 20, 7200 + i),
                Fault::PauseAt(1 << 20, gate.clone()),
            )
        })
        .collect();
    let modest = up.add_blob(blob_bytes(1 << 20, 7400));
    let ferry = Ferry::start_with(&up.url(), |cfg| {
        cfg.listener.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let mut readers = Vec::new();
    for d in &greedy {
        let url = ferry.url(&format!("/v2/x/blobs/{d}"));
        readers.push(tokio::spawn(async move {
            request(Method::GET, &url, &[("x-forwarded-for", "10.0.0.1")]).await
        }));
    }
    while ferry.app.metrics.fetches_queued.get() < 64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let url = ferry.url(&format!("/v2/x/blobs/{modest}"));
    let b = tokio::spawn(async move {
        let resp = send(Method::GET, &url, &[("x-forwarded-for", "10.0.0.2")]).await;
        let mut body = resp.into_body();
        read_at_least(&mut body, 1).await;
        Instant::now()
    });
    while ferry.app.metrics.fetches_queued.get() < 65 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let opened = Instant::now();
    gate.open();
    let first = b.await.unwrap();
    println!(
        "5. first byte of client B's cold blob behind client A's 64 downloads and 64 queued: {:.1} ms after A's could finish",
        first.duration_since(opened).as_secs_f64() * 1000.0
    );
    for r in readers {
        r.await.unwrap();
    }
    drop(ferry);

    // 4. HTTP/2 flood against an upstream that never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (open, most, total) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let (o, m, n) = (open.clone(), most.clone(), total.clone());
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            m.fetch_max(o.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            n.fetch_add(1, Ordering::SeqCst);
            let o = o.clone();
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut c, &mut sink).await;
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    let ferry = Ferry::start(&format!("http://{addr}")).await;
    let statuses = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let mut streams = Vec::new();
    for c in 0..30 {
        let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http();
        for s in 0..200 {
            let (client, statuses) = (client.clone(), statuses.clone());
            let uri = ferry.url(&format!("/v2/c{c}/s{s}/tags/list"));
            streams.push(tokio::spawn(async move {
                let req = http::Request::get(uri).body(Empty::new()).unwrap();
                let status = match tokio::time::timeout(
                    Duration::from_secs(20),
                    client.request(req),
                )
                .await
                {
                    Ok(Ok(r)) => {
                        let s = r.status();
                        let _ = r.into_body().collect().await;
                        s.as_u16().to_string()
                    }
                    Ok(Err(_)) => "error".to_string(),
                    Err(_) => "no answer in 20 s".to_string(),
                };
                *statuses.lock().unwrap().entry(status).or_insert(0usize) += 1;
            }));
        }
    }
    let probe = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t = Instant::now();
        let w = get(&ferry.url("/v2/")).await;
        (w.status, t.elapsed())
    };
    let (probe, _) = tokio::join!(probe, futures::future::join_all(streams));
    println!(
        "4. HTTP/2 flood, 30 connections x 200 streams: at most {} upstream connections at once ({} in all); answers {:?}; an unrelated /v2/ meanwhile: {} in {:.1} ms",
        most.load(Ordering::SeqCst),
        total.load(Ordering::SeqCst),
        statuses.lock().unwrap(),
        probe.0.as_u16(),
        probe.1.as_secs_f64() * 1000.0
    );
}
