//! The storage conformance suite: what every place ferry keeps content
//! must do ([`common`], through [`backend::Backend`]: the local store and
//! every shared-tier driver), and what a shared tier must do besides. Run
//! by `tests/integration/storage_fs.rs` against the local store and a
//! directory tier, and by `tests/integration/storage_s3.rs` against a real
//! S3 server (Garage in CI).
//!
//! Every case uses fresh content (seeded by the clock), so a bucket that
//! outlives one run does not make the next pass by accident.

use std::time::Duration;

use bytes::Bytes;
use ferry::oci::{Digest, RepoName, Tag};
use ferry::shared::maintenance;
use ferry::shared::upload::{mirror, Mirrored, PART_SIZE};
use ferry::shared::Shared;
use ferry::store::TagRecord;
use futures::{StreamExt, TryStreamExt};

use super::{blob_bytes, get};

pub mod backend;
pub mod common;

const MIB: usize = 1024 * 1024;

fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn digest_of(b: &[u8]) -> Digest {
    Digest::sha256_of(b)
}

async fn read_all(shared: &Shared, d: &Digest, range: std::ops::Range<u64>) -> Bytes {
    let parts: Vec<Bytes> = shared
        .read_blob(d, range)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    parts.concat().into()
}

/// Runs every case against the local store.
pub async fn run_local(store: &std::sync::Arc<ferry::store::FsStore>) {
    common::run(store, fresh_seed()).await;
}

/// Runs every case against `shared`: the common ones, then what only a
/// shared tier does.
pub async fn run_all(shared: &Shared) {
    let seed = fresh_seed();
    common::run(shared, seed).await;
    small_and_multipart_uploads_appear_only_on_commit(shared, seed + 11).await;
    aborted_and_dropped_uploads_leave_nothing(shared, seed + 12).await;
    concurrent_uploads_of_one_digest_leave_one_correct_object(shared, seed + 13).await;
    legacy_markers_are_read_and_moved(shared, seed + 15).await;
    presigned_urls_serve_the_bytes(shared, seed + 16).await;
    scrub_and_cap(shared, seed + 7).await;
    leftover_uploads_are_cleaned(shared, seed + 8).await;
}

async fn small_and_multipart_uploads_appear_only_on_commit(shared: &Shared, seed: u64) {
    for len in [0, 1000, 2 * PART_SIZE + 4321] {
        let data = blob_bytes(len, seed + len as u64);
        let d = digest_of(&data);
        let mut up = shared.begin_blob(&d);
        // Written in uneven pieces, as network frames arrive.
        for piece in data.chunks(777_777) {
            up.write(Bytes::copy_from_slice(piece)).await.unwrap();
            assert_eq!(
                shared.blob_size(&d).await.unwrap(),
                None,
                "{len} bytes: visible before commit"
            );
        }
        assert_eq!(up.commit().await.unwrap(), len as u64);
        assert_eq!(shared.blob_size(&d).await.unwrap(), Some(len as u64));
        if len > 0 {
            assert_eq!(read_all(shared, &d, 0..len as u64).await, data);
            let (a, b) = (len as u64 / 3, len as u64 / 3 + 1000.min(len as u64 / 2));
            assert_eq!(
                read_all(shared, &d, a..b).await,
                data.slice(a as usize..b as usize),
                "{len} bytes: range {a}..{b}"
            );
        }
        shared.delete_blob(&d).await.unwrap();
    }
}

async fn aborted_and_dropped_uploads_leave_nothing(shared: &Shared, seed: u64) {
    let data = blob_bytes(PART_SIZE + MIB, seed);
    let d = digest_of(&data);
    let mut up = shared.begin_blob(&d);
    up.write(data.clone()).await.unwrap();
    up.abort().await;
    assert_eq!(shared.blob_size(&d).await.unwrap(), None);

    let mut up = shared.begin_blob(&d);
    up.write(data.clone()).await.unwrap();
    drop(up);
    // The drop aborts in the background: no upload of `d` stays pending.
    super::within(async {
        while shared
            .pending_uploads()
            .await
            .unwrap()
            .iter()
            .any(|u| u.key.ends_with(d.hex()))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(shared.blob_size(&d).await.unwrap(), None);

    // A mirror whose source fails aborts.
    let failing = ferry::coordinator::BlobStream::from_stream(futures::stream::iter(vec![
        Ok(data.slice(..PART_SIZE + 10)),
        Err(std::io::Error::other("digest mismatch")),
    ]));
    assert!(mirror(shared, &d, failing).await.is_err());
    assert_eq!(shared.blob_size(&d).await.unwrap(), None);
}

async fn concurrent_uploads_of_one_digest_leave_one_correct_object(shared: &Shared, seed: u64) {
    let data = blob_bytes(PART_SIZE + 3 * MIB, seed);
    let d = digest_of(&data);
    // Three replicas mirror the same fetch at once: each may upload or
    // find the others' object, none fails.
    let uploads = (0..3).map(|_| {
        let pieces: Vec<std::io::Result<Bytes>> = data
            .chunks(MIB)
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect();
        let d = d.clone();
        async move {
            let stream = ferry::coordinator::BlobStream::from_stream(futures::stream::iter(pieces));
            mirror(shared, &d, stream).await
        }
    });
    for outcome in futures::future::join_all(uploads).await {
        match outcome.unwrap() {
            Mirrored::Uploaded(n) => assert_eq!(n, data.len() as u64),
            Mirrored::Present => {}
        }
    }
    assert_eq!(shared.blob_size(&d).await.unwrap(), Some(data.len() as u64));
    assert_eq!(read_all(shared, &d, 0..data.len() as u64).await, data);
    // A mirror of what is there already uploads nothing.
    let again =
        ferry::coordinator::BlobStream::from_stream(futures::stream::iter(vec![Ok(data.clone())]));
    assert_eq!(mirror(shared, &d, again).await.unwrap(), Mirrored::Present);
    shared.delete_blob(&d).await.unwrap();
}

async fn legacy_markers_are_read_and_moved(shared: &Shared, seed: u64) {
    // A marker an older ferry wrote under `__blobs/` still counts, and is
    // moved to `_blobs/` when found.
    let old = RepoName::parse(&format!("team/old{seed}")).unwrap();
    let marked = |kind: &'static str| shared.is_marked("reg.example", &old, kind, "sha256-y");
    shared
        .mark("reg.example", &old, "__blobs", "sha256-y")
        .await
        .unwrap();
    assert!(marked("_blobs").await.unwrap(), "a legacy marker counts");
    assert!(!marked("__blobs").await.unwrap(), "and was moved");
    assert!(marked("_blobs").await.unwrap(), "to the right name");
}

async fn presigned_urls_serve_the_bytes(shared: &Shared, seed: u64) {
    let data = blob_bytes(4096, seed);
    let d = digest_of(&data);
    let mut up = shared.begin_blob(&d);
    up.write(data.clone()).await.unwrap();
    up.commit().await.unwrap();
    match shared.presign(&d, Duration::from_secs(60)).await.unwrap() {
        // A directory cannot sign.
        None => assert!(shared.describe().starts_with("directory")),
        Some(url) => {
            let w = get(&url).await;
            assert_eq!(w.status, http::StatusCode::OK, "{url}");
            assert_eq!(w.body, data);
        }
    }
    shared.delete_blob(&d).await.unwrap();
}

async fn put(shared: &Shared, d: &Digest, bytes: Bytes) {
    let mut up = shared.begin_blob(d);
    up.write(bytes).await.unwrap();
    up.commit().await.unwrap();
}

/// Needs a tier holding nothing else (a fresh prefix or directory).
async fn scrub_and_cap(shared: &Shared, seed: u64) {
    let good: Vec<Bytes> = [1000, 2000, 3000]
        .iter()
        .enumerate()
        .map(|(i, n)| blob_bytes(*n, seed + i as u64))
        .collect();
    for b in &good {
        put(shared, &digest_of(b), b.clone()).await;
    }
    // Bytes under a key they do not hash to (bit rot, a bad writer).
    let bad = digest_of(format!("claimed {seed}").as_bytes());
    put(shared, &bad, blob_bytes(500, seed + 9)).await;

    let report = maintenance::scrub(shared, None).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.blobs_checked, 4);
    assert_eq!(report.bytes_checked, 6500);
    assert_eq!(report.damaged, vec![bad.clone()]);
    assert_eq!(shared.blob_size(&bad).await.unwrap(), None);
    for b in &good {
        assert!(shared.blob_size(&digest_of(b)).await.unwrap().is_some());
    }

    // Cap 5,000 of 6,000 bytes: down to 4,500, never the protected one.
    let protected = digest_of(&good[2]);
    let cap = maintenance::enforce_cap(shared, 5000, |d| *d == protected)
        .await
        .unwrap();
    assert!(cap.total <= 4500, "{cap:?}");
    assert!(!cap.deleted.is_empty());
    assert!(!cap.deleted.contains(&protected));
    for b in &good {
        let d = digest_of(b);
        let present = shared.blob_size(&d).await.unwrap().is_some();
        assert_eq!(present, !cap.deleted.contains(&d), "{d}");
    }
    let under = maintenance::enforce_cap(shared, 1 << 20, |_| false)
        .await
        .unwrap();
    assert!(under.deleted.is_empty());
    for b in &good {
        shared.delete_blob(&digest_of(b)).await.unwrap();
    }
}

async fn leftover_uploads_are_cleaned(shared: &Shared, seed: u64) {
    let data = blob_bytes(PART_SIZE + 1000, seed);
    let d = digest_of(&data);
    let mut up = shared.begin_blob(&d);
    up.write(data).await.unwrap();
    // A replica that died mid-upload: no abort, no commit.
    std::mem::forget(up);
    let mine = |ups: &[maintenance::PendingUpload]| {
        ups.iter().filter(|u| u.key.ends_with(d.hex())).count()
    };
    let before = shared.pending_uploads().await.unwrap();
    maintenance::clean_uploads(shared, Duration::from_secs(3600))
        .await
        .unwrap();
    let after_young = shared.pending_uploads().await.unwrap();
    let aborted = maintenance::clean_uploads(shared, Duration::ZERO)
        .await
        .unwrap();
    if shared.describe().starts_with("s3") {
        assert_eq!(mine(&before), 1, "the upload is not listed");
        assert_eq!(mine(&after_young), 1, "a young upload was aborted");
        assert!(aborted >= 1);
    }
    assert_eq!(mine(&shared.pending_uploads().await.unwrap()), 0);
    assert_eq!(shared.blob_size(&d).await.unwrap(), None);
}
