//! The upstream's pull budget: Docker Hub's `ratelimit-*` headers are read
//! into metrics and the status page, and a `429` cools the registry down
//! until its `Retry-After` (seconds, an HTTP-date, or a default): no
//! request reaches it meanwhile, and every client's `429` says how long.

use crate::support;

use std::time::{Duration, SystemTime};

use http::StatusCode;
use support::*;

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstreams_budget_is_read_into_metrics_and_the_status_page() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(blob_bytes(10_000, 1));
    let ferry = Ferry::start(&up.url()).await;
    let text = ferry.app.metrics.encode();
    assert!(
        !text.contains("ratelimit"),
        "no budget before one is stated"
    );
    up.set_extra_headers(&[
        ("ratelimit-limit", "100;w=21600"),
        ("ratelimit-remaining", "76;w=21600"),
        ("docker-ratelimit-source", "192.0.2.1"),
    ]);
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    let text = ferry.app.metrics.encode();
    assert_eq!(
        metric(&text, "ferry_upstream_ratelimit_limit{"),
        Some(100.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "ferry_upstream_ratelimit_remaining{"),
        Some(76.0)
    );
    assert_eq!(
        metric(&text, "ferry_upstream_ratelimit_window_seconds{"),
        Some(21600.0)
    );
    let page = String::from_utf8(within(get(&ferry.url("/"))).await.body.to_vec()).unwrap();
    assert!(page.contains("76 of 100 per 6h left"), "{page}");
}

/// A ferry whose upstream answers 429 with `retry_after` (a header value,
/// or none) to everything; `n` clients ask for `n` distinct blobs.
/// Returns the upstream's requests and the clients' answers.
async fn refused(retry_after: Option<String>, n: usize) -> (usize, Vec<Whole>) {
    let up = FakeRegistry::start().await;
    let blobs: Vec<String> = (0..n)
        .map(|i| up.add_blob(blob_bytes(1000, 100 + i as u64)))
        .collect();
    let ferry = Ferry::start(&up.url()).await;
    if let Some(v) = &retry_after {
        up.set_extra_headers(&[("retry-after", v)]);
    }
    up.set_status_override(Some(StatusCode::TOO_MANY_REQUESTS));
    let before = up.total_hits();
    let mut answers = Vec::new();
    for d in &blobs {
        answers.push(within(get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await);
    }
    (up.total_hits() - before, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_cools_the_registry_down_whatever_form_its_retry_after_takes() {
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(300));
    for (form, header, wait) in [
        ("seconds", Some("120".to_string()), 120),
        ("an HTTP-date", Some(date), 300),
        ("none", None, 60),
    ] {
        let (asked, answers) = refused(header, 10).await;
        // One request found out; the nine after it were answered at once.
        assert_eq!(asked, 1, "{form}: upstream requests for 10 client requests");
        for w in &answers {
            assert_eq!(w.status, StatusCode::TOO_MANY_REQUESTS, "{form}");
            assert_eq!(w.error_code(), "TOOMANYREQUESTS");
            let secs: u64 = w.header("retry-after").unwrap().parse().unwrap();
            assert!(
                secs <= wait && secs + 5 >= wait,
                "{form}: Retry-After {secs}, expected about {wait}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_whose_wait_fits_the_clients_is_retried_once_it_ends() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(blob_bytes(1000, 7));
    let ferry = Ferry::start(&up.url()).await;
    up.fail_next(1, StatusCode::TOO_MANY_REQUESTS, Some(1));
    let before = up.total_hits();
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), d);
    assert_eq!(
        up.total_hits() - before,
        2,
        "the 429 and one retry after it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_stops_at_the_reserve_it_leaves_for_clients() {
    let up = FakeRegistry::start().await;
    let layer = up.add_blob(blob_bytes(5000, 11));
    let config = bytes::Bytes::from_static(br#"{"architecture":"amd64","os":"linux"}"#);
    let config_len = config.len();
    let cd = up.add_blob(config);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{config_len}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":5000}}]}}"#
    );
    let media = "application/vnd.oci.image.manifest.v1+json";
    up.add_manifest("team/app", Some("v1"), media, manifest.clone().into());
    up.add_manifest("team/app", Some("v2"), media, manifest.into());
    let ferry = Ferry::start(&up.url()).await;
    // The registry said it has 10 pulls left (the default reserve).
    up.set_extra_headers(&[
        ("ratelimit-limit", "100;w=21600"),
        ("ratelimit-remaining", "10;w=21600"),
    ]);
    let w = within(get(&ferry.url(&format!("/v2/team/app/blobs/{layer}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    let manifests = || up.hits("GET", "/v2/team/app/manifests/v1");
    let e = ferry::prefetch::prefetch(&ferry.app, "team/app:v1", &|_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ferry::prefetch::PrefetchError::Budget {
                left: 10,
                reserve: 10,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("rateLimitReserve"), "{e}");
    assert_eq!(manifests(), 0, "a pull spent past the reserve");
    // With more left, it goes ahead; a client's own pull is never held back.
    up.set_extra_headers(&[
        ("ratelimit-limit", "100;w=21600"),
        ("ratelimit-remaining", "11;w=21600"),
    ]);
    within(get(&ferry.url(&format!("/v2/team/app/blobs/{cd}")))).await;
    let report = ferry::prefetch::prefetch(&ferry.app, "team/app:v1", &|_| {})
        .await
        .unwrap();
    assert_eq!(report.manifests, 1);
    up.set_extra_headers(&[
        ("ratelimit-limit", "100;w=21600"),
        ("ratelimit-remaining", "0;w=21600"),
    ]);
    let other = up.add_blob(blob_bytes(100, 12));
    within(get(&ferry.url(&format!("/v2/team/app/blobs/{other}")))).await;
    let left = &ferry.app.coordinator.router().registries()[0]
        .upstream
        .stats()
        .budget;
    assert_eq!(left.left(), Some(0));
    let w = within(get(&ferry.url("/v2/team/app/manifests/v2"))).await;
    assert_eq!(
        w.status,
        StatusCode::OK,
        "clients are not limited by the reserve"
    );
}
