//! Tags: answered from the store while fresh, revalidated cheaply when not,
//! served stale when the upstream cannot be used.
//!
//! | situation | answer |
//! | --- | --- |
//! | stored, younger than `tagTTL`, type acceptable | from the store, no upstream call |
//! | older | `HEAD` upstream; same digest: from the store (record refreshed); else `GET` |
//! | upstream unreachable, timeout, 5xx, 429, auth server down | stored tag with a `Warning` header, up to `maxStale` |
//! | upstream 404 | 404 (the tag was deleted), unless `serveStaleOnNotFound` |
//!
//! Concurrent requests for the same tag (and `Accept`) share one
//! revalidation, as blobs share one fetch. In a cluster, the replica that
//! owns the tag revalidates it and the others ask it (see
//! [`super::from_peer`]).

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt, Shared};

use super::manifests::{self, Failure, Manifest, Resolution};
use super::App;
use crate::metrics::{CacheStatus, MethodLabels};
use crate::oci::{Reference, RegistryError, Tag};
use crate::routing::Resolved;
use crate::upstream::{is_absent, worse, UpstreamError};

/// A revalidation in flight, shared by every request that waits for it.
pub type SharedRevalidation = Shared<BoxFuture<'static, Result<Resolution, RegistryError>>>;

/// Resolves `tag` for a client that accepts `accept`.
pub async fn resolve(
    app: &Arc<App>,
    repo: &Resolved,
    tag: &Tag,
    accept: &str,
) -> Result<Resolution, RegistryError> {
    // Only the first candidate's stored tag is served without asking (the
    // registry that last served this repository to this replica's clients
    // comes first). A later candidate's record may have been kept for a
    // cluster peer routing its own way: serving it skipped the registry
    // this replica's config puts first, and gave its clients the other
    // registry's image.
    if let Some(target) = repo.targets.first() {
        let stored = manifests::stored_tag(app, target, &target.upstream_name, tag).await;
        if let Some((record, m)) = stored {
            let ttl = target.registry.config.freshness.tag_ttl;
            if app.clock.age(record.fetched_at_ms) < ttl && accepts(accept, &m.media_type) {
                return Ok(Resolution {
                    manifest: m,
                    cache: CacheStatus::Hit,
                    warning: None,
                });
            }
        }
    }
    let registries: Vec<String> = repo
        .targets
        .iter()
        .map(|t| t.registry.index.to_string())
        .collect();
    // A peer's request never joins a revalidation that may be waiting on a
    // peer itself.
    let key = format!(
        "{}|{}|{tag}|{accept}|{}",
        registries.join(","),
        repo.local,
        repo.origin.is_peer()
    );
    let shared = match app.revalidations.entry(key.clone()) {
        dashmap::mapref::entry::Entry::Occupied(e) => {
            app.metrics.revalidations_joined.inc();
            e.get().clone()
        }
        dashmap::mapref::entry::Entry::Vacant(e) => {
            let (app, repo, tag, accept) =
                (app.clone(), repo.clone(), tag.clone(), accept.to_string());
            // Spawned, so it finishes (and leaves the map) even when every
            // waiting client has gone away.
            let task = tokio::spawn(async move {
                let result = revalidate(&app, &repo, &tag, &accept).await;
                app.revalidations.remove(&key);
                result
            });
            let fut = async move {
                task.await.unwrap_or_else(|e| {
                    Err(RegistryError::new(
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        crate::oci::ErrorCode::Unavailable,
                        format!("tag revalidation failed: {e}"),
                    ))
                })
            }
            .boxed()
            .shared();
            e.insert(fut.clone());
            fut
        }
    };
    shared.await
}

async fn revalidate(
    app: &Arc<App>,
    repo: &Resolved,
    tag: &Tag,
    accept: &str,
) -> Result<Resolution, RegistryError> {
    let reference = Reference::Tag(tag.clone());
    let mut failure: Option<UpstreamError> = None;
    for target in &repo.targets {
        let stored = manifests::stored_tag(app, target, &target.upstream_name, tag)
            .await
            .filter(|(_, m)| accepts(accept, &m.media_type));
        let attempt: Result<(Manifest, CacheStatus), Failure> = async {
            // In a cluster, the tag's owner revalidates it for everyone.
            if let Some(answer) = super::from_peer::tag(app, repo, target, tag, accept).await {
                let m = answer?;
                let same = stored.as_ref().is_some_and(|(_, s)| s.digest == m.digest);
                let cache = if same {
                    CacheStatus::Revalidated
                } else {
                    CacheStatus::Miss
                };
                return Ok((m, cache));
            }
            if let Some((_, m)) = &stored {
                app.metrics
                    .revalidations
                    .get_or_create(&MethodLabels { method: "HEAD" })
                    .inc();
                match manifests::head_digest(target, &reference, accept).await? {
                    Some(d) if d == m.digest => return Ok((m.clone(), CacheStatus::Revalidated)),
                    _ => {}
                }
            }
            app.metrics
                .revalidations
                .get_or_create(&MethodLabels { method: "GET" })
                .inc();
            let m = manifests::fetch(app, target, &reference, accept, None).await?;
            Ok((m, CacheStatus::Miss))
        }
        .await;
        match attempt {
            Ok((m, cache)) => {
                manifests::remember(app, repo, target);
                manifests::put_tag(app, target, &target.upstream_name, tag, &m).await;
                return Ok(Resolution {
                    manifest: m,
                    cache,
                    warning: None,
                });
            }
            Err(Failure::Upstream(e)) => {
                tracing::debug!(registry = %target.registry.name, error = %e, "tag not served here");
                failure = Some(worse(failure, e));
            }
            Err(Failure::Refused(e)) => return Err(e),
        }
    }
    let failure = failure.expect("a resolved repository has a target");
    manifests::failed(app, repo, &reference, &failure);
    if let Some(outcome) = stale(app, repo, tag, &failure).await {
        return Ok(outcome);
    }
    Err(manifests::report(Some(failure)))
}

/// A stored tag that may be served although the upstream failed.
async fn stale(
    app: &App,
    repo: &Resolved,
    tag: &Tag,
    failure: &UpstreamError,
) -> Option<Resolution> {
    let unavailable = failure.is_unavailable();
    if !unavailable && !is_absent(failure) {
        return None;
    }
    for target in &repo.targets {
        let f = target.registry.config.freshness;
        if !unavailable && !f.serve_stale_on_not_found {
            continue;
        }
        let Some((record, m)) =
            manifests::stored_tag(app, target, &target.upstream_name, tag).await
        else {
            continue;
        };
        let age = app.clock.age(record.fetched_at_ms);
        if f.max_stale.is_some_and(|max| age > max) {
            tracing::warn!(repo = %repo.local, %tag, age_s = age.as_secs(), "stored tag is older than maxStale; not served");
            continue;
        }
        app.metrics.stale_served.inc();
        tracing::warn!(repo = %repo.local, %tag, registry = %target.registry.name, digest = %m.digest,
            age_s = age.as_secs(), error = %failure, "upstream unavailable; serving the stored tag");
        let why = if unavailable {
            "upstream unavailable"
        } else {
            "upstream no longer has the tag"
        };
        let warning = format!(
            "110 ferry \"{why}, serving stored tag ({}s old): {}\"",
            age.as_secs(),
            failure.to_string().replace(['"', '\\'], "'")
        );
        return Some(Resolution {
            manifest: m,
            cache: CacheStatus::Stale,
            warning: Some(warning),
        });
    }
    None
}

/// True when an `Accept` header admits `media_type`.
pub fn accepts(accept: &str, media_type: &str) -> bool {
    accept.split(',').any(|item| {
        let t = item.split(';').next().unwrap_or("").trim();
        t == media_type || t == "*/*" || t == "application/*"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let oci = "application/vnd.oci.image.index.v1+json";
        assert!(accepts(
            "application/vnd.oci.image.index.v1+json, application/json",
            oci
        ));
        assert!(accepts(
            "application/vnd.oci.image.index.v1+json;q=0.9",
            oci
        ));
        assert!(accepts("*/*", oci));
        assert!(!accepts(
            "application/vnd.docker.distribution.manifest.v2+json",
            oci
        ));
    }
}
