//! Pre-warming: pull images into the cache ahead of time.
//!
//! `ferry prefetch IMAGE...` resolves each image the way a client pull
//! would (index → every platform's manifest → config and layers) through
//! the same routing, coordinator and store as the server, so a prefetch
//! running beside a live ferry shares its store safely. Blobs already
//! stored are skipped; the others are fetched a few at a time
//! ([`DEFAULT_PARALLEL`], `ferry prefetch --parallel N`).

use std::sync::Arc;

use futures::StreamExt;

use crate::app::manifests::references;
use crate::app::App;
use crate::coordinator::{BlobHandle, Progress};
use crate::oci::{Digest, Reference};

/// Blobs fetched at once unless told otherwise.
pub const DEFAULT_PARALLEL: usize = 4;

/// What happened to one blob, for progress displays.
#[derive(Debug, Clone)]
pub enum Event {
    /// The image's manifests were read: this many distinct blobs to go,
    /// `bytes` in all (as their descriptors say).
    Planned { blobs: usize, bytes: u64 },
    /// A blob download started; `size` when the upstream said.
    Started { digest: Digest, size: Option<u64> },
    /// `bytes` more arrived.
    Progress { digest: Digest, bytes: u64 },
    /// Finished (or was already cached).
    Done {
        digest: Digest,
        size: u64,
        cached: bool,
    },
}

/// Totals of a prefetch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub manifests: usize,
    pub blobs: usize,
    pub blobs_already_cached: usize,
    pub bytes_fetched: u64,
}

/// Why a prefetch failed (the caller names the image).
#[derive(Debug, thiserror::Error)]
pub enum PrefetchError {
    #[error("bad reference {reference:?}: {source}")]
    Reference {
        reference: String,
        #[source]
        source: crate::oci::ReferenceError,
    },
    #[error("{0}")]
    Route(#[source] crate::oci::RegistryError),
    #[error("manifest {reference}: {}", source.message)]
    Manifest {
        reference: Reference,
        #[source]
        source: crate::oci::RegistryError,
    },
    #[error("blob {digest}: {cause}")]
    Blob { digest: Digest, cause: String },
    /// The registry's stated pull budget is down to the reserve left for
    /// clients (`ferry.rateLimitReserve`): nothing more is spent on it.
    #[error("registry {registry} has {left} pulls left of its budget, and ferry.rateLimitReserve keeps {reserve} for clients; stopped")]
    Budget {
        registry: String,
        left: u64,
        reserve: u64,
    },
}

/// Splits `[host/]name[:tag|@digest]` into a name and a reference.
pub fn parse_image(image: &str) -> Result<(String, Reference), PrefetchError> {
    let (name, reference) = if let Some((n, d)) = image.split_once('@') {
        (n, d.to_string())
    } else {
        match image.rsplit_once(':') {
            // A colon after the last slash is a tag; before it, a port.
            Some((n, t)) if !t.contains('/') => (n, t.to_string()),
            _ => (image, "latest".to_string()),
        }
    };
    let reference = Reference::parse(&reference).map_err(|source| PrefetchError::Reference {
        reference: reference.clone(),
        source,
    })?;
    Ok((name.to_string(), reference))
}

/// Pulls one image (every platform) into the cache, [`DEFAULT_PARALLEL`]
/// blobs at a time.
pub async fn prefetch(
    app: &Arc<App>,
    image: &str,
    on_event: &(dyn Fn(Event) + Sync),
) -> Result<Report, PrefetchError> {
    prefetch_with(app, image, DEFAULT_PARALLEL, on_event).await
}

/// As [`prefetch`], `parallel` blobs at a time (at least 1).
pub async fn prefetch_with(
    app: &Arc<App>,
    image: &str,
    parallel: usize,
    on_event: &(dyn Fn(Event) + Sync),
) -> Result<Report, PrefetchError> {
    let options = Options {
        parallel,
        platforms: Vec::new(),
    };
    prefetch_for(app, image, &options, on_event).await
}

/// How a prefetch runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Blobs fetched at once (at least 1).
    pub parallel: usize,
    /// `os/architecture[/variant]`: an index's manifests for other
    /// platforms are skipped. Empty: every platform.
    pub platforms: Vec<String>,
}

/// True when `platform` (`os/arch[/variant]`) is well formed.
pub fn valid_platform(platform: &str) -> bool {
    let parts: Vec<&str> = platform.split('/').collect();
    (2..=3).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.')
        })
}

/// The manifests an index lists for `platforms` (all when empty).
fn manifests_for(bytes: &[u8], platforms: &[String]) -> Vec<Digest> {
    let refs = references(bytes);
    if platforms.is_empty() || refs.manifests.is_empty() {
        return refs.manifests;
    }
    let doc: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let wanted = |m: &serde_json::Value| {
        let p = &m["platform"];
        let (os, arch) = (
            p["os"].as_str().unwrap_or(""),
            p["architecture"].as_str().unwrap_or(""),
        );
        let variant = p["variant"].as_str();
        platforms.iter().any(|want| {
            let mut w = want.split('/');
            w.next() == Some(os)
                && w.next() == Some(arch)
                && w.next().is_none_or(|v| Some(v) == variant)
        })
    };
    let manifests = doc["manifests"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|m| wanted(m))
                .filter_map(|m| m["digest"].as_str()?.parse::<Digest>().ok())
                .filter(|d| refs.manifests.contains(d))
                .collect()
        })
        .unwrap_or_default();
    manifests
}

/// The size each of a manifest's config, layers and blobs states.
pub(super) fn sizes(bytes: &[u8]) -> Vec<(Digest, u64)> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let sized = |v: &serde_json::Value| {
        Some((
            v["digest"].as_str()?.parse::<Digest>().ok()?,
            v["size"].as_u64()?,
        ))
    };
    let mut out: Vec<(Digest, u64)> = sized(&doc["config"]).into_iter().collect();
    for key in ["layers", "blobs"] {
        out.extend(doc[key].as_array().into_iter().flatten().filter_map(sized));
    }
    out
}

/// As [`prefetch`], with `options`.
pub async fn prefetch_for(
    app: &Arc<App>,
    image: &str,
    options: &Options,
    on_event: &(dyn Fn(Event) + Sync),
) -> Result<Report, PrefetchError> {
    let parallel = options.parallel;
    let (name, reference) = parse_image(image)?;
    let repo = app
        .coordinator
        .router()
        .resolve(&name, None, crate::routing::Origin::background())
        .map_err(PrefetchError::Route)?;
    let mut report = Report::default();
    let mut pending = vec![reference];
    let mut blobs: Vec<Digest> = Vec::new();
    let mut bytes = 0u64;
    while let Some(r) = pending.pop() {
        // A manifest GET is what a registry counts as a pull.
        within_budget(app, &repo)?;
        let m = app
            .manifest(&repo, &r)
            .await
            .map_err(|source| PrefetchError::Manifest {
                reference: r.clone(),
                source,
            })?;
        report.manifests += 1;
        // The server's own parser: foreign layers (`urls`) are skipped.
        let refs = references(&m.bytes);
        pending.extend(
            manifests_for(&m.bytes, &options.platforms)
                .into_iter()
                .map(Reference::Digest),
        );
        let sized = sizes(&m.bytes);
        for d in refs.blobs {
            if !blobs.contains(&d) {
                bytes += sized.iter().find(|(s, _)| *s == d).map_or(0, |(_, n)| *n);
                blobs.push(d);
            }
        }
    }
    on_event(Event::Planned {
        blobs: blobs.len(),
        bytes,
    });
    let repo = &repo;
    let mut fetches = futures::stream::iter(blobs)
        .map(|digest| async move { fetch_blob(app, repo, &digest, on_event).await })
        .buffer_unordered(parallel.max(1));
    while let Some(fetched) = fetches.next().await {
        report.blobs += 1;
        match fetched? {
            None => report.blobs_already_cached += 1,
            Some(n) => report.bytes_fetched += n,
        }
    }
    Ok(report)
}

/// Refuses to spend more of a registry's stated pull budget than leaves
/// `ferry.rateLimitReserve` for clients (a registry that states none is
/// not limited here).
fn within_budget(app: &App, repo: &crate::routing::Resolved) -> Result<(), PrefetchError> {
    let reserve = app.config.rate_limit_reserve;
    for target in &repo.targets {
        let budget = &target.registry.upstream.stats().budget;
        if let Some(left) = budget.left().filter(|left| *left <= reserve) {
            return Err(PrefetchError::Budget {
                registry: target.registry.name.clone(),
                left,
                reserve,
            });
        }
    }
    Ok(())
}

/// Reads a blob through the coordinator to its end; `None` when it was
/// already stored.
async fn fetch_blob(
    app: &Arc<App>,
    repo: &crate::routing::Resolved,
    digest: &Digest,
    on_event: &(dyn Fn(Event) + Sync),
) -> Result<Option<u64>, PrefetchError> {
    let handle =
        app.coordinator
            .open_blob(repo, digest)
            .await
            .map_err(|e| PrefetchError::Blob {
                digest: digest.clone(),
                cause: e.message,
            })?;
    if let BlobHandle::Stored { .. } | BlobHandle::Memory { .. } = handle {
        on_event(Event::Done {
            digest: digest.clone(),
            size: handle.size().unwrap_or(0),
            cached: true,
        });
        return Ok(None);
    }
    on_event(Event::Started {
        digest: digest.clone(),
        size: handle.size(),
    });
    let flight = handle.flight().cloned();
    let mut stream = handle.stream(0, None);
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| PrefetchError::Blob {
            digest: digest.clone(),
            cause: e.to_string(),
        })?;
        total += chunk.len() as u64;
        on_event(Event::Progress {
            digest: digest.clone(),
            bytes: chunk.len() as u64,
        });
    }
    // The stream ends once the bytes are verified; the blob is stored a
    // moment later (fsync, rename). Prefetch promises it is stored.
    if let Some(flight) = flight {
        let mut rx = flight.subscribe();
        let end = rx
            .wait_for(|p| matches!(p, Progress::Done { .. } | Progress::Failed(_)))
            .await
            .map(|p| p.clone());
        if let Ok(Progress::Failed(why)) = end {
            return Err(PrefetchError::Blob {
                digest: digest.clone(),
                cause: why.to_string(),
            });
        }
    }
    on_event(Event::Done {
        digest: digest.clone(),
        size: total,
        cached: false,
    });
    Ok(Some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        let (n, r) = parse_image("library/alpine:3.20").unwrap();
        assert_eq!(
            (n.as_str(), r.to_string().as_str()),
            ("library/alpine", "3.20")
        );
        let (n, r) = parse_image("127.0.0.1:5000/team/app").unwrap();
        assert_eq!(
            (n.as_str(), r.to_string().as_str()),
            ("127.0.0.1:5000/team/app", "latest")
        );
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let (n, r) = parse_image(&format!("a/b@{d}")).unwrap();
        assert_eq!((n.as_str(), r.to_string()), ("a/b", d.to_string()));
        assert!(parse_image("a:.bad").is_err());
    }
}
