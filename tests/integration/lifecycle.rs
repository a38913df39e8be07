//! Start-up and shutdown: leftovers of a crash are cleaned, and a shutdown
//! stops accepting but lets responses in flight finish.

use crate::support;

use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_removes_temp_files_and_keeps_stored_blobs() {
    let up = FakeRegistry::start().await;
    let data = blob_bytes(200_000, 20);
    let digest = up.add_blob(data.clone());
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url(&format!("/v2/a/blobs/{digest}"));
    assert_eq!(sha256(&within(get(&url)).await.body), digest);
    ferry.settle().await;
    let dir = ferry.stop().await;

    // A crash mid-download leaves a temp file behind.
    let tmp = dir.path().join("store/tmp");
    std::fs::write(tmp.join("deadbeef-1.0.part"), b"half a blob").unwrap();
    let ferry = Ferry::start_in(dir, &up.url(), |_| {}).await;
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "leftover temp file survived start-up"
    );
    let again = within(get(&ferry.url(&format!("/v2/a/blobs/{digest}")))).await;
    assert_eq!(again.body, data);
    assert_eq!(
        up.blob_gets(&digest),
        1,
        "the stored blob survived the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_responses_in_flight_finish_and_refuses_new_connections() {
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let data = blob_bytes(3 << 20, 21);
    let digest = up.add_blob_with(data.clone(), Fault::PauseAt(1 << 20, gate.clone()));
    let ferry = Ferry::start(&up.url()).await;
    let addr = ferry.addr;
    let resp = within(send(
        Method::GET,
        &ferry.url(&format!("/v2/a/blobs/{digest}")),
        &[],
    ))
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    gate.reached().await;

    let stopping = tokio::spawn(ferry.stop());
    // The listener closes while the response is still held by the upstream.
    within(async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        !stopping.is_finished(),
        "shutdown must wait for the response in flight"
    );
    gate.open();
    let body = within(resp.into_body().collect()).await.unwrap().to_bytes();
    assert_eq!(sha256(&body), digest);
    within(stopping).await.unwrap();
}

fn blob_url(ferry: &Ferry, digest: &str) -> String {
    ferry.url(&format!("/v2/a/blobs/{digest}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_removes_a_corrupted_blob_and_the_next_request_refetches_it() {
    let up = FakeRegistry::start().await;
    let good = up.add_blob(blob_bytes(300_000, 70));
    let bad = up.add_blob(blob_bytes(300_000, 71));
    let ferry = Ferry::start(&up.url()).await;
    for d in [&good, &bad] {
        within(get(&blob_url(&ferry, d))).await;
    }
    ferry.settle().await;
    let path = ferry
        .store_root()
        .join(format!("blobs/sha256/{}/{}", &bad[7..9], &bad[7..]));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1234] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();

    let opts = ferry::lifecycle::ScrubOptions {
        rate: Some(64 << 20),
        quarantine: false,
    };
    let report = ferry::app::tasks::scrub_now(&ferry.app, opts).await;
    assert_eq!(report.damaged, vec![format!("blob {bad}")]);
    assert_eq!(report.blobs_checked, 2);
    assert!(!path.exists());
    assert!(ferry.has_blob(&good));
    let w = within(get(&blob_url(&ferry, &bad))).await;
    assert_eq!(sha256(&w.body), bad);
    assert_eq!(up.blob_gets(&bad), 2, "refetched after the scrub");
    ferry.settle().await;
    assert!(ferry.has_blob(&bad));
    let kept = ferry
        .app
        .coordinator
        .lifecycle()
        .last_scrub
        .lock()
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(kept, report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_newest_used_and_never_breaks_a_response_in_progress() {
    let up = FakeRegistry::start().await;
    let mib = 1 << 20;
    let digests: Vec<String> = (0..5)
        .map(|i| up.add_blob(blob_bytes(mib, 80 + i)))
        .collect();
    // Room for four blobs; a fifth triggers eviction down to 90%.
    let ferry = Ferry::start_with(&up.url(), |c| {
        c.lifecycle.max_size = Some(4 * mib as u64 + 1000);
        c.lifecycle.eviction_interval = Duration::from_secs(3600);
    })
    .await;
    for d in &digests[..4] {
        within(get(&blob_url(&ferry, d))).await;
        ferry.settle().await;
        ferry.advance(Duration::from_secs(1));
    }
    // Blob 0 is the oldest fetched but read again now: the newest used.
    within(get(&blob_url(&ferry, &digests[0]))).await;
    ferry.advance(Duration::from_secs(1));
    // A response in progress on blob 1, now the least recently used.
    let resp = within(send(Method::GET, &blob_url(&ferry, &digests[1]), &[])).await;
    let mut body = resp.into_body();
    let first = within(read_at_least(&mut body, 1)).await;

    // The fifth blob takes the store over its cap: eviction runs at once.
    within(get(&blob_url(&ferry, &digests[4]))).await;
    let lc = ferry.app.coordinator.lifecycle();
    within(async {
        while ferry.app.metrics.evictions.get() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        !ferry.has_blob(&digests[2]) && !ferry.has_blob(&digests[3]),
        "the least recently used went"
    );
    assert!(ferry.has_blob(&digests[0]), "newest used kept");
    assert!(
        ferry.has_blob(&digests[1]),
        "a blob being read is not evicted"
    );
    assert!(ferry.has_blob(&digests[4]));
    assert_eq!(lc.index.total(), 3 * mib as u64);
    assert_eq!(ferry.app.metrics.evictions.get(), 2);
    let rest = within(body.collect()).await.unwrap().to_bytes();
    let mut all = first;
    all.extend_from_slice(&rest);
    assert_eq!(sha256(&all), digests[1]);

    // An evicted blob is simply fetched again.
    let w = within(get(&blob_url(&ferry, &digests[2]))).await;
    assert_eq!(sha256(&w.body), digests[2]);
    assert_eq!(up.blob_gets(&digests[2]), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_serves_clients_uncached_and_caching_resumes_when_space_returns() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let up = FakeRegistry::start().await;
    let data = blob_bytes(2 << 20, 90);
    let d = up.add_blob(data.clone());
    let available = std::sync::Arc::new(AtomicU64::new(1 << 20));
    let ferry = Ferry::start_with_space(&up.url(), available.clone(), |c| {
        c.lifecycle.min_free_space = 0
    })
    .await;

    // 1 MiB free, 2 MiB blob: served straight from upstream, not stored.
    for _ in 0..2 {
        let w = within(get(&blob_url(&ferry, &d))).await;
        assert_eq!(w.status, StatusCode::OK);
        assert_eq!(w.body_error, None);
        assert_eq!(sha256(&w.body), d);
    }
    ferry.settle().await;
    assert!(!ferry.has_blob(&d));
    assert_eq!(ferry.app.metrics.uncached.get(), 2);
    // Bytes served uncached still came from upstream, and count as such.
    assert_eq!(ferry.upstream_bytes(), 2 * data.len() as u64);

    // Space returns: the next request caches.
    available.store(1 << 30, Ordering::SeqCst);
    let w = within(get(&blob_url(&ferry, &d))).await;
    assert_eq!(sha256(&w.body), d);
    ferry.settle().await;
    assert!(ferry.has_blob(&d));
    let before = up.blob_gets(&d);
    within(get(&blob_url(&ferry, &d))).await;
    assert_eq!(up.blob_gets(&d), before, "a hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncached_blob_with_wrong_bytes_ends_in_an_error() {
    use std::sync::atomic::AtomicU64;
    let up = FakeRegistry::start().await;
    let d = up.add_blob_with(blob_bytes(500_000, 91), Fault::WrongBytes);
    let ferry = Ferry::start_with_space(&up.url(), std::sync::Arc::new(AtomicU64::new(0)), |c| {
        c.lifecycle.min_free_space = 1
    })
    .await;
    let w = within(get(&blob_url(&ferry, &d))).await;
    assert!(
        w.body_error.is_some(),
        "corrupt uncached blob ended cleanly"
    );
}
