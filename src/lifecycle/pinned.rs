//! What `ferry.pin` keeps: per pin, the blobs its images consist of as
//! last resolved, their bytes, and what went wrong the last time. Eviction
//! asks [`Pinned::contains`] and skips what it answers yes for. A pin
//! whose refresh failed (the upstream down) keeps the blobs it had: a
//! pinned image is not unpinned by an outage.
//!
//! Filled by the service's pin task (`app::pins`); read by eviction and
//! the status page. The state lives here once.

use std::collections::{BTreeMap, HashSet};
use std::sync::RwLock;

use crate::oci::Digest;

/// One pin as last resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinState {
    /// The tags (or the digest) it covered.
    pub references: Vec<String>,
    pub blobs: Vec<Digest>,
    /// The blobs' bytes.
    pub bytes: u64,
    /// Why the last refresh failed, if it did.
    pub error: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    pins: BTreeMap<String, PinState>,
    all: HashSet<Digest>,
}

/// Every pin's blobs.
#[derive(Debug, Default)]
pub struct Pinned {
    inner: RwLock<Inner>,
}

impl Pinned {
    /// `pin` now covers what `state` says.
    pub fn set(&self, pin: &str, state: PinState) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.pins.insert(pin.to_string(), state);
        inner.all = inner
            .pins
            .values()
            .flat_map(|p| p.blobs.iter().cloned())
            .collect();
    }

    /// `pin`'s refresh failed: it keeps its blobs, and says why.
    pub fn failed(&self, pin: &str, error: String) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.pins.entry(pin.to_string()).or_default().error = Some(error);
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.all.contains(digest)
    }

    /// Every pin and its state, by name.
    pub fn snapshot(&self) -> Vec<(String, PinState)> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .pins
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_refresh_keeps_what_the_pin_had() {
        let p = Pinned::default();
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        p.set(
            "x:1",
            PinState {
                references: vec!["1".into()],
                blobs: vec![a.clone()],
                bytes: 10,
                error: None,
            },
        );
        assert!(p.contains(&a) && !p.contains(&b));
        p.failed("x:1", "upstream down".into());
        assert!(p.contains(&a), "still pinned");
        assert_eq!(p.snapshot()[0].1.error.as_deref(), Some("upstream down"));
        p.set(
            "x:1",
            PinState {
                blobs: vec![b.clone()],
                ..Default::default()
            },
        );
        assert!(
            !p.contains(&a) && p.contains(&b),
            "the new content replaces the old"
        );
    }
}
