//! Opening the cluster peer that owns a blob (see [`crate::cluster`]) as
//! the source of a fill: a signed `GET` of the blob at the owner, whose
//! answer [`super::fill`] streams into the spool like an upstream's and
//! verifies the same way. The owner is trusted no more than an upstream:
//! its bytes must match the digest before anything is published.
//!
//! A fill holds one of its registry's fill slots
//! ([`crate::routing::PEER_FILLS`], fair between clients, given up when
//! deserted, charged to an orphan budget), never one of the registry's
//! fetch slots: the owner may need those for the very upstream fetch this
//! fill waits on, and with `maxFetchesPerRegistry` slots held by fills on
//! every replica, replicas waited on each other until the peer timeout
//! broke the circle.
//!
//! An owner that dies before its answer is survived once: its successor is
//! asked instead ([`super::ask::successor`]). Anything short of a good
//! start from a live owner (busy, a status other than 200, no length)
//! returns `None`, and the caller fetches from the upstream as if there
//! were no cluster.

use super::ask::{ask_owner, successor, Asked};
use super::fill::Opened;
use super::flight::{FetchFailure, Flight};
use super::state::Coordinator;
use crate::cluster::BlobAsk;
use crate::routing::Resolved;
use crate::upstream::UpstreamError;
use http::StatusCode;

/// The owner's answer, ready for [`fill::fill`]; `Ok(None)` when the
/// caller should go upstream instead.
pub(super) async fn open<'a>(
    coordinator: &Coordinator,
    flight: &Flight,
    repo: &'a Resolved,
    owner: &str,
) -> Result<Option<Opened<'a>>, FetchFailure> {
    let Some(target) = repo.targets.first() else {
        return Ok(None);
    };
    // Fill slots, never the registry's fetch slots: the owner may need
    // those for the upstream fetch this fill waits on.
    let Some(permit) = flight
        .slot(
            &target.registry.fill_slots,
            &coordinator.metrics.fetches_queued,
        )
        .await
    else {
        return Err(FetchFailure::Deserted);
    };
    let ask = BlobAsk {
        local: &repo.local,
        target,
        digest: &flight.digest,
    };
    let (name, resp) = match ask_owner(coordinator, flight, ask, owner, 0).await {
        Asked::Answered { from, resp } => {
            if from != owner {
                flight.now_from(&from);
            }
            (from, resp)
        }
        Asked::Elsewhere => return Ok(None),
        // The owner's upstream said 404 for the only registry the blob may
        // come from: that is the answer (with several candidates, the
        // next ones are still asked).
        Asked::NotFound if repo.targets.len() == 1 => {
            let url = target
                .registry
                .upstream
                .url(&target.blob_path(&flight.digest));
            return Err(FetchFailure::Upstream(UpstreamError::Status {
                url: format!("{url} (asked by peer {owner})"),
                status: StatusCode::NOT_FOUND,
            }));
        }
        Asked::NotFound => return Ok(None),
        Asked::Gone => match successor(coordinator, flight, ask, owner, 0).await {
            Some((next, resp, _)) => {
                flight.now_from(&next);
                (next, resp)
            }
            None => return Ok(None),
        },
    };
    Ok(Some(Opened::Peer {
        name,
        local: &repo.local,
        resp,
        target,
        permit,
    }))
}
