//! The cluster's metrics: bytes from peers beside upstream bytes, peer
//! requests each way, fills that went elsewhere and why, peers that
//! failed or route otherwise, downloads held for the peers they feed,
//! and the live peers. Labels are peers
//! (`host:port`, a handful per cluster) and fixed reasons.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::ReasonLabels;

/// A cluster peer (`host:port`, a handful per cluster).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

/// A cluster peer (`host:port`, a handful per cluster) and why it failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerReasonLabels {
    pub peer: String,
    pub reason: &'static str,
}

/// What the cluster does: bytes from peers beside upstream bytes, peer
/// requests each way, fills that fell back to the upstream and why, and
/// the live peers.
#[derive(Debug, Default, Clone)]
pub struct ClusterMetrics {
    /// Blob bytes received from peers.
    pub peer_bytes: Counter,
    /// Signed peer requests answered by this replica.
    pub requests_in: Counter,
    /// Requests that carried peer headers whose signature did not check
    /// out (another secret, a stale time, a copied path): answered as an
    /// anonymous client's.
    pub bad_signatures: Counter,
    /// Signed peer requests refused because this replica took the same
    /// request (time and nonce) before: a replay.
    pub replayed: Counter,
    /// Blob fills this replica asked of a peer.
    pub requests_out: Counter,
    /// Fills that went to the upstream instead (`unreachable`, `status`,
    /// `broken`: the peer's transfer broke and the rest came upstream).
    pub fallbacks: Family<ReasonLabels, Counter>,
    /// Fills whose owner died (before its answer or mid-transfer) that
    /// went on from the blob's next owner instead of the upstream.
    pub handovers: Counter,
    /// Fills that took what they lacked from a replica ahead of them after
    /// the owner died, before going on from the upstream.
    pub catch_ups: Counter,
    /// Other peers answering their readiness probe now.
    pub peers_live: Gauge,
    /// Fills from a peer that failed, by peer and reason (`refused`,
    /// `timeout`, `unreachable`, `length`, `broken`, `slow`, `lied`); each
    /// left the peer out of this replica's ring.
    pub peer_failures: Family<PeerReasonLabels, Counter>,
    /// Registries a peer routes otherwise than this replica (its routing
    /// fingerprint differs), by peer: it is out of the ring for those.
    pub routing_differs: Family<PeerLabels, Gauge>,
    /// Upstream downloads waiting now for the peers they feed to come
    /// within their lead (see `coordinator/pace.rs`).
    pub downloads_held: Gauge,
    /// Seconds upstream downloads spent waiting for the peers they feed.
    pub held_for_peers: Counter<f64, AtomicU64>,
    /// Peers a download stopped waiting for: they did not come within half
    /// its lead within `peerTimeout`.
    pub peers_let_go: Counter,
    /// Blob bytes sent to peers (as owner or relay).
    pub peer_bytes_sent: Counter,
    /// Blob streams to peers open now.
    pub peer_streams: Gauge,
    /// Peer requests this replica pointed to a relay (it sent the blob to
    /// `fanout` peers already).
    pub pointed: Counter,
    /// Fills this replica took from a relay it was pointed to.
    pub relayed: Counter,
}

impl ClusterMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "cluster_peer_bytes",
            "Blob bytes received from cluster peers",
            self.peer_bytes.clone(),
        );
        registry.register(
            "cluster_requests_in",
            "Signed peer requests answered",
            self.requests_in.clone(),
        );
        registry.register(
            "cluster_bad_signatures",
            "Requests with peer headers whose signature did not check out (answered as an anonymous client's)",
            self.bad_signatures.clone(),
        );
        registry.register(
            "cluster_replayed_requests",
            "Signed peer requests refused as sent before (a replay; answered as an anonymous client's)",
            self.replayed.clone(),
        );
        registry.register(
            "cluster_requests_out",
            "Blob fills asked of the owning peer",
            self.requests_out.clone(),
        );
        registry.register(
            "cluster_routing_differs",
            "Registries a cluster peer routes otherwise than this replica (left out for those), by peer",
            self.routing_differs.clone(),
        );
        registry.register(
            "cluster_catch_ups",
            "Fills that took what they lacked from a replica ahead of them after their owner died",
            self.catch_ups.clone(),
        );
        registry.register(
            "cluster_handovers",
            "Fills whose owner died that went on from the blob's next owner",
            self.handovers.clone(),
        );
        registry.register(
            "cluster_fallbacks",
            "Fills from a peer that went to the upstream instead, by reason",
            self.fallbacks.clone(),
        );
        registry.register(
            "cluster_downloads_held",
            "Upstream downloads waiting now for the peers they feed to come within their lead",
            self.downloads_held.clone(),
        );
        registry.register(
            "cluster_held_for_peers_seconds",
            "Time upstream downloads waited for the peers they feed to come within their lead",
            self.held_for_peers.clone(),
        );
        registry.register(
            "cluster_peers_let_go",
            "Peers an upstream download stopped waiting for (not within half its lead within peerTimeout)",
            self.peers_let_go.clone(),
        );
        registry.register(
            "cluster_peer_bytes_sent",
            "Blob bytes sent to cluster peers (as the owner or a relay)",
            self.peer_bytes_sent.clone(),
        );
        registry.register(
            "cluster_peer_streams",
            "Blob streams to cluster peers open now (as the owner or a relay)",
            self.peer_streams.clone(),
        );
        registry.register(
            "cluster_pointed",
            "Peer requests pointed to a relay (the blob was sent to fanout peers already)",
            self.pointed.clone(),
        );
        registry.register(
            "cluster_relayed",
            "Fills taken from a relay this replica was pointed to",
            self.relayed.clone(),
        );
        registry.register(
            "cluster_peers_live",
            "Other cluster peers answering their readiness probe",
            self.peers_live.clone(),
        );
        registry.register(
            "cluster_peer_failures",
            "Fills from a cluster peer that failed, by peer and reason (each left the peer out)",
            self.peer_failures.clone(),
        );
    }

    pub fn fell_back(&self, reason: &'static str) {
        self.fallbacks.get_or_create(&ReasonLabels { reason }).inc();
    }
}
