//! Rendezvous (highest-random-weight) hashing: every replica ranks the
//! live peers for a key the same way, with no coordination, and a peer
//! coming or going moves only the keys it wins or held.
//!
//! A peer's weight for a key is the first 8 bytes of
//! `SHA-256(peer || 0 || key)`; the owner is the peer with the highest
//! weight, the next owner the one after it.

use sha2::{Digest as _, Sha256};

/// The weight of `peer` for `key`.
pub fn weight(peer: &str, key: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update(peer.as_bytes());
    h.update([0]);
    h.update(key);
    let out = h.finalize();
    u64::from_be_bytes(out[..8].try_into().expect("8 bytes"))
}

/// `peers` ordered by their weight for `key`, highest (the owner) first;
/// equal weights (never in practice) fall back to the name.
pub fn rank<'a>(peers: impl IntoIterator<Item = &'a str>, key: &[u8]) -> Vec<&'a str> {
    let mut ranked: Vec<(u64, &str)> = peers.into_iter().map(|p| (weight(p, key), p)).collect();
    ranked.sort_by(|a, b| b.cmp(a));
    ranked.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<Vec<u8>> {
        (0..3000u32)
            .map(|i| format!("sha256:{i:064}").into_bytes())
            .collect()
    }

    #[test]
    fn keys_spread_over_the_peers() {
        let peers = ["10.0.0.1:5000", "10.0.0.2:5000", "10.0.0.3:5000"];
        let mut owned = [0usize; 3];
        for k in keys() {
            let owner = rank(peers, &k)[0];
            owned[peers.iter().position(|p| *p == owner).unwrap()] += 1;
        }
        for n in owned {
            assert!((800..1200).contains(&n), "{owned:?}");
        }
    }

    #[test]
    fn a_peer_that_joins_takes_keys_and_moves_no_others() {
        let three = ["a:1", "b:1", "c:1"];
        let four = ["a:1", "b:1", "c:1", "d:1"];
        let mut moved_to_d = 0;
        for k in keys() {
            let before = rank(three, &k)[0];
            let after = rank(four, &k)[0];
            if after == "d:1" {
                moved_to_d += 1;
            } else {
                assert_eq!(before, after, "a key moved between the old peers");
            }
        }
        assert!((550..950).contains(&moved_to_d), "{moved_to_d}");
    }

    #[test]
    fn a_peer_that_leaves_gives_its_keys_to_each_keys_next_owner() {
        let three = ["a:1", "b:1", "c:1"];
        let two = ["a:1", "c:1"];
        for k in keys() {
            let ranked = rank(three, &k);
            let after = rank(two, &k)[0];
            let expected = if ranked[0] == "b:1" {
                ranked[1]
            } else {
                ranked[0]
            };
            assert_eq!(after, expected);
        }
    }
}
