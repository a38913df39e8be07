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
    Peer {
        client: IpAddr,
        from: PeerId,
        hops: Hops,
    },
}

/// Where a peer's request for a blob stands in the blob's fan-out tree
/// (see `coordinator/tree.rs`): who pointed it on so far, and whether it
/// must be served by the replica it reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hops {
    /// The replicas that pointed it on, in order (the first `depth`): a
    /// replica never points it to one of them.
    pub via: [PeerId; MAX_HOPS],
    /// How many times it was pointed on.
    pub depth: u8,
    /// Serve it here: the asker was pointed on as far as it may go, or a
    /// relay failed it.
    pub direct: bool,
}

/// A request is pointed on at most this many times.
pub const MAX_HOPS: usize = 8;

impl Hops {
    /// The replicas that pointed it on.
    pub fn via(&self) -> &[PeerId] {
        &self.via[..(self.depth as usize).min(MAX_HOPS)]
    }

    /// Whether `peer` pointed this request on already.
    pub fn passed(&self, peer: PeerId) -> bool {
        self.via().contains(&peer)
    }

    /// Whether it may be pointed on once more.
    pub fn may_point_on(&self) -> bool {
        !self.direct && (self.depth as usize) < MAX_HOPS
    }

    /// The same request pointed on by `peer` (unchanged when it may not
    /// be: see [`Hops::may_point_on`]).
    pub fn through(self, peer: PeerId) -> Hops {
        if (self.depth as usize) >= MAX_HOPS {
            return self;
        }
        let mut next = self;
        next.via[self.depth as usize] = peer;
        next.depth += 1;
        next.direct = false;
        next
    }
}

/// A cluster peer, by its name (`host:port`) hashed: small and `Copy`, to
/// tell whether a peer request comes from the very peer a download waits
/// on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PeerId(u64);

impl PeerId {
    /// The id as it crosses the wire (in a peer request's hops).
    pub fn to_bits(self) -> u64 {
        self.0
    }

    pub fn from_bits(bits: u64) -> PeerId {
        PeerId(bits)
    }

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
