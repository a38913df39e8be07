//! One blob fetch in flight: its progress, its temp file, and why it ended.
//!
//! [`Progress`] is explicit about how a fetch ended. A reader that sees
//! [`Progress::Failed`] must end its response with an error, never cleanly,
//! so a client can never take a truncated blob for a whole one.

use std::fs::File;
use std::sync::{Arc, OnceLock};

use http::StatusCode;
use tokio::sync::watch;

use crate::oci::{Digest, ErrorCode, RegistryError};
use crate::routing::Origin;
use crate::upstream::UpstreamError;

mod sources;

pub use sources::LieReport;
use sources::Sources;

/// The state of one fetch, as readers see it.
#[derive(Clone, Debug)]
pub enum Progress {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes `[0, written)` are in the temp file. `size` is the upstream's
    /// `Content-Length`, when it sent one.
    Streaming { size: Option<u64>, written: u64 },
    /// All `size` bytes are written and their digest matched; the file is
    /// being fsynced and renamed into place. Readers may end cleanly.
    Verified { size: u64 },
    /// Verified and published; the file holds all `size` bytes.
    Done { size: u64 },
    /// Nothing was published; readers must abort.
    Failed(Arc<FetchFailure>),
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchFailure {
    Upstream(UpstreamError),
    DigestMismatch {
        expected: Digest,
        actual: Digest,
    },
    LengthMismatch {
        expected: u64,
        received: u64,
    },
    /// A body without an announced length ran past `maxBlobSize`.
    Endless {
        limit: u64,
    },
    Store(String),
    /// The store has no room (below minFreeSpace, disk full): the blob is
    /// served uncached.
    NoRoom(String),
    /// The store cannot be written (a write failed: read-only, permissions,
    /// I/O error): the blob is served uncached.
    Unwritable(String),
    /// The fetch task ended without saying how (it panicked or was
    /// cancelled at shutdown).
    Abandoned,
    /// Every reader left while other downloads waited for the registry's
    /// fetch slots: this one gave its slot up.
    Deserted,
    /// Another replica caught `peer`, which this fill was receiving from,
    /// sending bytes that are not the blob: the fill was dropped.
    PeerLied {
        peer: String,
    },
}

impl std::fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchFailure::Upstream(e) => e.fmt(f),
            FetchFailure::DigestMismatch { expected, actual } => write!(
                f,
                "upstream bytes for {expected} hash to {actual}; nothing was stored"
            ),
            FetchFailure::LengthMismatch { expected, received } => write!(
                f,
                "upstream announced {expected} bytes but sent {received}; nothing was stored"
            ),
            FetchFailure::Endless { limit } => write!(
                f,
                "upstream sent more than ferry.maxBlobSize ({limit} bytes) without announcing a length; nothing was stored"
            ),
            FetchFailure::Store(e) => write!(f, "store failed: {e}"),
            FetchFailure::NoRoom(e) => write!(f, "no room to cache: {e}"),
            FetchFailure::Unwritable(e) => write!(f, "the store cannot be written: {e}"),
            FetchFailure::Abandoned => write!(f, "the fetch ended without a result"),
            FetchFailure::PeerLied { peer } => write!(
                f,
                "another replica caught peer {peer} sending bytes that are not the blob; nothing of it was stored"
            ),
            FetchFailure::Deserted => write!(
                f,
                "every client left while other downloads waited for the registry's fetch slots; cancelled"
            ),
        }
    }
}

impl FetchFailure {
    /// `reason` label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchFailure::Upstream(_) => "upstream",
            FetchFailure::DigestMismatch { .. } => "digest_mismatch",
            FetchFailure::LengthMismatch { .. } | FetchFailure::Endless { .. } => "length_mismatch",
            FetchFailure::Store(_) | FetchFailure::Unwritable(_) => "store",
            FetchFailure::NoRoom(_) => "no_room",
            FetchFailure::Abandoned => "abandoned",
            FetchFailure::PeerLied { .. } => "digest_mismatch",
            FetchFailure::Deserted => "deserted",
        }
    }

    /// The response for a client whose request failed before any byte.
    pub fn to_registry_error(&self) -> RegistryError {
        match self {
            FetchFailure::Upstream(e) => e.to_registry_error(ErrorCode::BlobUnknown),
            FetchFailure::DigestMismatch { .. }
            | FetchFailure::LengthMismatch { .. }
            | FetchFailure::PeerLied { .. }
            | FetchFailure::Endless { .. } => RegistryError::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::DigestInvalid,
                self.to_string(),
            ),
            FetchFailure::Store(_)
            | FetchFailure::NoRoom(_)
            | FetchFailure::Unwritable(_)
            | FetchFailure::Abandoned
            | FetchFailure::Deserted => RegistryError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                self.to_string(),
            ),
        }
    }
}

/// A fetch in flight, shared by its task and every reader.
#[derive(Debug)]
pub struct Flight {
    pub digest: Digest,
    /// The repository the fetch was started for ([`Resolved::key`]: its
    /// upstream requests go under those names, so its content belongs
    /// there).
    ///
    /// [`Resolved::key`]: crate::routing::Resolved::key
    pub repo: String,
    /// Who started it: its turn for a fetch slot is this origin's.
    pub origin: Origin,
    /// The cluster peer that owns the digest, when the bytes are to come
    /// from it (decided when the fetch starts; never for a peer's request).
    pub via_peer: Option<String>,
    /// The peer the bytes come from now (`via_peer` at first, its
    /// successor or the replica ahead after it died; none once they come
    /// from the upstream or the shared tier), every peer whose bytes the
    /// spool took, and the lie reports about them.
    sources: Sources,
    progress: watch::Sender<Progress>,
    file: OnceLock<Arc<File>>,
    /// The file mapped for reading, once its size is known (shared by
    /// every reader of this fetch).
    mapped: OnceLock<Option<super::mapping::Mapping>>,
    /// The last frames written, by offset: followers close behind the
    /// writer take them from here instead of reading the file.
    window: std::sync::Mutex<Window>,
    pub started: std::time::Instant,
    /// Clients reading this fetch now (not the shared-tier upload).
    clients: std::sync::atomic::AtomicUsize,
    /// Woken when the last client leaves.
    left: tokio::sync::Notify,
    /// The peers this blob is being sent to, which its upstream read
    /// keeps up with (see `pace.rs`; the coordinator's, shared with every
    /// peer stream of the digest).
    pub(super) pace: super::pace::Pace,
}

/// Counts one client of a fetch for as long as it lives (see
/// [`Flight::client`]).
#[derive(Debug)]
pub struct ClientGuard {
    flight: Arc<Flight>,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        if self.flight.clients.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.flight.left.notify_waiters();
        }
    }
}

/// At most this many bytes of recent frames are kept per fetch.
const WINDOW_BYTES: usize = 2 << 20;

#[derive(Debug, Default)]
struct Window {
    frames: std::collections::VecDeque<(u64, bytes::Bytes)>,
    bytes: usize,
}

impl Flight {
    pub fn new(digest: Digest, repo: String, origin: Origin) -> Flight {
        Flight {
            digest,
            repo,
            origin,
            via_peer: None,
            sources: Sources::default(),
            progress: watch::Sender::new(Progress::Connecting),
            file: OnceLock::new(),
            mapped: OnceLock::new(),
            window: Default::default(),
            started: std::time::Instant::now(),
            clients: Default::default(),
            left: tokio::sync::Notify::new(),
            pace: Default::default(),
        }
    }

    /// The state now.
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Readers currently following this fetch.
    pub fn readers(&self) -> usize {
        self.progress.receiver_count()
    }

    /// Counts a client of this fetch until the guard drops. Clients are
    /// the requests (and prefetches) reading it; the shared-tier upload is
    /// not one: a download only it reads is deserted.
    pub(super) fn client(self: &Arc<Self>) -> ClientGuard {
        self.clients
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ClientGuard {
            flight: self.clone(),
        }
    }

    /// Marks this fetch as filled from `peer` (set before it starts).
    pub(super) fn fill_from(&mut self, peer: String) {
        self.sources.set(&peer, false);
        self.via_peer = Some(peer);
    }

    /// The bytes come from `peer` now (a dead owner's successor).
    pub(super) fn now_from(&self, peer: &str) {
        self.sources.set(peer, false);
    }

    /// The bytes come from `peer` now, up to a byte it already has: this
    /// replica, the blob's new owner, takes what a replica ahead of it has
    /// before it goes on from the upstream.
    pub(super) fn catching_up_from(&self, peer: &str) {
        self.sources.set(peer, true);
    }

    /// Whether this fill waits on `peer` for bytes `peer` may not have yet:
    /// a request from `peer` must then not wait on this fill (each would
    /// wait on the other). A fill catching up from `peer` takes only bytes
    /// `peer` has: `peer` may wait on it.
    pub(super) fn waits_on(&self, peer: crate::routing::PeerId) -> bool {
        self.sources.waits_on(peer)
    }

    /// The peer the bytes come from now, if they come from one.
    pub fn source(&self) -> Option<String> {
        self.sources.now()
    }

    /// The peers this blob is being sent to now (as the owner or a relay).
    pub fn peers_sent_to(&self) -> usize {
        self.pace.children()
    }

    /// The fill's first bytes are about to be written: readers see it
    /// streaming (`size` announced). Refused with
    /// [`FetchFailure::PeerLied`] when the peer it takes them from was
    /// reported lying after its answer was taken: nothing of it is shown to
    /// a reader, whose request then starts a fresh fill. Decided under the
    /// same lock as [`Flight::lie_reported`], so a report lands either
    /// before (refused here) or after (the fill is poisoned).
    pub(super) fn begin(&self, size: Option<u64>) -> Result<(), FetchFailure> {
        self.sources
            .begin(|| self.publish(Progress::Streaming { size, written: 0 }))
            .map_err(|peer| FetchFailure::PeerLied { peer })
    }

    /// Another replica caught `peer` lying about this blob: a fill whose
    /// spool took its bytes is poisoned (it ends instead of running to its
    /// own digest check, and is not joined), one that took its answer does
    /// not start, and a move to it later poisons the fill, so a client that
    /// retries here starts a fresh fill rather than joining a doomed one.
    pub(super) fn lie_reported(&self, peer: &str) -> LieReport {
        self.sources.lie_reported(peer)
    }

    /// Whether this download failed because a peer it came from sent bytes
    /// that are not the blob (caught here or by another replica).
    pub(super) fn lost_to_a_peer_lie(&self) -> bool {
        match self.progress() {
            Progress::Failed(f) => match &*f {
                FetchFailure::PeerLied { .. } => true,
                FetchFailure::DigestMismatch { .. }
                | FetchFailure::LengthMismatch { .. }
                | FetchFailure::Endless { .. } => self.via_peer.is_some(),
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether bytes of a peer reported lying are in this fill: it is
    /// dying, and is not joined.
    pub(super) fn is_poisoned(&self) -> bool {
        self.sources.is_poisoned()
    }

    /// The peer reported lying whose bytes poisoned this fill, if one did.
    pub(super) fn poisoned_by(&self) -> Option<String> {
        self.sources.poisoned_by()
    }

    /// Resolves once the fill is poisoned (at once when it is).
    pub(super) async fn poisoned(&self) {
        self.sources.poisoned().await
    }

    /// The fetch turned from the peer to the upstream.
    pub(super) fn left_peer(&self) {
        self.sources.clear();
    }

    /// One of `slots` (a registry's fetch slots, or its peer fill slots)
    /// for this download, counted in `queued` while it waits, or `None`
    /// when every client left first (it is then dropped before it costs a
    /// request).
    pub(super) async fn slot(
        &self,
        slots: &std::sync::Arc<crate::routing::FetchSlots>,
        queued: &prometheus_client::metrics::gauge::Gauge,
    ) -> Option<crate::routing::FetchPermit> {
        tokio::select! {
            p = slots.acquire(self.origin, queued) => Some(p),
            () = self.deserted() => None,
        }
    }

    /// Clients reading this fetch now.
    pub fn clients(&self) -> usize {
        self.clients.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once no client reads this fetch (at once when none does).
    pub(super) async fn deserted(&self) {
        loop {
            let left = self.left.notified();
            tokio::pin!(left);
            left.as_mut().enable();
            if self.clients() == 0 {
                return;
            }
            left.await;
        }
    }

    /// The temp file (or stored file) readers read from; set before the
    /// state leaves `Connecting`.
    pub fn file(&self) -> Option<Arc<File>> {
        self.file.get().cloned()
    }

    /// The first `size` bytes of the file, memory-mapped; `None` when
    /// there is no file yet or it cannot be mapped (readers use `pread`).
    pub(super) fn mapping(&self, size: u64) -> Option<super::mapping::Mapping> {
        let file = self.file()?;
        self.mapped
            .get_or_init(|| super::mapping::map(&file, size))
            .clone()
    }

    /// Keeps frames just written at `offset` (in order) for followers,
    /// dropping the oldest beyond the window's size.
    pub(super) fn remember(&self, mut offset: u64, frames: &[bytes::Bytes]) {
        let mut w = self.window.lock().expect("window lock");
        for f in frames {
            w.bytes += f.len();
            w.frames.push_back((offset, f.clone()));
            offset += f.len() as u64;
        }
        while w.bytes > WINDOW_BYTES {
            let Some((_, old)) = w.frames.pop_front() else {
                break;
            };
            w.bytes -= old.len();
        }
    }

    /// The bytes from `pos` (up to `limit`, within one frame) if they are
    /// still in the window.
    pub(super) fn recent(&self, pos: u64, limit: u64) -> Option<bytes::Bytes> {
        let w = self.window.lock().expect("window lock");
        let i = w.frames.partition_point(|(o, b)| o + b.len() as u64 <= pos);
        let (o, b) = w.frames.get(i)?;
        if *o > pos || pos >= limit {
            return None;
        }
        let from = (pos - o) as usize;
        let to = ((limit - o) as usize).min(b.len());
        Some(b.slice(from..to))
    }

    /// Lets go of the window (the fetch ended).
    pub(super) fn forget_window(&self) {
        let mut w = self.window.lock().expect("window lock");
        w.frames.clear();
        w.bytes = 0;
    }

    pub(super) fn set_file(&self, file: Arc<File>) {
        let _ = self.file.set(file);
    }

    pub(super) fn publish(&self, p: Progress) {
        self.progress.send_replace(p);
    }

    pub(super) fn is_final(&self) -> bool {
        matches!(
            *self.progress.borrow(),
            Progress::Done { .. } | Progress::Failed(_)
        )
    }
}
