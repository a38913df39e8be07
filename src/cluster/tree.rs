//! The fan-out tree on the wire: how a peer request says where it stands
//! in a blob's tree ([`HOPS`]), and how a replica that feeds enough peers
//! already points an asker to one of them ([`RELAY`]).
//!
//! A replica sends one blob to at most `fanout` peers at a time; a further
//! asker gets a signed `307` naming one of those peers, a *relay*, which
//! serves it from its own download as it serves a client (the coordinator
//! decides, `coordinator/tree.rs`). The request carries the replicas that
//! pointed it on and how often ([`Hops`]): none of them is pointed to
//! again, and after [`MAX_DEPTH`] pointers the replica reached serves it
//! itself. A relay that neither holds nor receives the blob answers a
//! signed `421` and never fetches it for the asker.

use http::{HeaderMap, HeaderValue};

use crate::routing::{Hops, PeerId, MAX_HOPS};

/// In a peer request: `depth=<n>;via=<hex>,<hex>…[;direct]` ([`Hops`]:
/// the ids of the replicas that pointed it on).
pub const HOPS: &str = "ferry-peer-hops";

/// In a signed `307` answer to a peer: the relay (`host:port`) to ask
/// instead. Signed with the rest of the answer.
pub const RELAY: &str = "ferry-peer-relay";

/// In a replica's `/readyz` answer: its zone (`ferry.cluster.zone`); a
/// blob's tree prefers relays in the asker's zone.
pub const ZONE: &str = "ferry-zone";

/// A request is pointed on at most this many times: a tree of `fanout`
/// 4 holds 4^8 = 65,536 replicas below the owner.
pub const MAX_DEPTH: u8 = MAX_HOPS as u8;

/// The [`HOPS`] header for `hops`, if it says anything.
pub fn encode(hops: Hops) -> Option<HeaderValue> {
    if hops == Hops::default() {
        return None;
    }
    let via: Vec<String> = hops
        .via()
        .iter()
        .map(|p| format!("{:016x}", p.to_bits()))
        .collect();
    let direct = if hops.direct { ";direct" } else { "" };
    let text = format!("depth={};via={}{direct}", hops.depth, via.join(","));
    Some(HeaderValue::from_str(&text).expect("ascii is a header value"))
}

/// The [`Hops`] of a peer request (the default when it has none; a
/// malformed one is served where it arrives and never pointed on).
pub fn decode(headers: &HeaderMap) -> Hops {
    let Some(value) = headers.get(HOPS) else {
        return Hops::default();
    };
    let parsed = value.to_str().ok().and_then(|text| {
        let (mut depth, mut via, mut direct) = (0u8, Vec::new(), false);
        for part in text.split(';').map(str::trim) {
            match part.split_once('=') {
                Some(("depth", d)) => depth = d.parse().ok()?,
                Some(("via", v)) if !v.is_empty() => {
                    for id in v.split(',') {
                        via.push(PeerId::from_bits(u64::from_str_radix(id, 16).ok()?));
                    }
                }
                Some(("via", _)) => {}
                None if part == "direct" => direct = true,
                _ => return None,
            }
        }
        if via.len() != depth as usize || via.len() > MAX_HOPS {
            return None;
        }
        let mut hops = via.into_iter().fold(Hops::default(), Hops::through);
        hops.direct = direct;
        Some(hops)
    });
    parsed.unwrap_or(Hops {
        direct: true,
        ..Hops::default()
    })
}

/// Whether a replica reached by `hops` may point it on.
pub fn may_point_on(hops: Hops) -> bool {
    hops.may_point_on()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_cross_the_wire_unchanged() {
        let a = PeerId::of("10.0.0.1:5000");
        let b = PeerId::of("10.0.0.2:5000");
        let hops = Hops::default().through(a).through(b);
        let mut h = HeaderMap::new();
        h.insert(HOPS, encode(hops).unwrap());
        let back = decode(&h);
        assert_eq!(back, hops);
        assert_eq!(back.depth, 2);
        assert!(back.passed(a) && back.passed(b));
        let direct = Hops {
            direct: true,
            ..hops
        };
        h.insert(HOPS, encode(direct).unwrap());
        assert_eq!(decode(&h), direct);
        assert!(
            encode(Hops::default()).is_none(),
            "a first ask says nothing"
        );
        assert_eq!(decode(&HeaderMap::new()), Hops::default());
    }

    #[test]
    fn a_malformed_header_is_served_where_it_arrives() {
        let mut h = HeaderMap::new();
        h.insert(HOPS, HeaderValue::from_static("depth=x"));
        assert!(!may_point_on(decode(&h)));
        h.insert(HOPS, HeaderValue::from_static("depth=1;via=zz"));
        assert!(!may_point_on(decode(&h)));
        h.insert(
            HOPS,
            HeaderValue::from_static("depth=2;via=0000000000000001"),
        );
        assert!(!may_point_on(decode(&h)), "a depth its ids do not match");
    }

    #[test]
    fn a_request_is_pointed_on_at_most_max_depth_times() {
        let mut hops = Hops::default();
        for i in 0..MAX_DEPTH {
            assert!(may_point_on(hops), "after {i} pointers");
            hops = hops.through(PeerId::of(&format!("10.0.0.{i}:5000")));
        }
        assert!(!may_point_on(hops));
    }
}
