//! The small records beside the blobs in the shared tier: manifests (in
//! the store's record form, [`crate::store::record`]), tag records and
//! repository markers, each one object read or written whole and bounded
//! in size.

use std::io;

use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload};

use super::{bounded, named, Shared, SMALL_MAX};
use crate::oci::{Digest, RepoName, Tag};
use crate::store::TagRecord;

impl Shared {
    async fn put_small(&self, rel: &str, bytes: Bytes) -> io::Result<()> {
        let key = self.key(rel);
        bounded(&key, self.store.put(&key, PutPayload::from(bytes)))
            .await
            .map(|_| ())
            .map_err(|e| named(&key, e))
    }

    async fn get_small(&self, rel: &str) -> io::Result<Option<Bytes>> {
        let key = self.key(rel);
        match bounded(&key, self.store.get(&key)).await {
            Ok(r) if r.meta.size > SMALL_MAX => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "shared object {key} is {} bytes, too large for a record",
                    r.meta.size
                ),
            )),
            Ok(r) => bounded(&key, r.bytes())
                .await
                .map(Some)
                .map_err(|e| named(&key, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(named(&key, e)),
        }
    }

    pub async fn put_manifest(&self, d: &Digest, media_type: &str, bytes: &[u8]) -> io::Result<()> {
        let record = crate::store::record::encode(media_type, bytes);
        self.put_small(&manifest_rel(d), record.into()).await
    }

    /// The manifest's media type and bytes, checked against `d`.
    pub async fn get_manifest(&self, d: &Digest) -> io::Result<Option<(String, Bytes)>> {
        let Some(record) = self.get_small(&manifest_rel(d)).await? else {
            return Ok(None);
        };
        crate::store::record::decode(d, record)
            .map(Some)
            .map_err(|why| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("shared manifest {d} is damaged: {why}"),
                )
            })
    }

    pub async fn put_tag(
        &self,
        registry: &str,
        repo: &RepoName,
        tag: &Tag,
        record: &TagRecord,
    ) -> io::Result<()> {
        let json = serde_json::to_vec(record).map_err(io::Error::other)?;
        self.put_small(
            &repo_rel(registry, repo, "_tags", tag.as_str()),
            json.into(),
        )
        .await
    }

    pub async fn get_tag(
        &self,
        registry: &str,
        repo: &RepoName,
        tag: &Tag,
    ) -> io::Result<Option<TagRecord>> {
        let rel = repo_rel(registry, repo, "_tags", tag.as_str());
        match self.get_small(&rel).await? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("shared tag record {rel} is damaged: {e}"),
                )
            }),
        }
    }

    /// Records `key` of `kind` (`_blobs`: a blob belongs) for a
    /// repository, under the same name as the local store's.
    pub async fn mark(
        &self,
        registry: &str,
        repo: &RepoName,
        kind: &str,
        key: &str,
    ) -> io::Result<()> {
        debug_assert!(kind.starts_with('_'));
        self.put_small(&repo_rel(registry, repo, kind, key), Bytes::new())
            .await
    }

    /// Whether `key` of `kind` is recorded for a repository. Markers that
    /// ferry before 0.2 wrote under an extra underscore (`__blobs/`) still
    /// count, and are written again under the right name when found.
    pub async fn is_marked(
        &self,
        registry: &str,
        repo: &RepoName,
        kind: &str,
        key: &str,
    ) -> io::Result<bool> {
        if self.exists(&repo_rel(registry, repo, kind, key)).await? {
            return Ok(true);
        }
        let legacy = repo_rel(registry, repo, &format!("_{kind}"), key);
        if !self.exists(&legacy).await? {
            return Ok(false);
        }
        // The legacy marker counts whether or not it can be moved (a
        // bucket this replica may only read, a passing error).
        if let Err(e) = self.mark(registry, repo, kind, key).await {
            tracing::debug!(error = %e, "cannot move a legacy membership marker");
            return Ok(true);
        }
        let old = self.key(&legacy);
        if let Err(e) = bounded(&old, self.store.delete(&old)).await {
            tracing::debug!(key = %old, error = %e, "cannot delete a migrated membership marker");
        }
        Ok(true)
    }

    async fn exists(&self, rel: &str) -> io::Result<bool> {
        let k = self.key(rel);
        match bounded(&k, self.store.head(&k)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(named(&k, e)),
        }
    }
}

fn manifest_rel(d: &Digest) -> String {
    format!("manifests/{}/{}", d.algorithm().as_str(), d.hex())
}

/// Names are validated OCI names (lowercase, `/`-separated, no `..`), so
/// they are safe key segments as they are.
fn repo_rel(registry: &str, repo: &RepoName, kind: &str, key: &str) -> String {
    format!("repositories/{registry}/{}/{kind}/{key}", repo.as_str())
}
