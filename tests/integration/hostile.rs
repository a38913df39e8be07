//! Hostile clients: floods of requests for blobs that do not exist, and
//! for many distinct blobs at once, must not turn into unbounded upstream
//! traffic.

use crate::support;

use std::time::Duration;

use http::{Method, StatusCode};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_registry_that_does_not_answer_are_capped_and_the_rest_get_503() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // An upstream that accepts and never answers, counting the
    // connections open at once (a connection ends when ferry closes it).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (o, m) = (open.clone(), most.clone());
    let server = tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let now = o.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            let o = o.clone();
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut c, &mut sink).await;
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    const CAP: usize = 4;
    let ferry = Ferry::start_with(&format!("http://{addr}"), |c| {
        c.request_limits.max = CAP;
        c.request_limits.wait = Duration::from_millis(200);
        c.timeouts.response_header = Duration::from_secs(60);
    })
    .await;
    // 20 clients ask for tag lists of different repositories at once.
    let asks = (0..20).map(|i| {
        let url = ferry.url(&format!("/v2/r{i}/tags/list"));
        async move { tokio::time::timeout(Duration::from_secs(5), get(&url)).await }
    });
    let answers = futures::future::join_all(asks).await;
    let refused: Vec<_> = answers.iter().flatten().collect();
    for w in &refused {
        assert_eq!(w.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(w.header("retry-after"), Some("1"));
        assert!(String::from_utf8_lossy(&w.body).contains("maxRequestsPerRegistry"));
    }
    assert_eq!(
        refused.len(),
        20 - CAP,
        "all but the {CAP} holding a slot are refused after their wait"
    );
    assert_eq!(
        most.load(Ordering::SeqCst),
        CAP,
        "upstream connections at once for a cap of {CAP}"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_every_client_left_give_their_slots_to_waiting_ones() {
    let up = FakeRegistry::start().await;
    let (ga, gb) = (Gate::new(), Gate::new());
    let a = up.add_blob_with(
        blob_bytes(1 << 20, 610),
        Fault::PauseAt(100_000, ga.clone()),
    );
    let b = up.add_blob_with(
        blob_bytes(1 << 20, 611),
        Fault::PauseAt(100_000, gb.clone()),
    );
    let c = up.add_blob(blob_bytes(50_000, 612));
    let ferry = Ferry::start_with(&up.url(), |cfg| cfg.max_fetches_per_registry = 2).await;
    // Two clients start big downloads, read a little, and go away.
    for d in [&a, &b] {
        start_and_leave(&ferry.url(&format!("/v2/x/blobs/{d}"))).await;
    }
    ga.reached().await;
    gb.reached().await;
    // An unrelated cold blob is not stuck behind them: a deserted download
    // gives its slot up as soon as it is wanted (their upstreams stall).
    let r = within(get(&ferry.url(&format!("/v2/x/blobs/{c}")))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(sha256(&r.body), c);
    let text = String::from_utf8(within(get(&ferry.url("/metrics"))).await.body.to_vec()).unwrap();
    assert_eq!(
        fetch_failures_in(&text, "blob", "deserted"),
        1,
        "one waiter is owed one cancelled download, not every deserted one:\n{text}"
    );
    // A deserted download nobody waits behind may finish (and is kept);
    // a cancelled one left no temp file.
    ga.open();
    gb.open();
    ferry.settle().await;
    assert_eq!(
        std::fs::read_dir(ferry.store_root().join("tmp"))
            .unwrap()
            .count(),
        0,
        "a cancelled download's temp file is removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_download_every_client_left_never_reaches_the_upstream() {
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let a = up.add_blob_with(blob_bytes(1 << 20, 620), Fault::PauseAt(1000, gate.clone()));
    let b = up.add_blob(blob_bytes(1 << 20, 621));
    let ferry = Ferry::start_with(&up.url(), |cfg| cfg.max_fetches_per_registry = 1).await;
    // A reads its blob (and holds the one slot); B queues, then leaves.
    let url_a = ferry.url(&format!("/v2/x/blobs/{a}"));
    let reader = tokio::spawn(async move { get(&url_a).await });
    gate.reached().await;
    let url_b = ferry.url(&format!("/v2/x/blobs/{b}"));
    let leaver = tokio::spawn(async move { get(&url_b).await });
    within(async {
        while ferry.app.metrics.fetches_queued.get() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    leaver.abort();
    // The queued download gives up without asking the upstream.
    within(async {
        while ferry.app.metrics.fetches_queued.get() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    gate.open();
    assert_eq!(sha256(&within(reader).await.unwrap().body), a);
    ferry.settle().await;
    assert_eq!(up.blob_gets(&b), 0, "a download nobody waits for was sent");
}

/// Waits until `n` blob downloads wait for a fetch slot.
async fn queued(ferry: &Ferry, n: i64) {
    within(async {
        while ferry.app.metrics.fetches_queued.get() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_asking_for_many_blobs_does_not_make_the_next_client_wait_behind_them() {
    let up = FakeRegistry::start().await;
    // Every download of client A stalls at its gate; the first one's gate
    // opens alone.
    let gates: Vec<Gate> = (0..4).map(|_| Gate::new()).collect();
    let greedy: Vec<String> = (0..4)
        .map(|i| {
            let data = blob_bytes(1 << 20, 630 + i as u64);
            up.add_blob_with(data, Fault::PauseAt(1000, gates[i].clone()))
        })
        .collect();
    let modest = up.add_blob(blob_bytes(50_000, 640));
    let ferry = Ferry::start_with(&up.url(), |cfg| {
        cfg.max_fetches_per_registry = 2;
        cfg.listener.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let fetch = |d: &str, client: &'static str| {
        let url = ferry.url(&format!("/v2/x/blobs/{d}"));
        tokio::spawn(
            async move { request(Method::GET, &url, &[("x-forwarded-for", client)]).await },
        )
    };
    // Client A holds both slots and queues two more downloads ...
    let mut a: Vec<_> = greedy[..2].iter().map(|d| fetch(d, "10.0.0.1")).collect();
    gates[0].reached().await;
    gates[1].reached().await;
    a.extend(greedy[2..].iter().map(|d| fetch(d, "10.0.0.1")));
    queued(&ferry, 2).await;
    // ... then client B asks for one blob.
    let b = fetch(&modest, "10.0.0.2");
    queued(&ferry, 3).await;
    // One of A's downloads finishes: its slot goes to B, not to A's queue
    // (first come, first served, A's third download would take it and
    // stall, and B would wait for ever).
    gates[0].open();
    let r = within(b).await.unwrap();
    assert_eq!(sha256(&r.body), modest);
    assert!(
        up.blob_gets(&greedy[2]) + up.blob_gets(&greedy[3]) <= 1,
        "A's queue went first: {:?}",
        up.blob_get_order()
    );
    for g in &gates {
        g.open();
    }
    for (r, d) in a.into_iter().zip(&greedy) {
        assert_eq!(sha256(&within(r).await.unwrap().body), *d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_nobody_reads_stops_at_the_registrys_orphan_budget() {
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let big = up.add_blob_with(
        blob_bytes(4 << 20, 650),
        Fault::PauseAt(100_000, gate.clone()),
    );
    let ferry = Ferry::start_with(&up.url(), |cfg| {
        cfg.orphaned_bytes_per_registry = 256 << 10;
    })
    .await;
    start_and_leave(&ferry.url(&format!("/v2/x/blobs/{big}"))).await;
    gate.reached().await;
    // The client is gone before the rest comes: else, on a loaded machine,
    // the rest could reach its socket's buffers before it closes, and the
    // download end with a reader (it did, once in ~10 runs).
    let digest: ferry::oci::Digest = big.parse().unwrap();
    assert!(
        ferry.app.coordinator.flight(&digest).is_some(),
        "held at the gate"
    );
    within(async {
        while ferry
            .app
            .coordinator
            .flight(&digest)
            .is_some_and(|f| f.clients() > 0)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // Nobody waits for a slot, yet the download stops once it has brought
    // 256 KiB nobody reads.
    gate.open();
    within(async {
        while ferry.fetch_failures("deserted") < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    ferry.settle().await;
    assert!(!ferry.has_blob(&big), "a cancelled download was stored");
    assert_eq!(
        std::fs::read_dir(ferry.store_root().join("tmp"))
            .unwrap()
            .count(),
        0,
        "a cancelled download's temp file is removed"
    );
    // The budget was given back: the next reader gets the whole blob.
    let r = within(get(&ferry.url(&format!("/v2/x/blobs/{big}")))).await;
    assert_eq!(sha256(&r.body), big);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_out_a_retry_after_gives_its_request_slot_to_others() {
    let up = FakeRegistry::start().await;
    up.add_manifest(
        "app",
        Some("v1"),
        "application/vnd.oci.image.manifest.v1+json",
        blob_bytes(100, 660),
    );
    let ferry = Ferry::start_with(&up.url(), |c| {
        c.request_limits.max = 1;
        c.request_limits.wait = Duration::from_secs(2);
        c.max_retry_wait = Duration::from_secs(120);
    })
    .await;
    // A's first attempt is told to come back in a minute.
    up.fail_next(1, StatusCode::SERVICE_UNAVAILABLE, Some(60));
    let url = ferry.url("/v2/other/tags/list");
    let a = tokio::spawn(async move { get(&url).await });
    within(async {
        while up.total_hits() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // B needs the registry's one request slot while A sleeps.
    let r = within(get(&ferry.url("/v2/app/manifests/v1"))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(!a.is_finished());
    a.abort();
}
