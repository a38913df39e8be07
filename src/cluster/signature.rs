//! Signed peer requests: an HMAC-SHA256, with the cluster's shared secret,
//! over the method, the path and query, the repository header and the
//! time. A request whose signature does not check out, or whose time is
//! more than [`MAX_SKEW`] away from this replica's clock, is treated as an
//! ordinary client's request: its peer headers mean nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;

/// The sender's `host:port`.
pub const PEER: &str = "ferry-peer";
/// Seconds since the Unix epoch when the request was signed.
pub const TIME: &str = "ferry-peer-time";
/// `<registry index> <upstream repository>`: the repository the blob is
/// fetched for, exactly as the sender routed it.
pub const REPO: &str = "ferry-peer-repo";
/// Hex HMAC-SHA256 of the above.
pub const SIGNATURE: &str = "ferry-peer-signature";

/// How far a signed time may be from this replica's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(60);

/// A peer request whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub from: String,
    pub repo: String,
}

fn mac(secret: &[u8], from: &str, method: &str, path: &str, repo: &str, time: u64) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    for part in [from, method, path, repo, &time.to_string()] {
        m.update(part.as_bytes());
        m.update(b"\n");
    }
    m
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The headers that make a request from `from` a signed peer request.
pub fn sign(secret: &[u8], from: &str, method: &str, path: &str, repo: &str) -> HeaderMap {
    sign_at(secret, from, method, path, repo, now())
}

fn sign_at(
    secret: &[u8],
    from: &str,
    method: &str,
    path: &str,
    repo: &str,
    time: u64,
) -> HeaderMap {
    let tag = mac(secret, from, method, path, repo, time)
        .finalize()
        .into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    let mut h = HeaderMap::new();
    let value = |s: &str| HeaderValue::from_str(s).expect("peer headers are visible ASCII");
    h.insert(PEER, value(from));
    h.insert(TIME, value(&time.to_string()));
    h.insert(REPO, value(repo));
    h.insert(SIGNATURE, value(&hex));
    h
}

/// The peer request `headers` make of `method path`, if they are signed
/// with `secret` and recent; `None` for anything else.
pub fn verify(secret: &[u8], method: &str, path: &str, headers: &HeaderMap) -> Option<Signed> {
    verify_at(secret, method, path, headers, now())
}

fn verify_at(
    secret: &[u8],
    method: &str,
    path: &str,
    headers: &HeaderMap,
    now: u64,
) -> Option<Signed> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signature = text(SIGNATURE)?;
    let (from, repo) = (text(PEER)?, text(REPO)?);
    let time: u64 = text(TIME)?.parse().ok()?;
    if now.abs_diff(time) > MAX_SKEW.as_secs() {
        return None;
    }
    let tag = decode_hex(signature)?;
    mac(secret, from, method, path, repo, time)
        .verify_slice(&tag)
        .ok()?;
    Some(Signed {
        from: from.to_string(),
        repo: repo.to_string(),
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"a shared secret of the cluster";
    const PATH: &str = "/v2/library/alpine/blobs/sha256:00";

    #[test]
    fn a_signed_request_checks_out_and_nothing_else_does() {
        let h = sign_at(KEY, "10.0.0.1:5000", "GET", PATH, "0 library/alpine", 1000);
        let ok = verify_at(KEY, "GET", PATH, &h, 1010).expect("signed");
        assert_eq!(ok.from, "10.0.0.1:5000");
        assert_eq!(ok.repo, "0 library/alpine");
        assert_eq!(verify_at(b"another secret", "GET", PATH, &h, 1010), None);
        assert_eq!(verify_at(KEY, "HEAD", PATH, &h, 1010), None, "method");
        assert_eq!(
            verify_at(KEY, "GET", "/v2/x/blobs/sha256:00", &h, 1010),
            None,
            "path"
        );
        assert_eq!(verify_at(KEY, "GET", PATH, &h, 1000 + 61), None, "too old");
        assert_eq!(
            verify_at(KEY, "GET", PATH, &h, 1000 - 61),
            None,
            "from the future"
        );
        let mut other_repo = h.clone();
        other_repo.insert(REPO, HeaderValue::from_static("0 private/secret"));
        assert_eq!(
            verify_at(KEY, "GET", PATH, &other_repo, 1010),
            None,
            "repository"
        );
        let mut unsigned = h.clone();
        unsigned.remove(SIGNATURE);
        assert_eq!(verify_at(KEY, "GET", PATH, &unsigned, 1010), None);
        let mut garbage = h;
        garbage.insert(SIGNATURE, HeaderValue::from_static("zz"));
        assert_eq!(verify_at(KEY, "GET", PATH, &garbage, 1010), None);
    }
}
