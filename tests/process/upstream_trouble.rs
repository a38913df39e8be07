//! Upstream trouble is visible: an unreachable upstream gives a WARN line
//! naming the registry, the repository and the cause, failure counters by
//! registry and kind (manifests too), and `ferry_upstream_up` 0; the
//! access log names the client's user agent; a hostile upstream cannot
//! make ferry log a WARN per request.
//!
//! Its own test binary: it installs a global log subscriber to read what
//! ferry logs.

use crate::support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use http::StatusCode;
use support::*;

/// Log lines, kept for the test to read.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn an_unreachable_upstream_is_logged_counted_and_down() {
    crate::alone(scenario());
}

async fn scenario() {
    let lines = Lines::default();
    let writer = lines.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ferry = Ferry::start(&format!("http://127.0.0.1:{port}")).await;
    let w = within(get(&ferry.url("/v2/app/manifests/latest"))).await;
    assert_eq!(w.status, StatusCode::SERVICE_UNAVAILABLE);
    let d = sha256(b"a layer");
    let w = within(get(&ferry.url(&format!("/v2/app/blobs/{d}")))).await;
    assert_eq!(w.status, StatusCode::SERVICE_UNAVAILABLE);

    let text = ferry.app.metrics.encode();
    let registry = format!("registry=\"127.0.0.1:{port}\"");
    for kind in ["manifest", "blob"] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("ferry_fetch_failures_total{")
                    && l.contains(&format!("kind=\"{kind}\""))
            })
            .unwrap_or_else(|| panic!("no {kind} failure counted:\n{text}"));
        assert!(
            line.contains(&registry) && line.contains("reason=\"upstream\""),
            "{line}"
        );
        assert!(line.ends_with(" 1"), "{line}");
    }
    let up = text
        .lines()
        .find(|l| l.starts_with("ferry_upstream_up{"))
        .unwrap_or_else(|| panic!("no ferry_upstream_up:\n{text}"));
    assert!(up.contains(&registry) && up.ends_with(" 0"), "{up}");
    assert!(
        text.contains("ferry_request_duration_seconds_count{route=\"manifest\",cache=\"none\"} 1"),
        "{text}"
    );
    assert!(text.contains("ferry_build_info{version="), "{text}");
    // CPU time is counted in 10 ms ticks, and this quick process sometimes
    // had none yet: spend two ticks on this thread first.
    let spent = busy_for_ticks(2);
    // Process figures are read at scrape time.
    let text = String::from_utf8(within(get(&ferry.url("/metrics"))).await.body.to_vec()).unwrap();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert!(value("ferry_process_resident_memory_bytes") > 1e6);
    assert!(value("ferry_process_open_fds") >= 3.0);
    // The process's CPU time includes this thread's.
    assert!(value("ferry_process_cpu_seconds") >= spent as f64 / 100.0);

    // The access log names the runtime that asked, cut short if long.
    let v2 = ferry.url("/v2/");
    let agent = [("user-agent", "containerd/1.6.20~ds1")];
    within(request(http::Method::GET, &v2, &agent)).await;
    let long = "x".repeat(1000);
    within(request(http::Method::GET, &v2, &[("user-agent", &long)])).await;

    let log = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("path=/v2/ ") && l.contains("agent=\"containerd/1.6.20~ds1\"")),
        "no access-log line with the user agent:\n{log}"
    );
    let cut = format!("agent=\"{}\"", "x".repeat(160));
    assert!(
        log.contains(&cut),
        "the long agent is not cut at 160:\n{log}"
    );
    let warn = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("manifest fetch failed"))
        .unwrap_or_else(|| panic!("no WARN line for the failure:\n{log}"));
    assert!(
        warn.contains(&format!("registry=\"127.0.0.1:{port}\"")),
        "{warn}"
    );
    assert!(warn.contains("repo=app"), "{warn}");
    assert!(warn.to_lowercase().contains("connect"), "the cause: {warn}");

    // An upstream whose every answer names a token realm on another host:
    // each request is refused, and the WARN is a line per few seconds,
    // not one per request.
    let up = FakeRegistry::start().await;
    up.require_bearer("t0k3n");
    up.set_realm("http://elsewhere.invalid/token");
    let hostile = Ferry::start(&up.url()).await;
    for i in 0..20 {
        let w = within(get(&hostile.url(&format!("/v2/app{i}/manifests/latest")))).await;
        assert!(!w.status.is_success(), "{}", w.status);
    }
    let log = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let refused = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("token realm is on a host outside"))
        .count();
    assert_eq!(refused, 1, "one WARN for 20 refusals:\n{log}");
}

/// Spins until this thread has used at least `ticks` clock ticks of CPU
/// (user + system, as `/proc/thread-self/stat` counts them); returns them.
fn busy_for_ticks(ticks: u64) -> u64 {
    let used = || {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let rest = stat.rsplit_once(')').unwrap().1;
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        f[0] + f[1]
    };
    let mut x = 0u64;
    loop {
        for i in 0..100_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let n = used();
        if n >= ticks {
            return n;
        }
    }
}
