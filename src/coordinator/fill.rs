//! The one envelope every source of a blob goes through: the shared tier,
//! the cluster peer that owns the digest, and the upstream.
//!
//! A source is opened first ([`super::fetch`] picks which, in order); what
//! it yields is an [`Opened`]: a body, what it announces of its length, and
//! what the source needs to be resumed or blamed. [`fill`] then does the
//! rest the same way for all of them: the room in the store, the transfer
//! into the spool (which verifies and publishes), the index, the
//! membership of the blob in its repository, and what happens to a source
//! that sent bytes that are not the blob. A new source (the fan-out relay)
//! is one more variant here, not a fourth copy of this envelope.
//!
//! The other shared step, waiting for a slot, is [`Flight::slot`] (the
//! transfer takes one itself when a peer's bytes give way to the
//! upstream's).

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use http::Response;
use hyper::body::Incoming;

use super::flight::{FetchFailure, Flight};
use super::state::Coordinator;
use super::transfer::{self, Source};
use crate::lifecycle::{Reservation, Space};
use crate::oci::RepoName;
use crate::routing::{FetchPermit, Resolved, Target};
use crate::upstream::headers::content_length;

/// A source that answered, ready to be moved into the spool.
pub(super) enum Opened<'a> {
    /// The shared tier's copy: exactly `size` bytes, no resume.
    Shared {
        body: BoxStream<'static, std::io::Result<Bytes>>,
        size: u64,
    },
    /// The owning peer's `200` with a length (or its successor's, when it
    /// died: then possibly a `206` of the rest); if it breaks, the rest
    /// comes from the digest's next owner or the upstream of `target`.
    Peer {
        name: String,
        /// The repository as this replica names it (for a next owner).
        local: &'a RepoName,
        resp: Response<Incoming>,
        target: &'a Target,
        permit: FetchPermit,
    },
    /// The upstream's `200`, resumed there with a `Range` if it breaks.
    Upstream {
        resp: Response<Incoming>,
        target: &'a Target,
        permit: FetchPermit,
    },
}

impl Opened<'_> {
    /// The length the source announced, if it did.
    fn size(&self) -> Option<u64> {
        match self {
            Opened::Shared { size, .. } => Some(*size),
            Opened::Peer { resp, .. } | Opened::Upstream { resp, .. } => {
                content_length(resp.headers())
            }
        }
    }

    /// The source, for the log line of a finished fetch.
    pub(super) fn describe(&self) -> String {
        match self {
            Opened::Shared { .. } => "shared".into(),
            Opened::Peer { name, .. } => format!("peer {name}"),
            Opened::Upstream { target, .. } => target.registry.name.clone(),
        }
    }
}

/// Moves an opened source into the store: room, transfer, verification and
/// publish (the spool's), index, membership, and blame for bad bytes.
/// Returns the verified size.
pub(super) async fn fill(
    coordinator: &Arc<Coordinator>,
    flight: &Arc<Flight>,
    repo: &Resolved,
    opened: Opened<'_>,
) -> Result<u64, FetchFailure> {
    let digest = &flight.digest;
    let _room = room_for(&coordinator.lifecycle.space, opened.size().unwrap_or(0))?;
    let metrics = &coordinator.metrics;
    // What the fill links the blob to, and who is to blame for bad bytes.
    let (result, linked, blame) = match opened {
        Opened::Shared { body, size } => {
            let shared = coordinator
                .shared
                .as_ref()
                .expect("a shared source has a tier");
            let timeouts = bucket_timeouts(repo);
            let source = format!("{} ({digest})", shared.describe());
            let counted = &metrics.shared_read_bytes;
            let copied =
                transfer::copy(coordinator, flight, body, size, &source, &timeouts, counted).await;
            (copied, None, Blame::Bucket)
        }
        Opened::Peer {
            name,
            local,
            resp,
            target,
            permit,
        } => {
            let source = Source::Peer {
                name: &name,
                local,
                counted: &metrics.cluster.peer_bytes,
            };
            let (result, peers) =
                transfer::upstream(coordinator, flight, target, resp, &permit, source).await;
            (result, Some(target), Blame::Peers(peers))
        }
        Opened::Upstream {
            resp,
            target,
            permit,
        } => {
            let source = Source::Upstream;
            let (result, _) =
                transfer::upstream(coordinator, flight, target, resp, &permit, source).await;
            (result, Some(target), Blame::Upstream)
        }
    };
    match (&result, blame) {
        (Ok(size), blame) => {
            if let (Blame::Peers(peers), Some(cluster)) = (blame, coordinator.cluster.as_ref()) {
                if let Some(last) = peers.finished_by() {
                    cluster.succeeded(last);
                }
            }
            coordinator
                .lifecycle
                .stored(digest, *size, &coordinator.clock);
            if let Some(target) = linked {
                coordinator.link(target, vec![digest.clone()]).await;
            }
        }
        (Err(e), Blame::Peers(peers)) if is_bad_bytes(e) => {
            // A peer that lies is left out at once, and its next good probe
            // does not bring it back (see `Cluster::fail`); the clients'
            // retries go upstream meanwhile. When the bytes came from an
            // owner and its successor, which lied cannot be told: both.
            for name in peers.sent() {
                tracing::warn!(%digest, peer = name, error = %e, "peer sent bytes that are not the blob");
                if let Some(cluster) = coordinator.cluster.as_ref() {
                    cluster.fail(name, "lied");
                }
            }
            // One peer sent it all (to the end, no upstream bytes between):
            // it is the liar, and the other replicas
            // filling from it are told before this replica's own clients
            // learn of the failure (and retry, perhaps on one of them), so
            // their fills end now too. A slow peer does not hold the
            // clients for long.
            let sole = match peers.sent_list() {
                [liar] if peers.finished_by() == Some(liar.as_str()) => Some(liar),
                _ => None,
            };
            if let (Some(cluster), Some(liar)) = (&coordinator.cluster, sole) {
                let told = cluster.tell_lied(liar, digest);
                let _ = tokio::time::timeout(TELL_LIED_WITHIN, told).await;
            }
        }
        (Err(e), Blame::Bucket) if is_bad_bytes(e) => {
            // Damaged in the bucket: delete it, so the next request
            // fetches from upstream (and uploads a good copy).
            if let Some(shared) = coordinator.shared.clone() {
                let d = digest.clone();
                tracing::warn!(digest = %d, store = shared.describe(), "shared blob is damaged; deleting it");
                tokio::spawn(async move { shared.delete_blob(&d).await });
            }
        }
        // The upstream's bad bytes fail the fetch; the next request asks
        // it again.
        _ => {}
    }
    result
}

/// How long a fill that caught a liar waits for the other replicas to be
/// told before it fails its own clients.
const TELL_LIED_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);

/// Who sent the bytes of a fill, and so what is done when they are not
/// the blob.
enum Blame {
    Bucket,
    Peers(transfer::PeerTrail),
    Upstream,
}

/// True when a source's bytes were not the blob (wrong digest, wrong or
/// endless length): the source is at fault, not the network.
fn is_bad_bytes(e: &FetchFailure) -> bool {
    matches!(
        e,
        FetchFailure::DigestMismatch { .. }
            | FetchFailure::LengthMismatch { .. }
            | FetchFailure::Endless { .. }
    )
}

/// Whether the store can take a fill at all: not after a failed write
/// (read-only, permissions, I/O error), not below `minFreeSpace`. Either
/// way the blob is served uncached.
pub(super) fn writable(space: &Space) -> Result<(), FetchFailure> {
    if let Some(e) = space.write_failure() {
        return Err(FetchFailure::Unwritable(format!(
            "a write failed recently: {e}"
        )));
    }
    if space.reserve(0).is_none() {
        return Err(FetchFailure::NoRoom(format!(
            "the store's filesystem is below minFreeSpace ({} bytes available)",
            space.probe().available()
        )));
    }
    Ok(())
}

/// Reserves room for `size` bytes in the store, or says why there is none.
fn room_for(space: &Space, size: u64) -> Result<Reservation, FetchFailure> {
    space.reserve(size).ok_or_else(|| {
        FetchFailure::NoRoom(format!(
            "{size} bytes do not fit ({} bytes available)",
            space.probe().available()
        ))
    })
}

/// What a read from the shared tier is held to: the same idle timeout as
/// the repository's first registry, and no rate floor (a slow bucket has no
/// upstream to resume from).
pub(super) fn bucket_timeouts(repo: &Resolved) -> crate::config::Timeouts {
    let mut timeouts = repo
        .targets
        .first()
        .map(|t| t.registry.upstream.timeouts())
        .unwrap_or_default();
    timeouts.min_read_rate = 0;
    timeouts
}
