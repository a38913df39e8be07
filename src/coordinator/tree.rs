//! The fan-out tree, the coordinator's side: a replica sends a blob to at
//! most `fanout` peers at a time, and points further askers to one of
//! those peers, which relays the blob from its own download.
//!
//! With one owner per blob, a hundred replicas asking for one cold layer
//! would make the owner send a hundred copies. Here the owner sends at
//! most `fanout`; an asker beyond that gets a signed `307` naming a relay
//! ([`crate::cluster::tree::RELAY`]): one of the peers the blob is being
//! sent to, pointed to the fewest times, then furthest ahead. The relay
//! serves it exactly as it serves a client — from its own download, as the
//! bytes arrive — and points on in its turn when it feeds `fanout` peers
//! itself. So the tree's width is bounded at every replica, its depth by
//! [`crate::cluster::tree::MAX_DEPTH`], and it has no cycle: a replica
//! only points to peers it is sending the blob to, never to one that
//! pointed the request on ([`crate::routing::Hops`]), and a replica that
//! asks again after its relay failed asks with nothing below it reachable
//! from there (its own download broke: nobody sends it anything).
//!
//! A relay never fetches a blob for the asker it was pointed to: one that
//! neither holds nor receives it answers `421`, and the asker asks the
//! owner to serve it itself (`direct`).

use crate::cluster::tree;
use crate::oci::Digest;
use crate::routing::{Origin, PeerId, Resolved};

use super::pace::{Counted, Tail};
use super::state::Coordinator;

/// Where a peer's request of a blob goes in the blob's tree.
pub(super) enum Placed {
    /// Not a peer's request (or no cluster): served as usual.
    Client,
    /// Served here, as one more child of the blob.
    Child(Tail),
    /// To be asked of the relay `to` instead (a signed `307`).
    Relay { to: String },
    /// Pointed here, but this replica neither holds nor receives the blob
    /// (a signed `421`; nothing is fetched for it).
    NotHere,
}

impl Coordinator {
    /// Places a peer's request of `digest`: a child of this replica while
    /// it sends the blob to fewer than `fanout` peers (checked and counted
    /// at once, so concurrent askers cannot overshoot), else
    /// [`Placed::Relay`] to one of them; [`Placed::NotHere`] when
    /// it was pointed here and this replica neither holds nor receives the
    /// blob. A request that may not be pointed on, or that no child may
    /// relay, is a child all the same. A child's place in the blob's pace
    /// starts at `start`, the first byte it asked for: a download must
    /// not wait for a peer at byte 0 that asked for bytes from where the
    /// download is (it would wait for itself until `peerTimeout`).
    pub(super) async fn place(&self, repo: &Resolved, digest: &Digest, start: u64) -> Placed {
        let (Origin::Peer { from, hops, .. }, Some(cluster)) = (repo.origin, &self.cluster) else {
            return Placed::Client;
        };
        if hops.depth > 0 && self.have(digest).await.is_none() {
            return Placed::NotHere;
        }
        let counted = Counted {
            bytes: self.metrics.cluster.peer_bytes_sent.clone(),
            streams: self.metrics.cluster.peer_streams.clone(),
        };
        let pace = self.paces.of(digest);
        if !tree::may_point_on(hops) {
            return Placed::Child(pace.tail(start, from, counted));
        }
        if let Some(tail) = pace.child_within(cluster.fanout(), start, from, counted.clone()) {
            return Placed::Child(tail);
        }
        // A relay must route the blob's registry as this replica does and
        // be live here; not the asker, not one that pointed it here.
        let live: Vec<(PeerId, String)> = match repo.targets.first() {
            Some(target) => cluster
                .live_for(&target.registry.name)
                .into_iter()
                .map(|name| (PeerId::of(&name), name))
                .collect(),
            None => Vec::new(),
        };
        let eligible =
            |p: PeerId| p != from && !hops.passed(p) && live.iter().any(|(id, _)| *id == p);
        // Relays in the asker's zone first (`ferry.cluster.zone`).
        let zone = cluster.zone_of_id(from);
        let near: Vec<PeerId> = match &zone {
            Some(z) => live
                .iter()
                .filter(|(_, name)| cluster.zone_of(name).as_ref() == Some(z))
                .map(|(id, _)| *id)
                .collect(),
            None => Vec::new(),
        };
        let to = pace
            .pick(eligible, |p| near.contains(&p))
            .and_then(|chosen| live.into_iter().find(|(id, _)| *id == chosen));
        match to {
            Some((_, to)) => {
                self.metrics.cluster.pointed.inc();
                tracing::debug!(%digest, relay = %to, depth = hops.depth, "pointing a peer to a relay");
                Placed::Relay { to }
            }
            None => Placed::Child(pace.tail(start, from, counted)),
        }
    }
}
