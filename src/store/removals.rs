//! The store's one removal listener: told of every blob the store
//! removes, after its file is gone (see `contents`). Set once, by whoever
//! mirrors the store's contents (the coordinator: the index and the
//! memory cache).

use std::sync::OnceLock;

use crate::oci::Digest;

/// Told of every blob the store removes, once, after the file is gone.
pub(super) type Listener = Box<dyn Fn(&Digest) + Send + Sync>;

/// The store's one removal listener, set once by whoever mirrors the
/// store's contents (the coordinator: the index and the memory cache).
#[derive(Default)]
pub(super) struct Removals(OnceLock<Listener>);

impl Removals {
    /// Sets the listener; false when one was set already.
    pub(super) fn set(&self, listener: Listener) -> bool {
        self.0.set(listener).is_ok()
    }

    /// Tells the listener, if there is one, that `digest` left.
    pub(super) fn tell(&self, digest: &Digest) {
        if let Some(listener) = self.0.get() {
            listener(digest);
        }
    }
}

impl std::fmt::Debug for Removals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Removals(listened)"
        } else {
            "Removals(unheard)"
        })
    }
}
