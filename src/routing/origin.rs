//! [`Origin`]: on whose behalf a request is served, held once — by the
//! routed request ([`super::Resolved::origin`]) and by the download it
//! starts. It decides two things: whose turn a fetch slot is (fair between
//! the clients behind it), and whether what the request needs may be asked
//! of a cluster peer (never for a peer's own request: no loops).

use std::net::{IpAddr, Ipv4Addr};

/// Who a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A client of this replica, by address; ferry's own background work
    /// (prefetch, sync) is the unspecified address, one requester for all.
    Client(IpAddr),
    /// Another replica of the cluster, filling its own store for its client
    /// `client` (a signed peer request): fetched or revalidated here, never
    /// passed on to a peer again. `from` is the sending replica.
    Peer { client: IpAddr, from: PeerId },
}

/// A cluster peer, by its name (`host:port`) hashed: small and `Copy`, to
/// tell whether a peer request comes from the very peer a download waits
/// on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId(u64);

impl PeerId {
    pub fn of(name: &str) -> PeerId {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        PeerId(h.finish())
    }
}

impl Origin {
    /// ferry itself (prefetch, sync).
    pub fn background() -> Origin {
        Origin::Client(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    pub fn is_peer(&self) -> bool {
        matches!(self, Origin::Peer { .. })
    }

    /// The sending replica, for a peer's request.
    pub fn peer(&self) -> Option<PeerId> {
        match *self {
            Origin::Peer { from, .. } => Some(from),
            Origin::Client(_) => None,
        }
    }

    /// The client's address (unspecified for ferry's own work), whichever
    /// replica it came through.
    pub fn addr(&self) -> IpAddr {
        match *self {
            Origin::Client(addr) | Origin::Peer { client: addr, .. } => addr,
        }
    }
}
