//! Who is in the cluster and who answers: the peer list (static, or from
//! DNS), this replica's own name among them, and each peer's liveness.
//!
//! A peer is assumed live until a probe (`GET /readyz`, every
//! `probeInterval`) or a fill says otherwise, and is left out from then on
//! until a probe finds it ready again. A draining peer answers `/readyz`
//! with 503 and so leaves the ring before it stops.

use std::net::{IpAddr, SocketAddr};
use std::sync::RwLock;

/// One peer as this replica sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub addr: String,
    pub live: bool,
}

#[derive(Debug, Default)]
pub struct Members {
    /// This replica's own `host:port`, once known.
    me: RwLock<Option<String>>,
    /// Every other peer.
    peers: RwLock<Vec<PeerState>>,
}

impl Members {
    pub fn new(me: Option<String>) -> Members {
        Members {
            me: RwLock::new(me),
            peers: RwLock::default(),
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
            let live = peers
                .iter()
                .find(|p| &p.addr == addr)
                .is_none_or(|p| p.live);
            next.push(PeerState {
                addr: addr.clone(),
                live,
            });
        }
        *peers = next;
    }

    /// Records whether `addr` answered; true when that changed its state.
    pub fn mark(&self, addr: &str, live: bool) -> bool {
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        match peers.iter_mut().find(|p| p.addr == addr) {
            Some(p) if p.live != live => {
                p.live = live;
                true
            }
            _ => false,
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
