//! Regression tests for three bugs that lived where state was held twice
//! (issue 16): the memory copy of small blobs outliving the stored copy,
//! the evictions counter hiding local evictions beside a shared tier, and
//! `ferry prefetch` parsing manifests with its own code.

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use ferry::config::SharedStorage;
use http::StatusCode;
use support::*;

const MIB: usize = 1024 * 1024;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn blob_url(ferry: &Ferry, digest: &str) -> String {
    ferry.url(&format!("/v2/a/blobs/{digest}"))
}

fn damage(ferry: &Ferry, digest: &str) {
    let path = ferry
        .store_root()
        .join(format!("blobs/sha256/{}/{}", &digest[7..9], &digest[7..]));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_the_scrub_removed_is_not_served_from_memory() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(blob_bytes(30_000, 1601));
    let ferry = Ferry::start(&up.url()).await;
    // A miss (stored), then a hit that keeps the small blob in memory.
    for _ in 0..2 {
        let w = within(get(&blob_url(&ferry, &d))).await;
        assert_eq!(sha256(&w.body), d);
    }
    ferry.settle().await;
    damage(&ferry, &d);
    let opts = ferry::lifecycle::ScrubOptions {
        rate: None,
        quarantine: false,
    };
    let report = ferry::app::tasks::scrub_now(&ferry.app, opts).await;
    assert_eq!(report.damaged, vec![format!("blob {d}")]);
    assert!(!ferry.has_blob(&d));

    // The store no longer holds it, so neither does memory: the next
    // request fetches it again and stores it again.
    let w = within(get(&blob_url(&ferry, &d))).await;
    assert_eq!(sha256(&w.body), d);
    assert_eq!(up.blob_gets(&d), 2, "fetched again after the scrub");
    ferry.settle().await;
    assert!(ferry.has_blob(&d), "stored again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_blob_damaged_on_disk_is_verified_before_it_is_served() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(blob_bytes(30_000, 1602));
    let ferry = Ferry::start(&up.url()).await;
    within(get(&blob_url(&ferry, &d))).await;
    ferry.settle().await;
    // Damaged on disk before it was ever loaded into memory, no scrub yet.
    damage(&ferry, &d);
    for _ in 0..2 {
        let w = within(get(&blob_url(&ferry, &d))).await;
        assert_eq!(w.status, StatusCode::OK);
        assert_eq!(sha256(&w.body), d, "never the damaged bytes");
    }
    assert_eq!(up.blob_gets(&d), 2, "the damaged copy was fetched again");
    ferry.settle().await;
    let stored = std::fs::read(ferry.store_root().join(format!(
        "blobs/sha256/{}/{}",
        &d[7..9],
        &d[7..]
    )))
    .unwrap();
    assert_eq!(sha256(&stored), d, "the store holds a good copy again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_count_local_and_shared_tier_evictions_alike() {
    let up = FakeRegistry::start().await;
    let shared = tempfile::tempdir().unwrap();
    let blobs: Vec<String> = (0..3)
        .map(|i| up.add_blob_in("x", blob_bytes(3 * MIB, 1610 + i)))
        .collect();
    let root = shared.path().to_path_buf();
    let a = Ferry::start_with(&up.url(), move |cfg| {
        cfg.shared = Some(SharedStorage::Filesystem { root });
        cfg.lifecycle.shared_max_size = Some(8 * MIB as u64);
        cfg.lifecycle.shared_check_interval = Duration::from_secs(1);
        cfg.lifecycle.max_size = Some(8 * MIB as u64);
    })
    .await;
    for d in &blobs {
        let w = within(get(&a.url(&format!("/v2/x/blobs/{d}")))).await;
        assert_eq!(sha256(&w.body), *d);
    }
    // 9 MiB against caps of 8 MiB, locally and in the tier: once all three
    // are uploaded, one blob goes from each. Nothing scrapes /metrics
    // meanwhile.
    within(async {
        while a.app.metrics.shared_uploads.get() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let lc = a.app.coordinator.lifecycle();
    let tier = a.app.coordinator.shared().unwrap().clone();
    within(async {
        loop {
            let in_tier: Vec<_> = futures::StreamExt::collect::<Vec<_>>(tier.list_blobs()).await;
            // Each eviction pass counts once it is over: the count is the
            // last thing to wait for.
            let counted = a.app.metrics.evictions.get() >= 2;
            if lc.index.total() <= 8 * MIB as u64 && in_tier.len() == 2 && counted {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let text = within(get(&a.url("/metrics"))).await.body;
    let text = String::from_utf8(text.to_vec()).unwrap();
    let evictions = text
        .lines()
        .find_map(|l| l.strip_prefix("ferry_evictions_total "))
        .unwrap_or_else(|| panic!("no ferry_evictions_total in\n{text}"));
    assert_eq!(evictions.trim(), "2", "one local and one shared eviction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_skips_foreign_layers_as_the_server_does() {
    let up = FakeRegistry::start().await;
    let config = up.add_blob(Bytes::from_static(b"{}"));
    let layer = up.add_blob(blob_bytes(50_000, 1620));
    // A Windows-style foreign layer: its bytes live at `urls`, and the
    // registry does not hold them.
    let foreign = sha256(b"not in this registry");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","digest":"{foreign}","size":20,"urls":["https://example.invalid/layer"]}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":50000}}]}}"#
    );
    up.add_manifest("win/app", Some("v1"), OCI_MANIFEST, Bytes::from(manifest));
    let ferry = Ferry::start(&up.url()).await;

    let report = ferry::prefetch::prefetch(&ferry.app, "win/app:v1", &|_| {})
        .await
        .expect("prefetch succeeds without the foreign layer");
    assert_eq!(report.blobs, 2, "config and the one distributable layer");
    assert!(ferry.has_blob(&config) && ferry.has_blob(&layer));
    assert_eq!(
        up.blob_gets(&foreign),
        0,
        "the foreign layer is not asked for"
    );
    assert!(!ferry.has_blob(&foreign));
}
