//! The content store: where verified blobs, manifests and tag mappings live.
//!
//! The store only moves bytes; it has no idea of upstreams or clients. Today
//! there is one backend, [`FsStore`], a content-addressed directory tree.
//! Everything that reaches a final path got there by `rename` from a fully
//! written, verified ([`VerifiedBlob`]), fsynced temp file in the same
//! filesystem, so a crash at any
//! moment leaves at most a temp file, which [`FsStore::open`] removes.

mod contents;
mod durable;
mod fs;
pub mod record;
mod removals;
mod temp;

pub use contents::{Entry, Kind};
pub use fs::{check_root, FsStore, RecoveryReport, TagRecord};
pub use temp::{Mismatch, TempBlob, VerifiedBlob};

/// Runs a blocking store operation off the async runtime.
pub async fn blocking<T, F>(f: F) -> std::io::Result<T>
where
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(format!("store task failed: {e}"))),
    }
}
