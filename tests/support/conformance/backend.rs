//! [`Backend`]: what every place ferry keeps content offers, whichever kind
//! it is — the local store ([`FsStore`]) and each shared-tier driver
//! ([`Shared`]) — so the cases every backend must pass are written once
//! ([`super::common`]) and run against all of them.

use std::sync::Arc;

use bytes::Bytes;
use ferry::oci::{Digest, RepoName, Tag};
use ferry::shared::upload::BlobUpload;
use ferry::shared::Shared;
use ferry::store::{FsStore, Kind, TagRecord, TempBlob};
use futures::{StreamExt, TryStreamExt};

/// A blob being written: visible only once committed.
#[allow(async_fn_in_trait)]
pub trait Upload {
    async fn write(&mut self, bytes: Bytes);
    /// Publishes the blob; its length.
    async fn commit(self) -> u64;
    /// Leaves nothing behind.
    async fn abort(self);
}

/// One place content is kept.
#[allow(async_fn_in_trait)]
pub trait Backend {
    type Upload: Upload;
    /// Blob lengths worth trying here (the shared tier's multipart size
    /// differs from anything the local store cares about).
    fn sizes(&self) -> Vec<usize>;
    async fn begin_blob(&self, d: &Digest) -> Self::Upload;
    async fn blob_len(&self, d: &Digest) -> Option<u64>;
    async fn read_blob(&self, d: &Digest) -> Bytes;
    async fn list_blobs(&self) -> Vec<(Digest, u64)>;
    async fn remove_blob(&self, d: &Digest);
    async fn put_manifest(&self, d: &Digest, media_type: &str, bytes: &Bytes);
    /// `Err` for a record that is damaged (or not the digest's).
    async fn get_manifest(&self, d: &Digest) -> Result<Option<(String, Bytes)>, String>;
    async fn put_tag(&self, repo: &RepoName, tag: &Tag, record: &TagRecord);
    async fn get_tag(&self, repo: &RepoName, tag: &Tag) -> Option<TagRecord>;
    async fn mark(&self, repo: &RepoName, kind: &str, key: &str);
    async fn is_marked(&self, repo: &RepoName, kind: &str, key: &str) -> bool;
}

/// The registry every case's records are kept under.
pub const REGISTRY: &str = "reg.example";

impl Upload for BlobUpload {
    async fn write(&mut self, bytes: Bytes) {
        BlobUpload::write(self, bytes).await.unwrap();
    }
    async fn commit(self) -> u64 {
        BlobUpload::commit(self).await.unwrap()
    }
    async fn abort(self) {
        BlobUpload::abort(self).await
    }
}

impl Backend for Shared {
    type Upload = BlobUpload;
    fn sizes(&self) -> Vec<usize> {
        vec![0, 1000, 2 * ferry::shared::upload::PART_SIZE + 4321]
    }
    async fn begin_blob(&self, d: &Digest) -> BlobUpload {
        Shared::begin_blob(self, d)
    }
    async fn blob_len(&self, d: &Digest) -> Option<u64> {
        self.blob_size(d).await.unwrap()
    }
    async fn read_blob(&self, d: &Digest) -> Bytes {
        let len = self.blob_size(d).await.unwrap().unwrap();
        if len == 0 {
            // An empty range is no range to ask a bucket for.
            return Bytes::new();
        }
        super::read_all(self, d, 0..len).await
    }
    async fn list_blobs(&self) -> Vec<(Digest, u64)> {
        Shared::list_blobs(self)
            .map(|b| b.unwrap())
            .map(|b| (b.digest, b.size))
            .collect()
            .await
    }
    async fn remove_blob(&self, d: &Digest) {
        self.delete_blob(d).await.unwrap()
    }
    async fn put_manifest(&self, d: &Digest, media_type: &str, bytes: &Bytes) {
        Shared::put_manifest(self, d, media_type, bytes)
            .await
            .unwrap()
    }
    async fn get_manifest(&self, d: &Digest) -> Result<Option<(String, Bytes)>, String> {
        Shared::get_manifest(self, d)
            .await
            .map_err(|e| e.to_string())
    }
    async fn put_tag(&self, repo: &RepoName, tag: &Tag, record: &TagRecord) {
        Shared::put_tag(self, REGISTRY, repo, tag, record)
            .await
            .unwrap()
    }
    async fn get_tag(&self, repo: &RepoName, tag: &Tag) -> Option<TagRecord> {
        Shared::get_tag(self, REGISTRY, repo, tag).await.unwrap()
    }
    async fn mark(&self, repo: &RepoName, kind: &str, key: &str) {
        Shared::mark(self, REGISTRY, repo, kind, key).await.unwrap()
    }
    async fn is_marked(&self, repo: &RepoName, kind: &str, key: &str) -> bool {
        Shared::is_marked(self, REGISTRY, repo, kind, key)
            .await
            .unwrap()
    }
}

/// A blob being written to the local store: a temp file, published only
/// once verified.
pub struct LocalUpload {
    store: Arc<FsStore>,
    temp: TempBlob,
}

impl Upload for LocalUpload {
    async fn write(&mut self, bytes: Bytes) {
        self.temp.append(&[bytes]).unwrap();
    }
    async fn commit(self) -> u64 {
        let len = self.temp.written();
        let verified = self.temp.verify().expect("the bytes are the digest's");
        self.store.publish_blob(verified).unwrap();
        len
    }
    async fn abort(self) {
        drop(self.temp);
    }
}

impl Backend for Arc<FsStore> {
    type Upload = LocalUpload;
    fn sizes(&self) -> Vec<usize> {
        vec![0, 1000, 3 << 20]
    }
    async fn begin_blob(&self, d: &Digest) -> LocalUpload {
        LocalUpload {
            store: self.clone(),
            temp: self.create_temp(d).unwrap(),
        }
    }
    async fn blob_len(&self, d: &Digest) -> Option<u64> {
        FsStore::blob_len(self, d).unwrap()
    }
    async fn read_blob(&self, d: &Digest) -> Bytes {
        let mut f = self.open_entry(Kind::Blob, d).unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut out).unwrap();
        out.into()
    }
    async fn list_blobs(&self) -> Vec<(Digest, u64)> {
        let entries = self.entries(Kind::Blob).unwrap();
        entries.into_iter().map(|e| (e.digest, e.len)).collect()
    }
    async fn remove_blob(&self, d: &Digest) {
        FsStore::remove_blob(self, d).unwrap();
    }
    async fn put_manifest(&self, d: &Digest, media_type: &str, bytes: &Bytes) {
        FsStore::put_manifest(self, d, media_type, bytes).unwrap()
    }
    async fn get_manifest(&self, d: &Digest) -> Result<Option<(String, Bytes)>, String> {
        FsStore::get_manifest(self, d).map_err(|e| e.to_string())
    }
    async fn put_tag(&self, repo: &RepoName, tag: &Tag, record: &TagRecord) {
        FsStore::put_tag(self, REGISTRY, repo, tag, record).unwrap()
    }
    async fn get_tag(&self, repo: &RepoName, tag: &Tag) -> Option<TagRecord> {
        FsStore::get_tag(self, REGISTRY, repo, tag).unwrap()
    }
    async fn mark(&self, repo: &RepoName, kind: &str, key: &str) {
        FsStore::mark(self, REGISTRY, repo, kind, key).unwrap()
    }
    async fn is_marked(&self, repo: &RepoName, kind: &str, key: &str) -> bool {
        FsStore::is_marked(self, REGISTRY, repo, kind, key)
    }
}
