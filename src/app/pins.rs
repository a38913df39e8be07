//! `ferry.pin` kept: every pin is resolved to its images' blobs (a tag
//! glob to the repository's tags that match), what is missing is fetched,
//! and the lifecycle's [`Pinned`](crate::lifecycle::Pinned) set is
//! replaced, so eviction skips those blobs. It runs at start and then
//! every [`interval`] (the shortest `tagTTL` of the registries): a pinned
//! tag's manifest is revalidated as any pull's would be once its TTL
//! passed, and its new content fetched in the background. A pin whose
//! refresh fails (the upstream down, its reserve of pulls reached) keeps
//! the blobs it had.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::prefetch::{self, Event, Options};
use super::App;
use crate::config::{Config, Pin, PinTarget};
use crate::lifecycle::PinState;
use crate::oci::{Digest, Tag};
use crate::routing::{Origin, Router};
use crate::store::FsStore;

/// The tags one glob may pin: each is an image fetched and revalidated
/// every `tagTTL`.
pub const MAX_MATCHES: usize = 64;

/// How often pins are refreshed: the shortest `tagTTL`, at least 10 s.
pub fn interval(config: &Config) -> Duration {
    config
        .registries
        .iter()
        .map(|r| r.freshness.tag_ttl)
        .min()
        .unwrap_or(Duration::from_secs(300))
        .max(Duration::from_secs(10))
}

impl App {
    /// Resolves every pin once (see the file's comment).
    pub async fn refresh_pins(self: &Arc<Self>) {
        for pin in &self.config.lifecycle.pins {
            match self.resolve_pin(pin).await {
                Ok(state) => {
                    tracing::debug!(pin = %pin.image, blobs = state.blobs.len(), bytes = state.bytes, "pin resolved");
                    self.coordinator.lifecycle().pinned.set(&pin.image, state);
                }
                Err(e) => {
                    tracing::warn!(pin = %pin.image, error = %e, "cannot resolve a pin; it keeps what it had");
                    self.coordinator.lifecycle().pinned.failed(&pin.image, e);
                }
            }
        }
        // Pinned bytes count against the cap: past its low-water mark,
        // eviction can no longer get the store under it.
        let lc = self.coordinator.lifecycle();
        let pinned: u64 = lc.pinned.snapshot().iter().map(|(_, p)| p.bytes).sum();
        if let Some(low) = lc.config.low_water().filter(|low| pinned > *low) {
            tracing::warn!(pinned, low_water = low, "the pinned images alone fill 90% of ferry.maxSize: eviction cannot make room below them; raise maxSize or pin less");
        }
    }

    async fn resolve_pin(self: &Arc<Self>, pin: &Pin) -> Result<PinState, String> {
        let references: Vec<String> = match &pin.target {
            PinTarget::Tag(t) => vec![format!(":{t}")],
            PinTarget::Digest(d) => vec![format!("@{d}")],
            PinTarget::Glob(..) => {
                let repo = self
                    .coordinator
                    .router()
                    .resolve(&pin.name, None, Origin::background())
                    .map_err(|e| e.message)?;
                let tags = self
                    .tags(&repo)
                    .await
                    .map_err(|e| format!("its tags: {}", e.message))?;
                let matching: Vec<String> = tags
                    .into_iter()
                    .filter(|t| pin.covers_tag(t))
                    .map(|t| format!(":{t}"))
                    .collect();
                if matching.len() > MAX_MATCHES {
                    return Err(format!(
                        "{} tags match; a glob pins at most {MAX_MATCHES} (narrow it)",
                        matching.len()
                    ));
                }
                matching
            }
        };
        // A glob that matches nothing now (an emptied tag list, a routing
        // change) does not unpin what it had: it is a failed refresh.
        if references.is_empty() {
            return Err("no tag matches".to_string());
        }
        let blobs: Mutex<Vec<(crate::oci::Digest, u64)>> = Mutex::new(Vec::new());
        let options = Options {
            parallel: 2,
            platforms: Vec::new(),
        };
        for r in &references {
            let image = format!("{}{r}", pin.name);
            let seen = |e: Event| {
                if let Event::Done { digest, size, .. } = e {
                    let mut b = blobs.lock().unwrap_or_else(|e| e.into_inner());
                    if !b.iter().any(|(d, _)| *d == digest) {
                        b.push((digest, size));
                    }
                }
            };
            prefetch::prefetch_for(self, &image, &options, &seen)
                .await
                .map_err(|e| format!("{image}: {e}"))?;
        }
        let blobs = blobs.into_inner().unwrap_or_else(|e| e.into_inner());
        Ok(PinState {
            references: references.iter().map(|r| r[1..].to_string()).collect(),
            bytes: blobs.iter().map(|(_, n)| n).sum(),
            blobs: blobs.into_iter().map(|(d, _)| d).collect(),
            error: None,
        })
    }
}

/// What the store holds of a pin, read from the store alone.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Tags (or the digest) whose manifest is stored.
    pub references: usize,
    /// The bytes of their blobs as their descriptors state them, each blob
    /// counted once across every pin passed the same `seen`.
    pub bytes: u64,
}

/// [`Stored`] of `pin` in `store` (no upstream is asked): how `ferry
/// check-config` counts the pins against `maxSize`.
pub fn stored(
    store: &FsStore,
    router: &Router,
    pin: &Pin,
    seen: &mut HashSet<Digest>,
) -> Result<Stored, String> {
    let repo = router
        .resolve(&pin.name, None, Origin::background())
        .map_err(|e| e.message)?;
    let mut out = Stored::default();
    for target in &repo.targets {
        let (registry, name) = (&target.registry.name, &target.upstream_name);
        let roots: Vec<Digest> = match &pin.target {
            PinTarget::Digest(d) => vec![d.clone()],
            PinTarget::Tag(_) | PinTarget::Glob(..) => store
                .list_tags(registry, name)
                .unwrap_or_default()
                .iter()
                .filter(|t| pin.covers_tag(t))
                .filter_map(|t| Tag::parse(t).ok())
                .filter_map(|t| store.get_tag(registry, name, &t).ok().flatten())
                .filter_map(|r| r.digest.parse().ok())
                .collect(),
        };
        for root in roots {
            let mut pending = vec![root];
            let mut found = false;
            while let Some(d) = pending.pop() {
                let Ok(Some((_, bytes))) = store.get_manifest(&d) else {
                    continue;
                };
                found = true;
                pending.extend(super::manifests::references(&bytes).manifests);
                for (blob, size) in prefetch::sizes(&bytes) {
                    if seen.insert(blob) {
                        out.bytes += size;
                    }
                }
            }
            out.references += usize::from(found);
        }
    }
    Ok(out)
}
