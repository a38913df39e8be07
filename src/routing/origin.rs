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
    /// passed on to a peer again.
    Peer { client: IpAddr },
}

impl Origin {
    /// ferry itself (prefetch, sync).
    pub fn background() -> Origin {
        Origin::Client(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    pub fn is_peer(&self) -> bool {
        matches!(self, Origin::Peer { .. })
    }

    /// The client's address (unspecified for ferry's own work), whichever
    /// replica it came through.
    pub fn addr(&self) -> IpAddr {
        match *self {
            Origin::Client(addr) | Origin::Peer { client: addr } => addr,
        }
    }
}
