//! The cases every backend must pass, the local store as much as each
//! shared-tier driver (see [`super::backend::Backend`]).

use bytes::Bytes;
use ferry::oci::{Digest, RepoName, Tag};
use ferry::store::TagRecord;

use super::backend::{Backend, Upload};
use crate::support::blob_bytes;

fn digest_of(b: &[u8]) -> Digest {
    Digest::sha256_of(b)
}

/// Runs every common case against `backend`, with content seeded by `seed`.
pub async fn run<B: Backend>(backend: &B, seed: u64) {
    missing_blobs_have_no_length(backend, seed).await;
    blobs_appear_only_on_commit(backend, seed + 1).await;
    aborted_blobs_leave_nothing(backend, seed + 2).await;
    listing_and_removing(backend, seed + 3).await;
    manifests_tags_and_marks(backend, seed + 4).await;
}

async fn missing_blobs_have_no_length<B: Backend>(b: &B, seed: u64) {
    let d = digest_of(&seed.to_le_bytes());
    assert_eq!(b.blob_len(&d).await, None);
}

async fn blobs_appear_only_on_commit<B: Backend>(b: &B, seed: u64) {
    for len in b.sizes() {
        let data = blob_bytes(len, seed + len as u64);
        let d = digest_of(&data);
        let mut up = b.begin_blob(&d).await;
        // Written in uneven pieces, as network frames arrive.
        for piece in data.chunks(777_777) {
            up.write(Bytes::copy_from_slice(piece)).await;
            assert_eq!(
                b.blob_len(&d).await,
                None,
                "{len} bytes: visible before commit"
            );
        }
        assert_eq!(up.commit().await, len as u64);
        assert_eq!(b.blob_len(&d).await, Some(len as u64));
        assert_eq!(b.read_blob(&d).await, data, "{len} bytes read back");
        b.remove_blob(&d).await;
        assert_eq!(b.blob_len(&d).await, None, "{len} bytes: removed");
    }
}

async fn aborted_blobs_leave_nothing<B: Backend>(b: &B, seed: u64) {
    let data = blob_bytes(100_000, seed);
    let d = digest_of(&data);
    let mut up = b.begin_blob(&d).await;
    up.write(data).await;
    up.abort().await;
    assert_eq!(b.blob_len(&d).await, None);
    assert!(b.list_blobs().await.iter().all(|(e, _)| *e != d));
}

async fn listing_and_removing<B: Backend>(b: &B, seed: u64) {
    let blobs: Vec<Bytes> = (0..3)
        .map(|i| blob_bytes(100 + i, seed + i as u64))
        .collect();
    for data in &blobs {
        let mut up = b.begin_blob(&digest_of(data)).await;
        up.write(data.clone()).await;
        up.commit().await;
    }
    let listed = b.list_blobs().await;
    for data in &blobs {
        let d = digest_of(data);
        let (_, len) = listed
            .iter()
            .find(|(e, _)| *e == d)
            .unwrap_or_else(|| panic!("{d} not listed"));
        assert_eq!(*len, data.len() as u64);
    }
    for data in &blobs {
        b.remove_blob(&digest_of(data)).await;
    }
    let listed = b.list_blobs().await;
    assert!(blobs
        .iter()
        .all(|data| listed.iter().all(|(e, _)| *e != digest_of(data))));
}

async fn manifests_tags_and_marks<B: Backend>(b: &B, seed: u64) {
    let body = Bytes::from(format!(r#"{{"schemaVersion":2,"seed":{seed}}}"#));
    let d = digest_of(&body);
    let mt = "application/vnd.oci.image.manifest.v1+json";
    assert_eq!(b.get_manifest(&d).await, Ok(None));
    b.put_manifest(&d, mt, &body).await;
    assert_eq!(
        b.get_manifest(&d).await,
        Ok(Some((mt.to_string(), body.clone())))
    );
    // A record under the wrong digest is refused, not served.
    let other = digest_of(format!("other {seed}").as_bytes());
    b.put_manifest(&other, mt, &body).await;
    assert!(b.get_manifest(&other).await.is_err());

    let repo = RepoName::parse(&format!("team/app{seed}")).unwrap();
    let tag = Tag::parse("v1").unwrap();
    assert_eq!(b.get_tag(&repo, &tag).await, None);
    for at in [1000, 2000] {
        let record = TagRecord {
            digest: d.to_string(),
            media_type: mt.into(),
            fetched_at_ms: at,
        };
        b.put_tag(&repo, &tag, &record).await;
        assert_eq!(b.get_tag(&repo, &tag).await, Some(record));
    }
    assert!(!b.is_marked(&repo, "_blobs", "sha256-x").await);
    b.mark(&repo, "_blobs", "sha256-x").await;
    assert!(b.is_marked(&repo, "_blobs", "sha256-x").await);
    let elsewhere = RepoName::parse(&format!("team/other{seed}")).unwrap();
    assert!(!b.is_marked(&elsewhere, "_blobs", "sha256-x").await);
}
