//! Signed peer requests: an HMAC-SHA256, with the cluster's shared secret,
//! over the sender, the method, the path and query, the repository header,
//! the client the sender serves, the time and a nonce. A request whose
//! signature does not check out, or whose time is more than [`MAX_SKEW`]
//! away from this replica's clock, is treated as an ordinary client's
//! request: its peer headers mean nothing. The nonce lets the receiver
//! refuse a captured request sent again ([`super::replay`]).

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
/// The address of the client the sending replica serves: the owner shares
/// its fetch slots fairly between clients, not between replicas.
pub const CLIENT: &str = "ferry-peer-client";
/// 32 hex digits, random for each request: the same signed request is
/// taken once.
pub const NONCE: &str = "ferry-peer-nonce";
/// Hex HMAC-SHA256 of the above.
pub const SIGNATURE: &str = "ferry-peer-signature";

/// How far a signed time may be from this replica's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(60);

/// A peer request whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub from: String,
    pub repo: String,
    /// The client the sending replica serves.
    pub client: String,
    /// When it was signed (seconds since the Unix epoch).
    pub time: u64,
    pub nonce: u128,
}

/// What a signature covers besides the time.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub from: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub repo: &'a str,
    pub client: &'a str,
}

fn mac(secret: &[u8], r: &Request<'_>, time: u64, nonce: u128) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    for part in [
        r.from,
        r.method,
        r.path,
        r.repo,
        r.client,
        &time.to_string(),
        &format!("{nonce:032x}"),
    ] {
        m.update(part.as_bytes());
        m.update(b"\n");
    }
    m
}

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The headers that make `r` a signed peer request (with a fresh nonce).
pub fn sign(secret: &[u8], r: &Request<'_>) -> HeaderMap {
    sign_at(secret, r, now(), fastrand::u128(..))
}

fn sign_at(secret: &[u8], r: &Request<'_>, time: u64, nonce: u128) -> HeaderMap {
    let tag = mac(secret, r, time, nonce).finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    let mut h = HeaderMap::new();
    let value = |s: &str| HeaderValue::from_str(s).expect("peer headers are visible ASCII");
    h.insert(PEER, value(r.from));
    h.insert(TIME, value(&time.to_string()));
    h.insert(REPO, value(r.repo));
    h.insert(CLIENT, value(r.client));
    h.insert(NONCE, value(&format!("{nonce:032x}")));
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
    let (from, repo, client) = (text(PEER)?, text(REPO)?, text(CLIENT)?);
    let time: u64 = text(TIME)?.parse().ok()?;
    let nonce = text(NONCE).filter(|n| n.len() == 32)?;
    let nonce = u128::from_str_radix(nonce, 16).ok()?;
    if now.abs_diff(time) > MAX_SKEW.as_secs() {
        return None;
    }
    let tag = decode_hex(signature)?;
    let r = Request {
        from,
        method,
        path,
        repo,
        client,
    };
    mac(secret, &r, time, nonce).verify_slice(&tag).ok()?;
    Some(Signed {
        from: from.to_string(),
        repo: repo.to_string(),
        client: client.to_string(),
        time,
        nonce,
    })
}

/// The owner's signature of its answer: hex HMAC-SHA256 of the request's
/// signature, the status, `Docker-Content-Digest`, `Content-Length`,
/// `Content-Range`, [`HAVE`] and [`super::tree::RELAY`].
/// A replica takes nothing from a peer whose answer does not carry it:
/// not a manifest, not a tag, not a 404, not a blob's length.
pub const ANSWER: &str = "ferry-peer-answer";

/// In the owner's answer to a peer's `HEAD` of a blob: how many of its
/// bytes the owner has (stored, or received so far); signed with the rest.
pub const HAVE: &str = "ferry-peer-have";

fn answer_mac(secret: &[u8], request: &str, status: u16, headers: &HeaderMap) -> Hmac<Sha256> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    for part in [
        "answer",
        request,
        &status.to_string(),
        &text("docker-content-digest"),
        &text("content-length"),
        &text("content-range"),
        &text(HAVE),
        &text(super::tree::RELAY),
    ] {
        m.update(part.as_bytes());
        m.update(b"\n");
    }
    m
}

/// The [`ANSWER`] header for an answer of `status` with `headers` to the
/// request signed `request` (its [`SIGNATURE`]).
pub fn sign_answer(secret: &[u8], request: &str, status: u16, headers: &HeaderMap) -> HeaderValue {
    let tag = answer_mac(secret, request, status, headers)
        .finalize()
        .into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&hex).expect("hex is a header value")
}

/// Whether an answer of `status` with `headers` was signed by a holder of
/// `secret` for the request signed `request`.
pub fn verify_answer(secret: &[u8], request: &str, status: u16, headers: &HeaderMap) -> bool {
    let Some(tag) = headers
        .get(ANSWER)
        .and_then(|v| v.to_str().ok())
        .and_then(decode_hex)
    else {
        return false;
    };
    answer_mac(secret, request, status, headers)
        .verify_slice(&tag)
        .is_ok()
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
        let r = Request {
            from: "10.0.0.1:5000",
            method: "GET",
            path: PATH,
            repo: "0 library/alpine",
            client: "192.0.2.7",
        };
        let h = sign_at(KEY, &r, 1000, 7);
        let ok = verify_at(KEY, "GET", PATH, &h, 1010).expect("signed");
        assert_eq!(ok.from, "10.0.0.1:5000");
        assert_eq!(ok.repo, "0 library/alpine");
        assert_eq!(ok.client, "192.0.2.7");
        assert_eq!((ok.time, ok.nonce), (1000, 7));
        assert_eq!(verify_at(b"another secret", "GET", PATH, &h, 1010), None);
        assert_eq!(verify_at(KEY, "HEAD", PATH, &h, 1010), None, "method");
        let other_path = "/v2/x/blobs/sha256:00";
        assert_eq!(verify_at(KEY, "GET", other_path, &h, 1010), None, "path");
        assert_eq!(verify_at(KEY, "GET", PATH, &h, 1000 + 61), None, "too old");
        assert_eq!(verify_at(KEY, "GET", PATH, &h, 1000 - 61), None, "future");
        for (name, value) in [
            (REPO, "0 private/secret"),
            (CLIENT, "192.0.2.8"),
            (PEER, "10.0.0.9:5000"),
            (SIGNATURE, "zz"),
            (NONCE, "00000000000000000000000000000008"),
        ] {
            let mut changed = h.clone();
            changed.insert(name, HeaderValue::from_static(value));
            assert_eq!(verify_at(KEY, "GET", PATH, &changed, 1010), None, "{name}");
        }
        let mut no_nonce = h.clone();
        no_nonce.remove(NONCE);
        assert_eq!(verify_at(KEY, "GET", PATH, &no_nonce, 1010), None);
        let mut unsigned = h;
        unsigned.remove(SIGNATURE);
        assert_eq!(verify_at(KEY, "GET", PATH, &unsigned, 1010), None);
    }

    #[test]
    fn an_answer_is_signed_for_its_request_status_digest_length_and_range() {
        let mut h = HeaderMap::new();
        h.insert(
            "docker-content-digest",
            HeaderValue::from_static("sha256:ab"),
        );
        h.insert("content-length", HeaderValue::from_static("12"));
        let sig = sign_answer(b"0123456789abcdef", "req-1", 200, &h);
        h.insert(ANSWER, sig);
        assert!(verify_answer(b"0123456789abcdef", "req-1", 200, &h));
        assert!(
            !verify_answer(b"another secret!!", "req-1", 200, &h),
            "other secret"
        );
        assert!(
            !verify_answer(b"0123456789abcdef", "req-2", 200, &h),
            "another request's"
        );
        assert!(
            !verify_answer(b"0123456789abcdef", "req-1", 404, &h),
            "another status"
        );
        let mut other = h.clone();
        other.insert("content-range", HeaderValue::from_static("bytes 2-11/12"));
        assert!(
            !verify_answer(b"0123456789abcdef", "req-1", 200, &other),
            "another range"
        );
        let mut other = h.clone();
        other.insert("content-length", HeaderValue::from_static("13"));
        assert!(
            !verify_answer(b"0123456789abcdef", "req-1", 200, &other),
            "another length"
        );
        other.remove(ANSWER);
        assert!(
            !verify_answer(b"0123456789abcdef", "req-1", 200, &other),
            "unsigned"
        );
    }
}
