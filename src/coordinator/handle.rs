//! [`BlobHandle`]: where a blob response's bytes come from, decided once by
//! `Coordinator::open_blob` (access included), and turned into one stream
//! by [`BlobHandle::stream`], which consumes it.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;

use super::flight::{ClientGuard, Flight};
use super::passthrough;
use super::reader::BlobStream;
use crate::lifecycle::ReadGuard;
use crate::metrics::CacheStatus;
use crate::oci::Digest;

/// Where a blob response's bytes come from, and why.
#[derive(Debug)]
pub enum BlobHandle {
    /// Already in the store; the guard keeps it from eviction.
    Stored {
        file: Arc<File>,
        size: u64,
        guard: Arc<ReadGuard>,
    },
    /// A small stored blob held in memory (verified when it was loaded).
    Memory { bytes: Bytes },
    /// No room to cache it: straight from upstream, verified, not kept.
    Uncached {
        /// Boxed: the rare variant should not size every handle.
        body: Box<crate::upstream::PassedBody>,
        digest: Digest,
        size: Option<u64>,
    },
    /// Being fetched; `joined` is true when another request started it.
    InFlight {
        flight: Arc<Flight>,
        file: Arc<File>,
        size: Option<u64>,
        joined: bool,
        /// Counts this request as a client of the fetch from the moment it
        /// joined; its stream takes the guard over, so the fetch is never
        /// seen deserted in between.
        client: ClientGuard,
    },
}

impl BlobHandle {
    pub fn size(&self) -> Option<u64> {
        match self {
            BlobHandle::Stored { size, .. } => Some(*size),
            BlobHandle::Memory { bytes } => Some(bytes.len() as u64),
            BlobHandle::InFlight { size, .. } | BlobHandle::Uncached { size, .. } => *size,
        }
    }

    /// Where the answer comes from, for the access log and metrics.
    pub fn cache_status(&self) -> CacheStatus {
        match self {
            BlobHandle::Stored { .. } | BlobHandle::Memory { .. } => CacheStatus::Hit,
            BlobHandle::Uncached { .. } => CacheStatus::Uncached,
            BlobHandle::InFlight { joined: false, .. } => CacheStatus::Miss,
            BlobHandle::InFlight { joined: true, .. } => CacheStatus::Joined,
        }
    }

    /// True when every byte this handle serves was checked against the
    /// digest already (stored, in memory, or a fetch that verified).
    pub fn is_verified(&self) -> bool {
        match self {
            BlobHandle::Stored { .. } | BlobHandle::Memory { .. } => true,
            BlobHandle::Uncached { .. } => false,
            BlobHandle::InFlight { flight, .. } => matches!(
                flight.progress(),
                super::flight::Progress::Verified { .. } | super::flight::Progress::Done { .. }
            ),
        }
    }

    /// As [`BlobHandle::stream`], but a range of a blob still in flight
    /// ends cleanly only once the whole blob was verified.
    pub fn stream_verified(self, start: u64, end: Option<u64>) -> BlobStream {
        match self {
            BlobHandle::InFlight {
                flight,
                file,
                client,
                ..
            } => BlobStream::following_with(flight, file, start, end, true).holding(client),
            other => other.stream(start, end),
        }
    }

    /// The fetch in flight behind this handle, if any.
    pub fn flight(&self) -> Option<&Arc<Flight>> {
        match self {
            BlobHandle::InFlight { flight, .. } => Some(flight),
            _ => None,
        }
    }

    /// The bytes `[start, end)` of the blob as a stream that follows the
    /// download when the blob is in flight. An uncached blob streams whole,
    /// once (callers send it with a 200, ignoring any range).
    pub fn stream(self, start: u64, end: Option<u64>) -> BlobStream {
        match self {
            BlobHandle::Memory { bytes } => {
                let size = bytes.len() as u64;
                let end = end.unwrap_or(size).min(size) as usize;
                let part = bytes.slice((start as usize).min(end)..end);
                BlobStream::from_stream(futures::stream::once(async move { Ok(part) }))
            }
            BlobHandle::Stored { file, size, guard } => {
                BlobStream::stored(file, start, end.unwrap_or(size)).holding(guard)
            }
            BlobHandle::Uncached { body, digest, .. } => {
                BlobStream::from_stream(passthrough::VerifyingStream::new(*body, digest))
            }
            BlobHandle::InFlight {
                flight,
                file,
                client,
                ..
            } => BlobStream::following(flight, file, start, end).holding(client),
        }
    }
}
