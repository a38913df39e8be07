//! [`Tiered`]: the local store and, when replicas share a bucket, the
//! shared tier, as one place to keep small records: written locally and
//! then (in the background: a slow bucket never delays an answer) in the
//! shared tier; read locally, else from the shared tier (and kept locally
//! then). Manifests and repository markers go through here; blobs have
//! their own path (the coordinator's fill, and [`super::upload`]).

use std::sync::Arc;

use bytes::Bytes;

use super::Shared;
use crate::oci::{Digest, RepoName};
use crate::store::{self, FsStore};

/// The local store, and the shared tier if there is one.
#[derive(Debug, Clone)]
pub struct Tiered {
    local: Arc<FsStore>,
    shared: Option<Arc<Shared>>,
}

/// A repository at a registry (`host[:port]` and upstream name).
pub type Repo = (String, RepoName);

impl Tiered {
    pub fn new(local: Arc<FsStore>, shared: Option<Arc<Shared>>) -> Tiered {
        Tiered { local, shared }
    }

    pub fn local(&self) -> &Arc<FsStore> {
        &self.local
    }

    pub fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref()
    }

    /// Keeps a verified manifest: locally (the error is the local store's),
    /// then in the shared tier.
    pub async fn put_manifest(
        &self,
        digest: &Digest,
        media_type: &str,
        bytes: &Bytes,
    ) -> std::io::Result<()> {
        let (store, d, t, b) = (
            self.local.clone(),
            digest.clone(),
            media_type.to_string(),
            bytes.clone(),
        );
        let local = store::blocking(move || store.put_manifest(&d, &t, &b)).await;
        if let Some(shared) = self.shared.clone() {
            let (d, t, b) = (digest.clone(), media_type.to_string(), bytes.clone());
            tokio::spawn(async move {
                if let Err(e) = shared.put_manifest(&d, &t, &b).await {
                    tracing::warn!(digest = %d, error = %e, "cannot put manifest in the shared tier");
                }
            });
        }
        local
    }

    /// A manifest's media type and bytes, checked against its digest: from
    /// the local store, else from the shared tier (kept locally then).
    /// Failures are logged and read as absence: the manifest is then
    /// fetched upstream again.
    pub async fn get_manifest(&self, digest: &Digest) -> Option<(String, Bytes)> {
        let (store, d) = (self.local.clone(), digest.clone());
        match store::blocking(move || store.get_manifest(&d)).await {
            Ok(Some(found)) => return Some(found),
            Ok(None) => {}
            Err(e) => tracing::error!(%digest, error = %e, "cannot read stored manifest"),
        }
        let shared = self.shared.as_ref()?;
        let (media_type, bytes) = match shared.get_manifest(digest).await {
            Ok(found) => found?,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot read manifest from the shared tier");
                return None;
            }
        };
        let (store, d, t, b) = (
            self.local.clone(),
            digest.clone(),
            media_type.clone(),
            bytes.clone(),
        );
        if let Err(e) = store::blocking(move || store.put_manifest(&d, &t, &b)).await {
            tracing::warn!(%digest, error = %e, "cannot keep a shared manifest locally");
        }
        Some((media_type, bytes))
    }

    /// Records `keys` of `kind` for `repo`: locally (the error is the local
    /// store's), then in the shared tier.
    pub async fn mark(
        &self,
        repo: &Repo,
        kind: &'static str,
        keys: Vec<String>,
    ) -> std::io::Result<()> {
        if let Some(shared) = self.shared.clone() {
            let (repo, keys) = (repo.clone(), keys.clone());
            tokio::spawn(async move {
                for key in &keys {
                    if let Err(e) = shared.mark(&repo.0, &repo.1, kind, key).await {
                        tracing::warn!(repo = %repo.1, error = %e, "cannot record a marker in the shared tier");
                        return;
                    }
                }
            });
        }
        let (store, repo) = (self.local.clone(), repo.clone());
        store::blocking(move || {
            for key in &keys {
                store.mark(&repo.0, &repo.1, kind, key)?;
            }
            Ok(())
        })
        .await
    }

    /// The first of `repos` that has `key` of `kind`: asked of the local
    /// store, else of the shared tier.
    pub async fn find_marked(
        &self,
        repos: &[Repo],
        kind: &'static str,
        key: &str,
    ) -> Option<usize> {
        let (store, all, k) = (self.local.clone(), repos.to_vec(), key.to_string());
        let local = store::blocking(move || {
            Ok(all
                .iter()
                .position(|(r, n)| store.is_marked(r, n, kind, &k)))
        })
        .await
        .ok()
        .flatten();
        if local.is_some() {
            return local;
        }
        let shared = self.shared.as_ref()?;
        for (i, (r, n)) in repos.iter().enumerate() {
            if let Ok(true) = shared.is_marked(r, n, kind, key).await {
                return Some(i);
            }
        }
        None
    }
}
