//! Hostile clients: floods of requests for blobs that do not exist, and
//! for many distinct blobs at once, must not turn into unbounded upstream
//! traffic.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_for_a_missing_blob_costs_one_upstream_request_per_ttl() {
    let up = FakeRegistry::start().await;
    let ferry = Ferry::start(&up.url()).await;
    let missing = sha256(b"no such layer");
    let url = ferry.url(&format!("/v2/x/blobs/{missing}"));
    let r = within(get(&url)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "BLOB_UNKNOWN");
    assert_eq!(up.blob_gets(&missing), 1);

    let flood: Vec<_> = (0..100)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await.status })
        })
        .collect();
    for f in flood {
        assert_eq!(within(f).await.unwrap(), StatusCode::NOT_FOUND);
    }
    // HEADs are answered from the same memory.
    let r = within(request(http::Method::HEAD, &url, &[])).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        up.blob_gets(&missing),
        1,
        "the flood never reached upstream"
    );
    assert_eq!(up.hits("HEAD", &format!("/v2/x/blobs/{missing}")), 0);
    assert_eq!(ferry.app.metrics.absent_hits.get(), 101);

    // Another repository asks afresh; after absentTTL the upstream is
    // asked again (the blob may have been pushed since).
    within(get(&ferry.url(&format!("/v2/y/blobs/{missing}")))).await;
    assert_eq!(up.blob_gets(&missing), 2);
    ferry.advance(Duration::from_secs(11));
    within(get(&url)).await;
    assert_eq!(up.blob_gets(&missing), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_per_registry_are_bounded_and_the_rest_wait_their_turn() {
    let up = FakeRegistry::start().await;
    let (ga, gb) = (Gate::new(), Gate::new());
    let a = up.add_blob_with(blob_bytes(1 << 20, 600), Fault::PauseAt(1000, ga.clone()));
    let b = up.add_blob_with(blob_bytes(1 << 20, 601), Fault::PauseAt(1000, gb.clone()));
    let c = up.add_blob(blob_bytes(50_000, 602));
    let ferry = Ferry::start_with(&up.url(), |cfg| cfg.max_fetches_per_registry = 2).await;
    let fetch = |d: &str| {
        let url = ferry.url(&format!("/v2/x/blobs/{d}"));
        tokio::spawn(async move { get(&url).await })
    };
    let (ra, rb) = (fetch(&a), fetch(&b));
    ga.reached().await;
    gb.reached().await;
    let rc = fetch(&c);
    within(async {
        while ferry.app.metrics.fetches_queued.get() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(up.blob_gets(&c), 0, "a third download waits for a permit");
    ga.open();
    let r = within(rc).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(sha256(&r.body), c);
    assert_eq!(ferry.app.metrics.fetches_queued.get(), 0);
    gb.open();
    for (r, d) in [(ra, &a), (rb, &b)] {
        assert_eq!(sha256(&within(r).await.unwrap().body), *d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_closed_after_the_pool_idle_timeout() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(blob_bytes(1000, 1900));
    let ferry = Ferry::start_with(&up.url(), |c| {
        c.timeouts.pool_idle = Duration::from_millis(300)
    })
    .await;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await;
    assert_eq!(sha256(&w.body), d);
    // Nothing more is asked: the pool's own timer closes the idle
    // connection (without one it would stay open until the next request).
    within(async {
        while up.open_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
