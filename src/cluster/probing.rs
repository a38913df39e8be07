//! Keeping the membership fresh: the peer list again from DNS, this
//! replica found among it, and every peer's `/readyz` asked every
//! `probeInterval` (at most `peerTimeout`), with the routing fingerprints
//! it sends compared to this replica's.

use prometheus_client::metrics::gauge::Gauge;

use super::membership;
use super::state::Cluster;
use crate::config::PeerSource;
use crate::metrics::PeerLabels;
use crate::routing::fingerprint::{self, Fingerprints};
use http::Request;
use http_body_util::Full;

impl Cluster {
    /// Keeps the membership fresh until dropped: resolves `dns` every
    /// `dnsInterval`, finds this replica among the peers, and probes every
    /// peer's `/readyz` every `probeInterval`. `live` shows the live peers.
    pub async fn run(&self, live: Gauge) {
        let mut probes = tokio::time::interval(self.config.probe_interval);
        probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resolved = tokio::time::Instant::now();
        self.refresh().await;
        loop {
            probes.tick().await;
            if resolved.elapsed() >= self.config.dns_interval {
                self.refresh().await;
                resolved = tokio::time::Instant::now();
            }
            let peers = self.members.peers();
            let answers =
                futures::future::join_all(peers.iter().map(|p| self.probe(&p.addr))).await;
            for (p, answer) in peers.iter().zip(answers) {
                let ready = answer.is_some();
                if self.members.mark(&p.addr, ready) {
                    match ready {
                        true => tracing::info!(peer = %p.addr, "cluster peer ready"),
                        false => tracing::warn!(peer = %p.addr, "cluster peer not ready; left out"),
                    }
                }
                // A peer that sent no fingerprints (an older ferry) is taken
                // as routing alike.
                if let Some((theirs, zone)) = answer {
                    let theirs = theirs.unwrap_or_else(|| self.routing.clone());
                    self.compare_routing(&p.addr, &theirs);
                    self.members.set_zone(&p.addr, zone);
                }
            }
            live.set(self.members.live().len() as i64);
        }
    }

    /// The peer list again (DNS), and this replica's place in it.
    async fn refresh(&self) {
        let all = match &self.config.peers {
            PeerSource::Static(list) => list.clone(),
            PeerSource::Dns { name, port } => {
                match tokio::net::lookup_host((name.as_str(), *port)).await {
                    Ok(addrs) => {
                        let mut list: Vec<String> = addrs.map(|a| a.to_string()).collect();
                        list.sort();
                        list.dedup();
                        list
                    }
                    Err(e) => {
                        tracing::warn!(dns = %name, error = %e, "cannot resolve the cluster's peers; keeping the last list");
                        return;
                    }
                }
            }
        };
        if self.me().is_none() {
            match membership::find_self(&all, self.listen).await {
                Some(me) => {
                    tracing::info!(me = %me, "found this replica among the cluster's peers");
                    self.members.set_me(me);
                }
                None => tracing::warn!(listen = %self.listen,
                    "this replica is not among the cluster's peers (set ferry.cluster.self); it asks its peers but owns nothing"),
            }
        }
        self.members.set_peers(&all);
    }

    /// Whether `peer` answers `/readyz` with 200 in time (`None` if not),
    /// with the routing fingerprints and the zone it sent, if any.
    async fn probe(&self, peer: &str) -> Option<(Option<Fingerprints>, Option<String>)> {
        let req = Request::get(format!("{}://{peer}/readyz", self.scheme))
            .body(Full::default())
            .ok()?;
        // A probe that takes longer than `peerTimeout` counts as a failure:
        // a peer that freezes is out of the ring within `probeInterval` +
        // `peerTimeout`, and every wait on it ends then (`left_out`).
        let timeout = self.config.peer_timeout;
        let answer = tokio::time::timeout(timeout, self.client.request(req)).await;
        match answer {
            Ok(Ok(r)) if r.status().is_success() => {
                let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok());
                let routing = header(fingerprint::HEADER).and_then(Fingerprints::decode);
                let zone = header(super::tree::ZONE).map(str::to_string);
                Some((routing, zone))
            }
            _ => None,
        }
    }

    /// This replica's routing fingerprints, for its `/readyz`.
    pub fn routing(&self) -> &Fingerprints {
        &self.routing
    }

    /// Leaves `peer` out for the registries it routes otherwise than this
    /// replica (`theirs`, from its probe); a change is logged and counted.
    fn compare_routing(&self, peer: &str, theirs: &Fingerprints) {
        let differ = self.routing.differing(theirs);
        let labels = PeerLabels {
            peer: peer.to_string(),
        };
        let count = differ.len() as i64;
        let list: Vec<&str> = differ.iter().map(String::as_str).collect();
        let list = list.join(", ");
        if self.members.set_routes_differ(peer, differ) {
            self.metrics
                .routing_differs
                .get_or_create(&labels)
                .set(count);
            match count {
                0 => tracing::info!(
                    peer,
                    "cluster peer routes every registry as this replica does"
                ),
                _ => tracing::warn!(peer, registries = %list,
                    "cluster peer routes these registries otherwise than this replica (another config?); left out for them"),
            }
        }
    }
}
