//! Replicas sharing one cache: two ferries with their own local stores and
//! one shared tier (the `filesystem` driver, a temp dir standing for the
//! bucket). What one replica fetched, the other serves without asking the
//! upstream; what failed verification never reaches the tier.
//! The same flows against a real S3 server (Garage) and three replica
//! processes behind nginx are in `tests/e2e/replicas.sh`.

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use ferry::config::SharedStorage;
use futures::StreamExt;
use http::StatusCode;
use support::*;

const MIB: usize = 1024 * 1024;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

async fn replica(up: &FakeRegistry, shared: &std::path::Path) -> Ferry {
    let root = shared.to_path_buf();
    Ferry::start_with(&up.url(), move |cfg| {
        cfg.shared = Some(SharedStorage::Filesystem { root });
    })
    .await
}

/// Waits (bounded) until `n` uploads to the tier finished.
async fn uploads(ferry: &Ferry, n: u64) {
    within(async {
        while ferry.app.metrics.shared_uploads.get() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

async fn shared_blobs(ferry: &Ferry) -> Vec<ferry::shared::SharedBlob> {
    let shared = ferry.app.coordinator.shared().unwrap();
    shared
        .list_blobs()
        .map(|b| b.unwrap())
        .collect::<Vec<_>>()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_one_replica_fetched_is_served_by_another_without_the_upstream() {
    let up = FakeRegistry::start().await;
    let shared = tempfile::tempdir().unwrap();
    // Larger than one upload part: the multipart path.
    let data = blob_bytes(20 * MIB + 123, 900);
    let digest = up.add_blob_in("team/app", data.clone());
    let small = up.add_blob_in("team/app", blob_bytes(3000, 901));
    let (a, b) = (
        replica(&up, shared.path()).await,
        replica(&up, shared.path()).await,
    );

    for d in [&digest, &small] {
        let w = within(get(&a.url(&format!("/v2/team/app/blobs/{d}")))).await;
        assert_eq!(sha256(&w.body), *d);
    }
    uploads(&a, 2).await;
    let mut listed = shared_blobs(&a).await;
    listed.sort_by_key(|b| b.size);
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].digest.to_string(), digest);
    assert_eq!(listed[1].size, data.len() as u64);

    // A Range on B, which has never seen it: one ranged GET on the tier,
    // streamed through, no local copy.
    let r = within(request(
        http::Method::GET,
        &b.url(&format!("/v2/team/app/blobs/{digest}")),
        &[("range", "bytes=10000000-10000099")],
    ))
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], &data[10_000_000..10_000_100]);
    assert_eq!(b.app.metrics.shared_read_bytes.get(), 100);
    assert!(!b.has_blob(&digest));
    assert_eq!(b.app.coordinator.in_flight(), 0);

    // A full GET on B reads the tier, not the upstream, and keeps a copy.
    let w = within(get(&b.url(&format!("/v2/team/app/blobs/{digest}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), digest);
    assert_eq!(up.blob_gets(&digest), 1, "the upstream was asked twice");
    assert_eq!(
        b.app.metrics.shared_read_bytes.get(),
        data.len() as u64 + 100
    );
    b.settle().await;
    assert!(b.has_blob(&digest), "B keeps a local copy");
    // A range on B, now local.
    let r = within(request(
        http::Method::GET,
        &b.url(&format!("/v2/team/app/blobs/{digest}")),
        &[("range", "bytes=100-199")],
    ))
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], &data[100..200]);
    assert_eq!(b.app.metrics.shared_uploads.get(), 0, "B uploaded again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_fail_verification_never_reach_the_tier() {
    let up = FakeRegistry::start().await;
    let shared = tempfile::tempdir().unwrap();
    let digest = up.add_blob_with(blob_bytes(12 * MIB, 902), Fault::WrongBytes);
    let a = replica(&up, shared.path()).await;
    let w = within(get(&a.url(&format!("/v2/x/blobs/{digest}")))).await;
    assert!(w.body_error.is_some());
    a.settle().await;
    within(async {
        while a.app.metrics.shared_upload_failures.get() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        shared_blobs(&a).await.is_empty(),
        "an unverified blob was published"
    );
    assert_eq!(a.app.metrics.shared_uploads.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_and_manifests_resolved_by_one_replica_are_fresh_for_another() {
    let up = FakeRegistry::start().await;
    let shared = tempfile::tempdir().unwrap();
    let layer = up.add_blob_in("team/app", blob_bytes(5000, 903));
    let body = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{layer}","size":5000}},"layers":[]}}"#
    ));
    let digest = up.add_manifest("team/app", Some("v1"), OCI_MANIFEST, body.clone());
    let (a, b) = (
        replica(&up, shared.path()).await,
        replica(&up, shared.path()).await,
    );
    let w = within(get(&a.url("/v2/team/app/manifests/v1"))).await;
    assert_eq!(w.body, body);
    let tag_gets = up.hits("GET", "/v2/team/app/manifests/v1");
    // A puts the records in the background.
    let tier = a.app.coordinator.shared().unwrap().clone();
    let d: ferry::oci::Digest = digest.parse().unwrap();
    let record = |root: &std::path::Path, rel: &str| {
        std::fs::read_dir(root.join("repositories"))
            .ok()
            .and_then(|mut regs| regs.next())
            .and_then(|r| r.ok())
            .map(|r| r.path().join("team/app").join(rel).exists())
            .unwrap_or(false)
    };
    // The manifest, the tag, and the layer's membership marker: three
    // writes, each its own task.
    let marker = format!("_blobs/{}", layer.replace(':', "-"));
    within(async {
        while tier.get_manifest(&d).await.unwrap().is_none()
            || !record(shared.path(), "_tags/v1")
            || !record(shared.path(), &marker)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // Within the tag TTL, B answers from the tier: no upstream request.
    let w = within(get(&b.url("/v2/team/app/manifests/v1"))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(w.body, body);
    assert_eq!(w.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(up.hits("GET", "/v2/team/app/manifests/v1"), tag_gets);
    assert_eq!(up.hits("HEAD", "/v2/team/app/manifests/v1"), 0);

    // The layer it references belongs to team/app for B too (membership
    // from the tier): no confirming HEAD upstream.
    let w = within(get(&a.url(&format!("/v2/team/app/blobs/{layer}")))).await;
    assert_eq!(sha256(&w.body), layer);
    uploads(&a, 1).await;
    up.set_status_override(Some(StatusCode::SERVICE_UNAVAILABLE));
    let w = within(get(&b.url(&format!("/v2/team/app/blobs/{layer}")))).await;
    assert_eq!(
        w.status,
        StatusCode::OK,
        "served from the tier while the upstream is down"
    );
    assert_eq!(sha256(&w.body), layer);
    assert_eq!(up.hits("HEAD", &format!("/v2/team/app/blobs/{layer}")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_tier_is_kept_under_its_cap_by_the_upkeep_task() {
    let up = FakeRegistry::start().await;
    let shared = tempfile::tempdir().unwrap();
    let blobs: Vec<String> = (0..3)
        .map(|i| up.add_blob_in("x", blob_bytes(3 * MIB, 910 + i)))
        .collect();
    let root = shared.path().to_path_buf();
    let a = Ferry::start_with(&up.url(), move |cfg| {
        cfg.shared = Some(SharedStorage::Filesystem { root });
        cfg.lifecycle.shared_max_size = Some(8 * MIB as u64);
        cfg.lifecycle.shared_check_interval = Duration::from_secs(1);
    })
    .await;
    for d in &blobs {
        let w = within(get(&a.url(&format!("/v2/x/blobs/{d}")))).await;
        assert_eq!(sha256(&w.body), *d);
    }
    uploads(&a, 3).await;
    // 9 MiB in the tier against a cap of 8: the next upkeep deletes down
    // to 90% of the cap, oldest first, and counts what it deleted once the
    // pass is over (the count, not the listing, says the pass has ended).
    within(async {
        while a.app.metrics.evictions.get() == 0 || shared_blobs(&a).await.len() > 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let left = shared_blobs(&a).await;
    assert_eq!(left.len(), 2);
    assert!(left.iter().map(|b| b.size).sum::<u64>() <= 8 * MIB as u64 / 10 * 9);
    assert_eq!(a.app.metrics.evictions.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_object_in_the_tier_is_refused_deleted_and_fetched_again() {
    let up = FakeRegistry::start().await;
    let shared = tempfile::tempdir().unwrap();
    let data = blob_bytes(2 * MIB, 920);
    let digest = up.add_blob_in("x", data.clone());
    let b = replica(&up, shared.path()).await;
    // Bytes under the blob's key that do not hash to it (bit rot).
    let tier = b.app.coordinator.shared().unwrap();
    let d: ferry::oci::Digest = digest.parse().unwrap();
    let mut upload = tier.begin_blob(&d);
    upload.write(blob_bytes(2 * MIB, 921)).await.unwrap();
    upload.commit().await.unwrap();
    // Membership is not the question here: the upstream confirms it.
    let url = b.url(&format!("/v2/x/blobs/{digest}"));
    let w = within(get(&url)).await;
    assert!(w.body_error.is_some(), "damaged bytes were served whole");
    assert_eq!(up.blob_gets(&digest), 0);
    b.settle().await;
    assert!(!b.has_blob(&digest));
    within(async {
        while tier.blob_size(&d).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // The next request goes upstream and puts a good copy in the tier.
    let w = within(get(&url)).await;
    assert_eq!(sha256(&w.body), digest);
    assert_eq!(up.blob_gets(&digest), 1);
    uploads(&b, 1).await;
    assert_eq!(shared_blobs(&b).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_only_the_shared_tier_upload_reads_is_deserted_too() {
    let up = FakeRegistry::start().await;
    let shared = tempfile::tempdir().unwrap();
    let gate = Gate::new();
    let a = up.add_blob_with(
        blob_bytes(1 << 20, 930),
        Fault::PauseAt(100_000, gate.clone()),
    );
    let c = up.add_blob(blob_bytes(50_000, 931));
    let root = shared.path().to_path_buf();
    let ferry = Ferry::start_with(&up.url(), move |cfg| {
        cfg.shared = Some(SharedStorage::Filesystem { root });
        cfg.max_fetches_per_registry = 1;
    })
    .await;
    start_and_leave(&ferry.url(&format!("/v2/x/blobs/{a}"))).await;
    gate.reached().await;
    // The upload to the tier still follows A, but no client does: A gives
    // its slot to C.
    let r = within(get(&ferry.url(&format!("/v2/x/blobs/{c}")))).await;
    assert_eq!(sha256(&r.body), c);
    gate.open();
}
