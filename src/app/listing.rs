//! What the listing endpoints list: a repository's tags (from the upstream
//! when it answers, all of its pages; else the tags ferry holds) and the
//! repositories ferry holds tags for. Pagination is the HTTP adapter's.

use std::collections::BTreeSet;
use std::sync::Arc;

use http::StatusCode;

use super::App;
use crate::config::ListLimits;
use crate::oci::{ErrorCode, RegistryError, Tag};
use crate::routing::{Resolved, Target};
use crate::store;
use crate::upstream::{paged_list, UpstreamError};

impl App {
    /// Every tag of `repo`, in lexical order.
    pub async fn tags(&self, repo: &Resolved) -> Result<BTreeSet<String>, RegistryError> {
        let limits = self.config.list_limits;
        match repo.first(|t| upstream_tags(t, limits)).await {
            Ok((t, _)) => Ok(t),
            Err(e) if e.is_unavailable() => {
                let mut held = BTreeSet::new();
                for target in &repo.targets {
                    let store = self.coordinator.store().clone();
                    let (r, n) = (target.registry.name.clone(), target.upstream_name.clone());
                    if let Ok(t) = store::blocking(move || store.list_tags(&r, &n)).await {
                        held.extend(t);
                    }
                }
                if held.is_empty() {
                    return Err(e.to_registry_error(ErrorCode::NameUnknown));
                }
                tracing::warn!(repo = %repo.local, error = %e, "upstream unavailable; listing the tags ferry holds");
                Ok(held)
            }
            Err(e) => Err(e.to_registry_error(ErrorCode::NameUnknown)),
        }
    }

    /// The repositories ferry holds tags for, in lexical order (one walk of
    /// the store serves every request while it is current).
    pub async fn repositories(&self) -> Result<Arc<Vec<String>>, RegistryError> {
        let store = self.coordinator.store().clone();
        let written = || self.coordinator.store().tags_written();
        let walk = || async move {
            store::blocking(move || store.list_repositories())
                .await
                .map_err(|e| {
                    RegistryError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        ErrorCode::Unknown,
                        format!("cannot list the store's repositories: {e}"),
                    )
                })
        };
        self.catalog.list(written, walk).await
    }
}

/// Every tag of a repository at one registry, following `Link` pages;
/// only tags ferry could serve (which also keeps them safe in headers).
async fn upstream_tags(
    target: &Target,
    limits: ListLimits,
) -> Result<BTreeSet<String>, UpstreamError> {
    let path = format!("/v2/{}/tags/list", target.upstream_name);
    let tags = paged_list(&target.registry.upstream, &path, "tags", limits).await?;
    Ok(tags.into_iter().filter(|t| Tag::parse(t).is_ok()).collect())
}
