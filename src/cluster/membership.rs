//! Who is in the cluster and who answers: the peer list (static, or from
//! DNS), this replica's own name among them, and each peer's liveness.
//!
//! A peer is assumed live until a probe (`GET /readyz`, every
//! `probeInterval`) or a fill says otherwise. A probe that fails leaves it
//! out until a probe finds it ready again; a draining peer answers
//! `/readyz` with 503 and so leaves the ring before it stops. A fill that
//! fails (refused, timed out, broken, too slow, bytes that are not the
//! blob) leaves it out at once and for a while that doubles with every
//! failure in a row ([`Members::fail`]): no probe brings it back before
//! then, so a peer that lies is not trusted again on its next good probe.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::RwLock;
use std::time::Duration;

use tokio::time::Instant;

/// How long the first failure of a fill leaves a peer out; each further
/// failure in a row doubles it, up to [`FAILED_OUT_MAX`].
pub const FAILED_OUT: Duration = Duration::from_secs(5);

/// The longest a failing peer is left out before a probe may restore it.
pub const FAILED_OUT_MAX: Duration = Duration::from_secs(300);

/// One peer as this replica sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub addr: String,
    pub live: bool,
    /// Why it was last left out (`not ready` for a failed probe).
    pub reason: Option<&'static str>,
    /// Fills from it that failed in a row.
    pub failures: u32,
    /// Until when a good probe does not restore it.
    pub out_until: Option<Instant>,
    /// The registries it routes differently from this replica (by its
    /// last probe's fingerprints): it is out of the ring for those.
    pub routes_differ: BTreeSet<String>,
    /// Its zone, as its last probe said (`ferry.cluster.zone`).
    pub zone: Option<String>,
}

impl PeerState {
    fn new(addr: &str) -> PeerState {
        PeerState {
            addr: addr.to_string(),
            live: true,
            reason: None,
            failures: 0,
            out_until: None,
            routes_differ: BTreeSet::new(),
            zone: None,
        }
    }
}

#[derive(Debug, Default)]
pub struct Members {
    /// This replica's own `host:port`, once known.
    me: RwLock<Option<String>>,
    /// Every other peer.
    peers: RwLock<Vec<PeerState>>,
    /// Bumped on every change of a peer's state, for waits that end when
    /// their peer leaves ([`Members::changes`]).
    changes: tokio::sync::watch::Sender<u64>,
}

impl Members {
    pub fn new(me: Option<String>) -> Members {
        Members {
            me: RwLock::new(me),
            peers: RwLock::default(),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    pub fn me(&self) -> Option<String> {
        self.me.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_me(&self, me: String) {
        *self.me.write().unwrap_or_else(|e| e.into_inner()) = Some(me);
    }

    /// Replaces the peer list (it may name this replica: left out). A peer
    /// already known keeps its state; a new one starts live.
    pub fn set_peers(&self, all: &[String]) {
        let me = self.me();
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        let mut next: Vec<PeerState> = Vec::new();
        for addr in all {
            if Some(addr) == me.as_ref() || next.iter().any(|p| &p.addr == addr) {
                continue;
            }
            let known = peers.iter().find(|p| &p.addr == addr).cloned();
            next.push(known.unwrap_or_else(|| PeerState::new(addr)));
        }
        let changed = *peers != next;
        *peers = next;
        drop(peers);
        if changed {
            // A peer that left the list ends the waits on it.
            self.changed();
        }
    }

    /// Wakes on every change of a peer's state.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether `addr` is a peer in the ring now.
    pub fn is_live(&self, addr: &str) -> bool {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        peers.iter().any(|p| p.addr == addr && p.live)
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Records what a readiness probe of `addr` found; true when that
    /// changed its state. A ready peer still serving a fill failure's time
    /// out stays out.
    pub fn mark(&self, addr: &str, live: bool) -> bool {
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        let Some(p) = peers.iter_mut().find(|p| p.addr == addr) else {
            return false;
        };
        if live && p.out_until.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let changed = p.live != live;
        p.live = live;
        if live {
            (p.reason, p.out_until) = (None, None);
        } else if changed {
            p.reason = Some("not ready");
        }
        drop(peers);
        if changed {
            self.changed();
        }
        changed
    }

    /// A fill from `addr` failed for `reason`: it is left out at once, for
    /// [`FAILED_OUT`] doubled by each failure in a row before this one.
    /// Returns how long, or `None` for an unknown peer.
    pub fn fail(&self, addr: &str, reason: &'static str) -> Option<Duration> {
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        let p = peers.iter_mut().find(|p| p.addr == addr)?;
        let out = FAILED_OUT
            .saturating_mul(1 << p.failures.min(16))
            .min(FAILED_OUT_MAX);
        p.failures = p.failures.saturating_add(1);
        p.live = false;
        p.reason = Some(reason);
        p.out_until = Some(Instant::now() + out);
        drop(peers);
        self.changed();
        Some(out)
    }

    /// A fill from `addr` succeeded: its failures in a row are forgotten.
    pub fn succeeded(&self, addr: &str) {
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = peers.iter_mut().find(|p| p.addr == addr) {
            p.failures = 0;
        }
    }

    /// The live peers, this replica not included.
    pub fn live(&self) -> Vec<String> {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        peers
            .iter()
            .filter(|p| p.live)
            .map(|p| p.addr.clone())
            .collect()
    }

    /// The live peers that route `registry` as this replica does.
    pub fn live_for(&self, registry: &str) -> Vec<String> {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        peers
            .iter()
            .filter(|p| p.live && !p.routes_differ.contains(registry))
            .map(|p| p.addr.clone())
            .collect()
    }

    /// Records the registries `addr` routes differently (from its probe);
    /// returns whether that changed.
    pub fn set_routes_differ(&self, addr: &str, differ: BTreeSet<String>) -> bool {
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        let Some(p) = peers.iter_mut().find(|p| p.addr == addr) else {
            return false;
        };
        if p.routes_differ == differ {
            return false;
        }
        p.routes_differ = differ;
        drop(peers);
        self.changed();
        true
    }

    /// Records the zone `addr` sent with its readiness.
    pub fn set_zone(&self, addr: &str, zone: Option<String>) {
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = peers.iter_mut().find(|p| p.addr == addr) {
            p.zone = zone;
        }
    }

    /// The zone of `addr`, as it last said.
    pub fn zone_of(&self, addr: &str) -> Option<String> {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        peers.iter().find(|p| p.addr == addr)?.zone.clone()
    }

    /// Every other peer with its state.
    pub fn peers(&self) -> Vec<PeerState> {
        self.peers.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// This replica among `peers`: the one on the listen port whose address is
/// the listen address, or (listening on every address) one of this host's
/// own addresses. Host names are resolved.
pub async fn find_self(peers: &[String], listen: SocketAddr) -> Option<String> {
    for p in peers {
        let Ok(addrs) = tokio::net::lookup_host(p.as_str()).await else {
            continue;
        };
        for a in addrs {
            if a.port() == listen.port() && is_mine(a.ip(), listen.ip()) {
                return Some(p.clone());
            }
        }
    }
    None
}

/// Whether `ip` reaches this process's listener on `listen_ip`.
fn is_mine(ip: IpAddr, listen_ip: IpAddr) -> bool {
    if !listen_ip.is_unspecified() {
        return ip == listen_ip;
    }
    // An address this host owns is one a socket can be bound to.
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_leaves_this_replica_out_and_keeps_known_states() {
        let m = Members::new(Some("a:1".into()));
        m.set_peers(&["a:1".into(), "b:1".into(), "c:1".into(), "b:1".into()]);
        assert_eq!(m.live(), ["b:1", "c:1"]);
        assert!(m.mark("b:1", false));
        assert!(!m.mark("b:1", false), "no change");
        assert_eq!(m.live(), ["c:1"]);
        m.set_peers(&["b:1".into(), "c:1".into(), "d:1".into()]);
        assert_eq!(m.live(), ["c:1", "d:1"], "b stays out until it answers");
        assert!(m.mark("b:1", true));
        assert_eq!(m.live(), ["b:1", "c:1", "d:1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fill_leaves_a_peer_out_longer_each_time_whatever_its_probes_say() {
        let m = Members::new(Some("a:1".into()));
        m.set_peers(&["a:1".into(), "b:1".into()]);
        assert_eq!(m.fail("b:1", "digest"), Some(FAILED_OUT));
        assert!(m.live().is_empty(), "out at once");
        assert!(!m.mark("b:1", true), "a good probe does not restore it yet");
        assert_eq!(m.peers()[0].reason, Some("digest"));
        tokio::time::advance(FAILED_OUT).await;
        assert!(m.mark("b:1", true), "restored once its time is served");
        assert_eq!(m.live(), ["b:1"]);
        // Failing again in a row: twice as long.
        assert_eq!(m.fail("b:1", "timeout"), Some(2 * FAILED_OUT));
        tokio::time::advance(FAILED_OUT).await;
        assert!(!m.mark("b:1", true));
        tokio::time::advance(FAILED_OUT).await;
        assert!(m.mark("b:1", true));
        // A fill that worked forgets the failures; the bound holds.
        m.succeeded("b:1");
        assert_eq!(m.fail("b:1", "refused"), Some(FAILED_OUT));
        for _ in 0..20 {
            m.fail("b:1", "refused");
        }
        assert_eq!(m.fail("b:1", "refused"), Some(FAILED_OUT_MAX));
        assert_eq!(m.fail("z:1", "refused"), None, "not a peer");
    }

    #[tokio::test]
    async fn this_replica_is_found_by_its_port_and_address() {
        let listen: SocketAddr = "127.0.0.1:5123".parse().unwrap();
        let peers = ["127.0.0.1:5000".to_string(), "127.0.0.1:5123".to_string()];
        assert_eq!(
            find_self(&peers, listen).await.as_deref(),
            Some("127.0.0.1:5123")
        );
        let everywhere: SocketAddr = "0.0.0.0:5123".parse().unwrap();
        let peers = ["192.0.2.1:5123".to_string(), "localhost:5123".to_string()];
        assert_eq!(
            find_self(&peers, everywhere).await.as_deref(),
            Some("localhost:5123")
        );
        assert_eq!(
            find_self(&peers[..1], everywhere).await,
            None,
            "not an address of this host"
        );
    }
}
