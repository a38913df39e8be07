//! Periodic sync, as zot's `pollInterval` does it: every interval, list the
//! upstream's catalog, keep the repositories a `content` rule names (and
//! the tags its `tags` filter admits), and prefetch them, so images are in
//! the cache before anyone asks.
//!
//! Images are pulled path-style (`<registry host>/<upstream name>:<tag>`),
//! so each registry syncs from itself whatever the routing order.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::config::{ContentRule, TagFilter};
use crate::routing::{prefix_matches, Registry};
use crate::upstream::UpstreamError;

/// What one sync pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub repositories: usize,
    pub images: usize,
    pub failures: usize,
}

/// Starts one loop per registry that has a `pollInterval`; the first pass
/// runs at once.
pub fn spawn(app: &Arc<App>) -> Vec<tokio::task::JoinHandle<()>> {
    app.coordinator
        .router()
        .registries()
        .iter()
        .filter_map(|r| Some((r.clone(), r.config.poll_interval?)))
        .filter(|(r, _)| !r.config.content.is_empty())
        .map(|(registry, every)| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every.max(Duration::from_secs(1)));
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let report = sync_once(&app, &registry).await;
                    tracing::info!(registry = %registry.name, repositories = report.repositories,
                        images = report.images, failures = report.failures, "periodic sync pass done");
                }
            })
        })
        .collect()
}

/// One pass over one registry.
pub async fn sync_once(app: &Arc<App>, registry: &Arc<Registry>) -> SyncReport {
    let mut report = SyncReport::default();
    let limits = app.config.list_limits;
    let repos = match list(registry, "/v2/_catalog", "repositories", limits).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(registry = %registry.name, error = %e, "periodic sync: cannot list the catalog");
            report.failures += 1;
            return report;
        }
    };
    for repo in repos {
        if crate::oci::RepoName::parse(&repo).is_err() {
            tracing::warn!(registry = %registry.name, repo = %repo, "periodic sync: skipping an invalid repository name");
            continue;
        }
        let Some(rule) = registry
            .config
            .content
            .iter()
            .find(|r| prefix_matches(&r.prefix, &repo))
        else {
            continue;
        };
        report.repositories += 1;
        let tags = match list(registry, &format!("/v2/{repo}/tags/list"), "tags", limits).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(registry = %registry.name, %repo, error = %e, "periodic sync: cannot list tags");
                report.failures += 1;
                continue;
            }
        };
        let valid = |t: &String| crate::oci::Tag::parse(t).is_ok();
        for tag in tags.into_iter().filter(valid).filter(|t| admits(rule, t)) {
            let image = format!("{}/{repo}:{tag}", registry.name);
            match crate::prefetch::prefetch(app, &image, &|_| {}).await {
                Ok(r) => {
                    report.images += 1;
                    tracing::debug!(%image, blobs = r.blobs, bytes = r.bytes_fetched, "synced");
                }
                Err(e @ crate::prefetch::PrefetchError::Budget { .. }) => {
                    report.failures += 1;
                    tracing::warn!(%image, error = %e, "periodic sync: stopping this pass");
                    return report;
                }
                Err(e) => {
                    report.failures += 1;
                    tracing::warn!(%image, error = %e, "periodic sync: image failed");
                }
            }
        }
    }
    report
}

fn admits(rule: &ContentRule, tag: &str) -> bool {
    let Some(TagFilter { regex, semver }) = &rule.tags else {
        return true;
    };
    if let Some(re) = regex {
        // Validated at config load.
        match regex::Regex::new(re) {
            Ok(re) if re.is_match(tag) => {}
            _ => return false,
        }
    }
    !*semver || semver::Version::parse(tag.trim_start_matches('v')).is_ok()
}

/// A paged list from one registry.
async fn list(
    registry: &Registry,
    first: &str,
    field: &str,
    limits: crate::config::ListLimits,
) -> Result<Vec<String>, UpstreamError> {
    crate::upstream::paged_list(&registry.upstream, first, field, limits).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(tags: Option<TagFilter>) -> ContentRule {
        ContentRule {
            prefix: "**".into(),
            destination: None,
            strip_prefix: false,
            tags,
        }
    }

    #[test]
    fn tag_filters() {
        assert!(admits(&rule(None), "anything"));
        let semver = rule(Some(TagFilter {
            regex: None,
            semver: true,
        }));
        assert!(admits(&semver, "v1.2.3"));
        assert!(admits(&semver, "1.2.3"));
        assert!(!admits(&semver, "latest"));
        let re = rule(Some(TagFilter {
            regex: Some("^4\\.".into()),
            semver: false,
        }));
        assert!(admits(&re, "4.1"));
        assert!(!admits(&re, "3.9"));
    }
}
