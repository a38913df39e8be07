//! The fan-out tree: a replica sends a blob to at most `fanout` peers at a
//! time and points further askers to one of them, which relays the blob
//! from its own download. The owner's download is held at its first MiB
//! (a gate at the fake upstream) until every asker has found its place,
//! so the tree's shape does not depend on timing.

use super::death::Doomed;
use super::*;

use ferry::routing::{Hops, PeerId};

const SIZE: usize = 8 << 20;
const AT: u64 = 1 << 20;

/// `n` replicas with `fanout`, and a cold blob owned by the first, whose
/// upstream download pauses at [`AT`] bytes until the gate opens.
async fn tree_of(n: usize, fanout: usize) -> (FakeRegistry, Vec<Ferry>, String, Gate) {
    tree_in_zones(n, fanout, &[]).await
}

/// [`tree_of`], replica `i` in `zones[i]` (none past the list's end).
async fn tree_in_zones(
    n: usize,
    fanout: usize,
    zones: &[&str],
) -> (FakeRegistry, Vec<Ferry>, String, Gate) {
    let up = FakeRegistry::start().await;
    let addrs = free_addrs(n);
    let peers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let (d, data) = (3000..)
        .map(|seed| blob_bytes(SIZE, seed))
        .map(|data| (sha256(&data), data))
        .find(|(d, _)| owner_of(&peers, d) == peers[0])
        .unwrap();
    let gate = Gate::new();
    up.add_blob_with(data, Fault::PauseAt(AT, gate.clone()));
    let mut replicas = Vec::new();
    for (i, addr) in addrs.iter().copied().enumerate() {
        let mut c = cluster_config(&peers, &peers[i], Duration::from_millis(100));
        c.fanout = fanout;
        c.zone = zones.get(i).map(|z| z.to_string());
        replicas.push(
            Ferry::start_with(&up.url(), move |cfg| {
                cfg.listen = addr;
                cfg.cluster = Some(c);
            })
            .await,
        );
    }
    all_live(&replicas, n as i64 - 1).await;
    (up, replicas, d, gate)
}

/// Peer streams open now, summed over `replicas`.
fn streams(replicas: &[&ferry::App]) -> i64 {
    replicas
        .iter()
        .map(|a| a.metrics.cluster.peer_streams.get())
        .sum()
}

fn apps(replicas: &[Ferry]) -> Vec<&ferry::App> {
    replicas.iter().map(|r| &*r.app).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_sends_a_blob_to_at_most_fanout_peers_and_points_the_rest_to_relays() {
    let (up, replicas, d, gate) = tree_of(6, 2).await;
    // Five replicas ask for the blob at once.
    let clients: Vec<_> = replicas[1..]
        .iter()
        .map(|r| {
            let url = r.url(&format!("/v2/x/blobs/{d}"));
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    within(gate.reached()).await;
    let all = apps(&replicas);
    until(|| streams(&all) == 5).await;
    gate.open();
    for c in clients {
        let w = within(c).await.unwrap();
        assert_eq!(w.status, StatusCode::OK);
        assert_eq!(sha256(&w.body), d);
    }
    let size = SIZE as u64;
    for (i, r) in replicas.iter().enumerate() {
        r.settle().await;
        let sent = r.app.metrics.cluster.peer_bytes_sent.get();
        assert!(
            sent <= 2 * size,
            "replica {i} sent {sent} bytes to peers: more than 2 copies"
        );
    }
    let owner = &replicas[0].app.metrics.cluster;
    assert_eq!(owner.peer_bytes_sent.get(), 2 * size, "the owner fed two");
    assert_eq!(owner.pointed.get(), 3, "and pointed three to relays");
    let relayed: u64 = replicas
        .iter()
        .map(|r| r.app.metrics.cluster.relayed.get())
        .sum();
    assert_eq!(relayed, 3);
    let fetched: u64 = replicas.iter().map(|r| r.upstream_bytes()).sum();
    assert_eq!(fetched, size, "one upstream fetch");
    assert_eq!(up.blob_gets(&d), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_fanout_of_one_the_tree_is_a_chain_and_never_a_circle() {
    let (_up, replicas, d, gate) = tree_of(5, 1).await;
    let all = apps(&replicas);
    // Replicas 1 to 4 ask one after the other, each once the one before
    // has its place: 1 takes the owner's one place, 2 is pointed to 1, 3
    // to 1 and on to 2, 4 to 1, 2 and on to 3.
    let mut clients = Vec::new();
    for (k, r) in replicas[1..].iter().enumerate() {
        let url = r.url(&format!("/v2/x/blobs/{d}"));
        clients.push(tokio::spawn(async move { get(&url).await }));
        until(|| streams(&all) == k as i64 + 1).await;
    }
    gate.open();
    for c in clients {
        let w = within(c).await.unwrap();
        assert_eq!(w.status, StatusCode::OK);
        assert_eq!(sha256(&w.body), d);
    }
    let size = SIZE as u64;
    let m = |i: usize| &replicas[i].app.metrics.cluster;
    for (i, sent) in [(0, size), (1, size), (2, size), (3, size), (4, 0)] {
        replicas[i].settle().await;
        assert_eq!(m(i).peer_bytes_sent.get(), sent, "replica {i}");
    }
    // Each asker was pointed once per level above it.
    let relayed: Vec<u64> = (1..5).map(|i| m(i).relayed.get()).collect();
    assert_eq!(relayed, [0, 1, 2, 3]);
    let pointed: Vec<u64> = (0..5).map(|i| m(i).pointed.get()).collect();
    assert_eq!(pointed, [3, 2, 1, 0, 0]);
    let fetched: u64 = replicas.iter().map(|r| r.upstream_bytes()).sum();
    assert_eq!(fetched, size);
}

/// A signed peer request for the blob from a replica named `from`, at
/// `hops` in the tree.
async fn ask_as(
    replica: &Ferry,
    up: &FakeRegistry,
    d: &str,
    from: &str,
    hops: Hops,
) -> http::Response<hyper::body::Incoming> {
    let path = format!("/v2/x/blobs/{d}");
    let route = format!("{} x", up.url().trim_start_matches("http://"));
    let req = ferry::cluster::signature::Request {
        from,
        ..peer_request(&path, &route)
    };
    let mut signed = ferry::cluster::signature::sign(SECRET.as_bytes(), &req);
    if let Some(h) = ferry::cluster::tree::encode(hops) {
        signed.insert(ferry::cluster::tree::HOPS, h);
    }
    let h: Vec<(&str, &str)> = signed
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
        .collect();
    within(send(Method::GET, &replica.url(&path), &h)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_never_pointed_back_nor_deeper_than_the_bound() {
    let (up, replicas, d, gate) = tree_of(3, 1).await;
    let all = apps(&replicas);
    // Replica 1 takes the owner's one place.
    let url = replicas[1].url(&format!("/v2/x/blobs/{d}"));
    let first = tokio::spawn(async move { get(&url).await });
    until(|| streams(&all) == 1).await;
    let relay = replicas[1].app.cluster.as_ref().unwrap().me().unwrap();
    let owner = &replicas[0];
    // A first ask from another replica is pointed to replica 1 ...
    let pointed = ask_as(owner, &up, &d, "10.9.9.9:1", Hops::default()).await;
    assert_eq!(pointed.status(), StatusCode::TEMPORARY_REDIRECT);
    let to = pointed.headers().get(ferry::cluster::tree::RELAY).unwrap();
    assert_eq!(to.to_str().unwrap(), relay);
    // ... but not one that replica 1 pointed here (it came from there: a
    // circle), and not one pointed on as often as the bound allows.
    let via_relay = Hops::default().through(PeerId::of(&relay));
    let deep = (0..ferry::cluster::tree::MAX_DEPTH)
        .map(|i| PeerId::of(&format!("10.8.8.{i}:1")))
        .fold(Hops::default(), Hops::through);
    assert!(!deep.may_point_on());
    for hops in [via_relay, deep] {
        let served = ask_as(owner, &up, &d, "10.9.9.8:1", hops).await;
        assert_eq!(served.status(), StatusCode::OK, "{hops:?}");
    }
    // A replica pointed to a relay that neither holds nor receives the
    // blob is told so (signed 421) and nothing is fetched for it there.
    let other = free_blob(&up);
    let not_here = ask_as(&replicas[2], &up, &other, "10.9.9.7:1", via_relay).await;
    assert_eq!(not_here.status(), StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(
        up.blob_gets(&other),
        0,
        "a relay fetches nothing for its asker"
    );
    gate.open();
    let w = within(first).await.unwrap();
    assert_eq!(sha256(&w.body), d);
}

/// A blob at the upstream that no replica holds.
fn free_blob(up: &FakeRegistry) -> String {
    up.add_blob(blob_bytes(64 << 10, 4242))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_children_of_a_relay_that_dies_go_on_from_the_owner() {
    let up = FakeRegistry::start().await;
    let addrs = free_addrs(3);
    let peers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let (d, data) = (5000..)
        .map(|seed| blob_bytes(SIZE, seed))
        .map(|data| (sha256(&data), data))
        .find(|(d, _)| owner_of(&peers, d) == peers[0])
        .unwrap();
    let gate = Gate::new();
    up.add_blob_with(data, Fault::PauseAt(AT, gate.clone()));
    let config = |i: usize| {
        let mut c = cluster_config(&peers, &peers[i], Duration::from_millis(100));
        c.fanout = 1;
        c
    };
    let upstream = up.url();
    let start = |i: usize| {
        let (addr, c) = (addrs[i], config(i));
        Ferry::start_with(&upstream, move |cfg| {
            cfg.listen = addr;
            cfg.cluster = Some(c);
        })
    };
    let owner = start(0).await;
    let relay = Doomed::start(up.url(), addrs[1], config(1)).await;
    let child = start(2).await;
    let both = [owner, child];
    all_live(&both, 2).await;
    let [owner, child] = both;
    // The relay takes the owner's one place; the child is pointed to it.
    let url = format!("http://{}/v2/x/blobs/{d}", addrs[1]);
    let _dies = tokio::spawn(async move { try_get(&url).await });
    until(|| owner.app.metrics.cluster.peer_streams.get() == 1).await;
    let url = child.url(&format!("/v2/x/blobs/{d}"));
    let client = tokio::spawn(async move { get(&url).await });
    let relay_app = relay.app.clone();
    until(|| relay_app.metrics.cluster.peer_streams.get() == 1).await;
    // The child has what the relay had; then the relay dies.
    until(|| child.app.metrics.cluster.peer_bytes.get() == AT).await;
    relay.kill().await;
    gate.open();
    let w = within(client).await.unwrap();
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), d);
    child.settle().await;
    assert!(child.has_blob(&d));
    assert_eq!(child.app.metrics.cluster.relayed.get(), 1);
    // The rest came from the owner's one download.
    let size = SIZE as u64;
    assert_eq!(owner.upstream_bytes() + child.upstream_bytes(), size);
    assert_eq!(upstream_bytes_of(&relay_app), 0);
    // The child took its first MiB from the relay and the rest, from
    // there on, from the owner: no byte twice. (What the owner counts as
    // sent includes what it handed the dead relay's connection.)
    assert_eq!(child.app.metrics.cluster.peer_bytes.get(), size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asker_is_pointed_to_a_relay_in_its_own_zone_first() {
    // The owner feeds two peers: replica 1 (zone a) first, then replica 2
    // (zone b), both with the first MiB. Replica 3 (zone b) is pointed to
    // replica 2, though replica 1 comes first otherwise.
    let zones = ["a", "a", "b", "b"];
    let (_up, replicas, d, gate) = tree_in_zones(4, 2, &zones).await;
    let all = apps(&replicas);
    let mut clients = Vec::new();
    for (k, r) in replicas[1..3].iter().enumerate() {
        let url = r.url(&format!("/v2/x/blobs/{d}"));
        clients.push(tokio::spawn(async move { get(&url).await }));
        until(|| streams(&all) == k as i64 + 1).await;
        until(|| r.app.metrics.cluster.peer_bytes.get() == AT).await;
    }
    let url = replicas[3].url(&format!("/v2/x/blobs/{d}"));
    clients.push(tokio::spawn(async move { get(&url).await }));
    until(|| streams(&all) == 3).await;
    let streams_of = |i: usize| replicas[i].app.metrics.cluster.peer_streams.get();
    assert_eq!(
        (streams_of(1), streams_of(2)),
        (0, 1),
        "replica 3 went to replica 2"
    );
    gate.open();
    for c in clients {
        let w = within(c).await.unwrap();
        assert_eq!(sha256(&w.body), d);
    }
    assert_eq!(replicas[3].app.metrics.cluster.relayed.get(), 1);
}
