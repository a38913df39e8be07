//! An owner's upstream download keeps within its lead of the peers it
//! feeds: bytes it read that no peer has are lost if it dies (its next
//! owner fetches them again), so it waits while the most advanced peer is
//! more than its lead behind — at most `peerTimeout`, then lets that peer
//! go. Here the peer is the test itself (a signed peer request it reads
//! slowly), and the upstream is far faster than it.

use super::*;

const MIB: u64 = 1 << 20;

/// One replica (the other peer is down) with `peer_timeout`, owning
/// `blob` at a fast upstream, and a signed peer `GET` of it from byte
/// `from` (a `Range` when not 0): the replica, its upstream, the digest
/// and the answer.
async fn owner_asked_by_a_peer(
    peer_timeout: Duration,
    blob: bytes::Bytes,
    from: usize,
) -> (
    Ferry,
    FakeRegistry,
    String,
    http::Response<hyper::body::Incoming>,
) {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(blob);
    let addr = free_addrs(1)[0];
    let peers = vec![addr.to_string(), "127.0.0.1:9".to_string()];
    let mut c = cluster_config(&peers, &peers[0], Duration::from_secs(60));
    c.peer_timeout = peer_timeout;
    let owner = Ferry::start_with(&up.url(), move |cfg| {
        cfg.listen = addr;
        cfg.cluster = Some(c);
    })
    .await;
    let path = format!("/v2/x/blobs/{d}");
    let route = format!("{} x", up.url().trim_start_matches("http://"));
    let signed = ferry::cluster::signature::sign(SECRET.as_bytes(), &peer_request(&path, &route));
    let range = format!("bytes={from}-");
    let mut h: Vec<(&str, &str)> = signed
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
        .collect();
    if from > 0 {
        h.push(("range", &range));
    }
    let resp = within(send(Method::GET, &owner.url(&path), &h)).await;
    (owner, up, d, resp)
}

/// [`owner_asked_by_a_peer`] of a 64 MiB blob from byte 0, read for its
/// first MiB and then not at all. Returns the replica, the digest, the
/// peer's body and what it read.
async fn owner_with_a_slow_peer(
    peer_timeout: Duration,
) -> (Ferry, FakeRegistry, String, hyper::body::Incoming, Vec<u8>) {
    let (owner, up, d, resp) =
        owner_asked_by_a_peer(peer_timeout, blob_bytes(64 << 20, 977), 0).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let read = within(read_at_least(&mut body, MIB as usize)).await;
    (owner, up, d, body, read)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_reads_its_upstream_no_further_ahead_of_its_peer_than_its_lead() {
    let (owner, _up, d, mut body, mut read) =
        owner_with_a_slow_peer(Duration::from_secs(3600)).await;
    let m = &owner.app.metrics.cluster;
    until(|| m.downloads_held.get() == 1).await;
    // The lead of a 64 MiB blob is 4 MiB. Between the peer's stream and
    // this reader lie the sockets' buffers (a few MiB on loopback); without
    // the lead the owner reads all 64 MiB at once.
    let fetched = owner.upstream_bytes();
    let bound = read.len() as u64 + 4 * MIB + 16 * MIB;
    assert!(
        fetched <= bound,
        "the owner read {fetched} upstream bytes while its only peer had read {}",
        read.len()
    );
    // The peer reads on: so does the owner, to the end.
    read.extend(within(read_at_least(&mut body, (64 * MIB) as usize - read.len())).await);
    assert_eq!(sha256(&read), d);
    owner.settle().await;
    assert!(owner.has_blob(&d));
    assert_eq!(owner.upstream_bytes(), 64 * MIB, "one fetch of the blob");
    assert_eq!(m.downloads_held.get(), 0);
    assert_eq!(
        m.peers_let_go.get(),
        0,
        "a peer that reads on is not let go"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_falls_behind_for_longer_than_the_peer_timeout_is_let_go() {
    let (owner, _up, d, _body, _read) = owner_with_a_slow_peer(Duration::from_millis(100)).await;
    // A client of the owner itself: it is not held back for long by a peer
    // that stopped reading.
    let w = within(get(&owner.url(&format!("/v2/x/blobs/{d}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), d);
    let m = &owner.app.metrics.cluster;
    assert_eq!(m.peers_let_go.get(), 1);
    assert!(m.held_for_peers.get() >= 0.1, "it waited peerTimeout first");
    assert_eq!(m.downloads_held.get(), 0);
}

/// A peer asking for the blob from beyond the lead (a replica that was
/// ahead of this one when their owner went away resumes from its own
/// position) is where it asked from, not at byte 0: the download reads up
/// to that byte and on, rather than wait for the peer to catch up from 0 —
/// which it never can, its first byte being the one the download waits to
/// read. Before, it waited `peerTimeout` (2 s in the chaos test; an hour
/// here), then let the peer go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_resuming_beyond_the_lead_does_not_hold_the_download() {
    let blob = blob_bytes(64 << 20, 978);
    let from = 12 * MIB as usize; // the lead of 64 MiB is 4 MiB
    let (owner, _up, d, resp) =
        owner_asked_by_a_peer(Duration::from_secs(3600), blob.clone(), from).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    let mut body = resp.into_body();
    let read = within(read_at_least(&mut body, blob.len() - from)).await;
    assert_eq!(read, blob[from..]);
    let m = &owner.app.metrics.cluster;
    assert_eq!(m.peers_let_go.get(), 0, "the peer was not let go");
    owner.settle().await;
    assert!(owner.has_blob(&d));
}
