//! Operations endpoints: exact metric values after a scripted scenario,
//! health, and readiness that turns 503 at shutdown (before the listener
//! closes) and when the store is not writable.

use crate::support;

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use support::*;

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_scripted_scenario_exactly() {
    let up = FakeRegistry::start().await;
    let data = blob_bytes(100_000, 400);
    let d = up.add_blob(data);
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url(&format!("/v2/x/blobs/{d}"));
    within(get(&url)).await; // miss
    ferry.settle().await;
    within(get(&url)).await; // hit
    within(get(&url)).await; // hit
    within(get(&ferry.url(&format!("/v2/x/blobs/{}", sha256(b"none"))))).await; // 404
    within(get(&ferry.url("/v2/Bad/blobs/x"))).await; // 400

    let m = within(get(&ferry.url("/metrics"))).await;
    assert_eq!(m.status, StatusCode::OK);
    let text = String::from_utf8(m.body.to_vec()).unwrap();
    assert_eq!(
        metric(&text, r#"ferry_requests_total{route="blob",status="2xx"}"#),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"ferry_requests_total{route="blob",status="4xx"}"#),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, r#"ferry_cache_results_total{result="miss"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, r#"ferry_cache_results_total{result="hit"}"#),
        Some(2.0)
    );
    assert_eq!(metric(&text, "ferry_store_blobs"), Some(1.0));
    assert_eq!(metric(&text, "ferry_store_bytes"), Some(100_000.0));
    assert_eq!(metric(&text, "ferry_inflight_fetches"), Some(0.0));
    assert!(metric(&text, "ferry_served_bytes_total").unwrap() >= 300_000.0);
    assert!(!text.contains(&d[7..]), "no digest in labels");
}

/// `ferry_served_bytes_total` (and the status page's "served") counts
/// what went out, not the `Content-Length` announced: mid-pull it showed
/// the whole blob while a fraction had arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_bytes_count_what_was_sent_not_what_was_announced() {
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let size = 4 << 20;
    let data = blob_bytes(size, 91);
    let d = up.add_blob_with(data.clone(), Fault::PauseAt(1 << 20, gate.clone()));
    let ferry = Ferry::start(&up.url()).await;
    let resp = within(send(
        http::Method::GET,
        &ferry.url(&format!("/v2/x/blobs/{d}")),
        &[],
    ))
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = within(read_at_least(&mut body, 1 << 20)).await;
    gate.reached().await;
    let mid = ferry.app.metrics.bytes_served.get();
    assert!(
        mid >= first.len() as u64 && mid <= 1 << 20,
        "mid-pull: {mid} bytes counted as served, {} received, {size} announced",
        first.len()
    );
    gate.open();
    let mut all = first;
    while let Some(frame) = within(body.frame()).await {
        if let Ok(data) = frame.unwrap().into_data() {
            all.extend_from_slice(&data);
        }
    }
    assert_eq!(sha256(&all), d);
    assert_eq!(ferry.app.metrics.bytes_served.get(), size as u64);
}

/// An error's body is not content served: a ferry whose upstream is down
/// showed error JSON as bytes served and "saved".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_are_not_counted_as_served_or_saved() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let ferry = Ferry::start_with(&format!("http://{closed}"), |cfg| {
        for r in &mut cfg.registries {
            r.retry.max_retries = 0;
        }
    })
    .await;
    let digest = format!("sha256:{}", "ab".repeat(32));
    for path in [
        format!("/v2/x/blobs/{digest}"),
        "/v2/x/manifests/latest".to_string(),
        "/v2/x/../y/tags/list".to_string(),
    ] {
        let w = within(get(&ferry.url(&path))).await;
        assert!(!w.status.is_success(), "{path}: {}", w.status);
        assert!(!w.body.is_empty(), "{path}: an error with a body");
    }
    assert_eq!(ferry.app.metrics.bytes_served.get(), 0);
    let page = String::from_utf8(within(get(&ferry.url("/"))).await.body.to_vec()).unwrap();
    assert!(page.contains("(saved 0 B)"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_metrics_count_bytes_retries_resumes_and_mismatches_by_registry() {
    let up = FakeRegistry::start().await;
    let whole = up.add_blob(blob_bytes(70_000, 401));
    let broken = up.add_blob_with(blob_bytes(90_000, 402), Fault::drop_at_each(vec![40_000]));
    let corrupt = up.add_blob_with(blob_bytes(30_000, 403), Fault::WrongBytes);
    let ferry = Ferry::start(&up.url()).await;
    for d in [&whole, &broken] {
        let r = within(get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // A failed answer (the digest failed before any byte was sent) or a
    // body that ends in an error: never the whole blob, never a reset
    // before the response head.
    let r = within(get(&ferry.url(&format!("/v2/x/blobs/{corrupt}")))).await;
    if r.status == StatusCode::OK {
        assert!(r.body_error.is_some(), "a corrupt blob ended cleanly");
    } else {
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert_eq!(r.error_code(), "DIGEST_INVALID");
    }
    up.fail_next(1, StatusCode::SERVICE_UNAVAILABLE, None);
    let late = up.add_blob(blob_bytes(10_000, 404));
    let r = within(get(&ferry.url(&format!("/v2/x/blobs/{late}")))).await;
    assert_eq!(r.status, StatusCode::OK);
    ferry.settle().await;

    let text = String::from_utf8(within(get(&ferry.url("/metrics"))).await.body.to_vec()).unwrap();
    let host = up.url().trim_start_matches("http://").to_string();
    let of = |name: &str| metric(&text, &format!(r#"{name}{{registry="{host}"}}"#));
    assert_eq!(
        of("ferry_upstream_bytes_total"),
        Some(up.body_bytes() as f64),
        "{text}"
    );
    assert_eq!(of("ferry_upstream_retries_total"), Some(1.0));
    assert_eq!(of("ferry_fetch_resumes_total"), Some(1.0));
    // Every upstream answer but the one 503 was timed.
    assert_eq!(
        of("ferry_upstream_request_duration_seconds_count"),
        Some((up.total_hits() - 1) as f64)
    );
    assert_eq!(fetch_failures_in(&text, "blob", "digest_mismatch"), 1);
    assert_eq!(metric(&text, "ferry_digest_mismatches_total"), Some(1.0));
    assert_eq!(metric(&text, "ferry_store_blobs"), Some(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_503_at_shutdown_before_the_listener_closes() {
    let up = FakeRegistry::start().await;
    let ferry = Ferry::start_with(&up.url(), |c| c.drain_delay = Duration::from_secs(2)).await;
    assert_eq!(
        within(get(&ferry.url("/healthz"))).await.status,
        StatusCode::OK
    );
    assert_eq!(
        within(get(&ferry.url("/readyz"))).await.status,
        StatusCode::OK
    );
    let ready_url = ferry.url("/readyz");
    let stopping = tokio::spawn(ferry.stop());
    let w = within(async {
        loop {
            let w = get(&ready_url).await;
            if w.status != StatusCode::OK {
                return w;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(w.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&w.body).contains("shutting down"));
    within(stopping).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_the_store_is_not_writable() {
    let up = FakeRegistry::start().await;
    let ferry = Ferry::start(&up.url()).await;
    let tmp = ferry.store_root().join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let w = within(get(&ferry.url("/readyz"))).await;
    assert_eq!(w.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&w.body).contains("store not writable"));
    // Upstream state does not matter for readiness.
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    drop(up);
    assert_eq!(
        within(get(&ferry.url("/readyz"))).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_directory_that_cannot_be_written_is_named_and_fails_readiness() {
    let up = FakeRegistry::start().await;
    let ferry = Ferry::start(&up.url()).await;
    // Not only tmp/: any store directory (root writes anywhere, so a file
    // in the directory's place stands for a read-only one).
    let dir = ferry.store_root().join("repositories");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let w = within(get(&ferry.url("/readyz"))).await;
    assert_eq!(w.status, StatusCode::SERVICE_UNAVAILABLE);
    let text = String::from_utf8_lossy(&w.body).to_string();
    assert!(text.contains("repositories"), "{text}");
    std::fs::remove_file(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    assert_eq!(
        within(get(&ferry.url("/readyz"))).await.status,
        StatusCode::OK
    );

    // A fetch whose write fails: served uncached, counted as a store
    // failure (not "no room"), and readiness says why.
    let tmp = ferry.store_root().join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let d = up.add_blob(blob_bytes(300_000, 1950));
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await;
    assert_eq!(sha256(&w.body), d);
    assert_eq!(ferry.fetch_failures("store"), 1);
    assert_eq!(ferry.fetch_failures("no_room"), 0);
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    let w = within(get(&ferry.url("/readyz"))).await;
    assert_eq!(
        w.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the failed write is recent"
    );
    let text = String::from_utf8_lossy(&w.body).to_string();
    assert!(text.contains("a write failed"), "{text}");
}

#[tokio::test]
async fn a_store_that_cannot_be_written_is_refused_at_start_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    // "blobs" exists as a file: the directory can be neither created nor
    // written.
    std::fs::write(root.join("blobs"), b"").unwrap();
    let Err(e) = ferry::store::FsStore::open(&root) else {
        panic!("a store that cannot be written was opened");
    };
    assert!(e.to_string().contains("blobs"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_downloads_in_flight_and_registry_health() {
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let d = up.add_blob_with(
        blob_bytes(2 << 20, 410),
        Fault::PauseAt(1 << 20, gate.clone()),
    );
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url(&format!("/v2/x/blobs/{d}"));
    let fetch = |u: String| tokio::spawn(async move { get(&u).await });
    let first = fetch(url.clone());
    gate.reached().await;
    let joiner = fetch(url.clone());
    within(async {
        while ferry
            .app
            .coordinator
            .flight(&d.parse().unwrap())
            .is_none_or(|f| {
                f.readers() < 2
                    || !matches!(f.progress(),
                        ferry::coordinator::Progress::Streaming { written, .. } if written == 1 << 20)
            })
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    let page = within(get(&ferry.url("/"))).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(html.contains(r#"<meta http-equiv="refresh" content="5">"#));
    assert!(!html.contains("<script"), "works without JavaScript");
    assert!(html.contains("Downloads in flight (1)"), "{html}");
    assert!(
        html.contains(&d[..7 + 16]),
        "the digest in flight is listed"
    );
    assert!(html.contains("1.0 MiB of 2.0 MiB (streaming)"), "{html}");
    // The repository it is fetched for, where ferry listens and stores.
    assert!(html.contains("/x</code>"), "{html}");
    assert!(
        html.contains(&format!("listening on {}", ferry.addr)),
        "{html}"
    );
    assert!(html.contains("free)"), "{html}");
    let host = up.url().trim_start_matches("http://").to_string();
    assert!(html.contains(&format!("<code>{host}</code>")));
    assert!(html.contains("answering"));
    gate.open();
    for r in [within(first).await.unwrap(), within(joiner).await.unwrap()] {
        assert_eq!(sha256(&r.body), d);
    }
    ferry.settle().await;

    // A failing upstream shows with its last error; the hit ratio moves.
    let dead = Ferry::start("http://127.0.0.1:1").await;
    within(get(&dead.url(&format!("/v2/x/blobs/{d}")))).await;
    let html = String::from_utf8(within(get(&dead.url("/"))).await.body.to_vec()).unwrap();
    assert!(html.contains("failing ("), "{html}");
    assert!(html.contains("Downloads in flight (0)"));
    within(get(&url)).await;
    let html = String::from_utf8(within(get(&ferry.url("/"))).await.body.to_vec()).unwrap();
    // miss + joined + hit: two of three answered without a new download.
    assert!(html.contains("<b>66.7%</b>"), "{html}");
}
