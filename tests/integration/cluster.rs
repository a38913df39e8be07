//! The cluster (`ferry.cluster`): replicas on loopback with one fake
//! upstream. A cold blob is fetched upstream once for the whole cluster
//! and streamed to every replica's clients; an owner that dies midway or
//! lies is survived; the peer path gives an outsider nothing.

use crate::support;

mod death;
mod lead;
mod lengths;
mod lies;
mod not_found;
mod prewarm;
mod routing;
mod silence;
mod tls;
mod tree;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ferry::cluster::rendezvous;
use ferry::config::{ClusterConfig, PeerSource, Secret};
use http::{Method, StatusCode};
use support::raw_upstream::{RawBody, RawReply, RawRequest, RawUpstream};
use support::*;

const SECRET: &str = "a secret the replicas share";

/// Free loopback ports for `n` replicas (each replica must know every
/// peer's address before it starts).
fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let held: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter().map(|l| l.local_addr().unwrap()).collect()
}

fn cluster_config(peers: &[String], me: &str, probe: Duration) -> ClusterConfig {
    ClusterConfig {
        peers: PeerSource::Static(peers.to_vec()),
        self_addr: Some(me.to_string()),
        secret: Secret::new(SECRET),
        probe_interval: probe,
        dns_interval: Duration::from_secs(60),
        peer_timeout: ferry::config::PEER_TIMEOUT,
        fanout: ferry::config::FANOUT,
        zone: None,
        https: false,
        cert_dir: None,
    }
}

/// `n` replicas of one cluster over `upstream`, each seeing the others
/// live before this returns.
async fn cluster(upstream: &str, n: usize) -> Vec<Ferry> {
    cluster_with(upstream, n, |_| {}).await
}

/// As [`cluster`], with `tweak` applied to every replica's config.
async fn cluster_with(upstream: &str, n: usize, tweak: impl Fn(&mut ferry::Config)) -> Vec<Ferry> {
    let addrs = free_addrs(n);
    let peers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let mut replicas = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let c = cluster_config(&peers, &peers[i], Duration::from_millis(100));
        let addr = *addr;
        replicas.push(
            Ferry::start_with(upstream, |cfg| {
                cfg.listen = addr;
                cfg.cluster = Some(c);
                tweak(cfg);
            })
            .await,
        );
    }
    all_live(&replicas, n as i64 - 1).await;
    replicas
}

/// Waits until every replica sees `live` other peers ready.
async fn all_live(replicas: &[Ferry], live: i64) {
    within(async {
        while replicas
            .iter()
            .any(|r| r.app.metrics.cluster.peers_live.get() != live)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A peer request from `x:1` for `path` of repository `x` at the
/// registry `registry` (its `host:port`), as a forger would write one.
fn peer_request<'a>(path: &'a str, route: &'a str) -> ferry::cluster::signature::Request<'a> {
    ferry::cluster::signature::Request {
        from: "x:1",
        method: "GET",
        path,
        repo: route,
        client: "192.0.2.1",
    }
}

fn owner_of(peers: &[String], digest: &str) -> String {
    rendezvous::rank(peers.iter().map(String::as_str), digest.as_bytes())[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cold_blob_is_fetched_upstream_once_for_the_whole_cluster() {
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let size = 4 << 20;
    let d = up.add_blob_with(blob_bytes(size, 800), Fault::PauseAt(1 << 20, gate.clone()));
    let replicas = cluster(&up.url(), 3).await;
    // 16 clients spread over the three replicas, all while it is cold.
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let url = replicas[i % 3].url(&format!("/v2/x/blobs/{d}"));
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    gate.reached().await;
    gate.open();
    for c in clients {
        let w = within(c).await.unwrap();
        assert_eq!(w.status, StatusCode::OK);
        assert_eq!(sha256(&w.body), d);
    }
    for r in &replicas {
        r.settle().await;
    }
    assert_eq!(up.blob_gets(&d), 1, "one upstream GET for the cluster");
    assert_eq!(up.blob_bytes_sent(&d), size as u64, "the blob's bytes once");
    for (i, r) in replicas.iter().enumerate() {
        assert!(r.has_blob(&d), "replica {i} did not store what it served");
    }
    let from_peers: u64 = replicas
        .iter()
        .map(|r| r.app.metrics.cluster.peer_bytes.get())
        .sum();
    assert_eq!(
        from_peers,
        2 * size as u64,
        "two replicas filled from the owner"
    );
    // The status page lists the other peers as ready.
    let page = String::from_utf8(within(get(&replicas[0].url("/"))).await.body.to_vec()).unwrap();
    assert!(page.contains("Cluster peers"), "{page}");
    for r in &replicas[1..] {
        let row = format!(
            "<tr><td><code>{}</code></td><td></td><td><span class=\"ok\">ready",
            r.addr
        );
        assert!(page.contains(&row), "no ready row for {}", r.addr);
    }
}

/// A scripted cluster peer: it answers its readiness probe, and every
/// blob request with the whole blob's `Content-Length` and what `send`
/// makes of the blob (set in `blob` once it is chosen).
struct ScriptedOwner {
    upstream: RawUpstream,
    blob: std::sync::Arc<std::sync::Mutex<Bytes>>,
}

/// The owner's signature of an answer of `status` with `headers` to the
/// peer request `req`, as a replica holding the secret signs every answer.
fn signed_answer(
    req: &RawRequest,
    status: u16,
    headers: &[(&str, String)],
) -> (&'static str, String) {
    let sig = req
        .head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(ferry::cluster::signature::SIGNATURE)
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let mut h = http::HeaderMap::new();
    for (k, v) in headers {
        h.insert(
            http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let value = ferry::cluster::signature::sign_answer(SECRET.as_bytes(), &sig, status, &h);
    (
        ferry::cluster::signature::ANSWER,
        value.to_str().unwrap().to_string(),
    )
}

async fn scripted_owner(send: impl Fn(&Bytes) -> RawBody + Send + Sync + 'static) -> ScriptedOwner {
    let blob = std::sync::Arc::new(std::sync::Mutex::new(Bytes::new()));
    let b = blob.clone();
    let upstream = RawUpstream::start(move |req| {
        if req.path == "/readyz" {
            let empty = RawBody::Bytes(Bytes::new());
            return RawReply::new("200 OK", &[("Content-Length", "0".into())], empty);
        }
        let data = b.lock().unwrap().clone();
        let mut headers = vec![("Content-Length", data.len().to_string())];
        headers.push(signed_answer(req, 200, &headers));
        RawReply::new("200 OK", &headers, send(&data))
    })
    .await;
    ScriptedOwner { upstream, blob }
}

/// A blob whose owner, between `peers`, is `owner` (found by trying seeds).
fn blob_owned_by(up: &FakeRegistry, size: usize, peers: &[String], owner: &str) -> (String, Bytes) {
    for seed in 900.. {
        let data = blob_bytes(size, seed);
        let d = sha256(&data);
        if owner_of(peers, &d) == owner {
            up.add_blob(data.clone());
            return (d, data);
        }
    }
    unreachable!()
}

/// One replica whose only peer is `peer`.
async fn replica_with_peer(upstream: &str, peer: &str, probe: Duration) -> (Ferry, Vec<String>) {
    replica_with_peer_and(upstream, peer, probe, |_| {}).await
}

/// [`replica_with_peer`], its config changed by `tweak` besides.
async fn replica_with_peer_and(
    upstream: &str,
    peer: &str,
    probe: Duration,
    tweak: impl FnOnce(&mut ferry::Config),
) -> (Ferry, Vec<String>) {
    let addr = free_addrs(1)[0];
    let peers = vec![addr.to_string(), peer.to_string()];
    let c = cluster_config(&peers, &peers[0], probe);
    let ferry = Ferry::start_with(upstream, move |cfg| {
        cfg.listen = addr;
        cfg.cluster = Some(c);
        tweak(cfg);
    })
    .await;
    all_live(std::slice::from_ref(&ferry), 1).await;
    (ferry, peers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_dies_midway_is_finished_from_the_upstream_with_a_range() {
    let up = FakeRegistry::start().await;
    let size = 4 << 20;
    // The owner sends the first MiB and dies. The blob must be one it owns,
    // chosen once both addresses are known.
    let owner = scripted_owner(|data| RawBody::Bytes(data.slice(..1 << 20))).await;
    let peer = &owner.upstream;
    let (ferry, peers) =
        replica_with_peer(&up.url(), &peer.addr.to_string(), Duration::from_secs(60)).await;
    let (d, data) = blob_owned_by(&up, size, &peers, &peer.addr.to_string());
    *owner.blob.lock().unwrap() = data;

    // Four clients of the replica at once: all complete.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let url = ferry.url(&format!("/v2/x/blobs/{d}"));
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    for c in clients {
        let w = within(c).await.unwrap();
        assert_eq!(w.status, StatusCode::OK);
        assert_eq!(w.body_error, None, "a client saw an error, not a pause");
        assert_eq!(sha256(&w.body), d);
    }
    ferry.settle().await;
    assert!(ferry.has_blob(&d));
    assert_eq!(up.ranges(), vec![format!("bytes={}-", 1 << 20)]);
    let upstream_bytes = up.blob_bytes_sent(&d);
    assert_eq!(
        upstream_bytes,
        (size - (1 << 20)) as u64,
        "only the rest came upstream"
    );
    assert_eq!(peer.requests(), 2, "one probe and one fill from the owner");
    assert_eq!(ferry.fetch_failures("upstream"), 0);
    assert_eq!(
        ferry
            .app
            .metrics
            .cluster
            .fallbacks
            .get_or_create(&ferry::metrics::ReasonLabels { reason: "broken" })
            .get(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_sends_wrong_bytes_publishes_nothing_and_the_retry_comes_from_upstream() {
    let up = FakeRegistry::start().await;
    let size = 1 << 20;
    let owner = scripted_owner(|data| RawBody::Bytes(blob_bytes(data.len(), 1))).await;
    let liar = &owner.upstream;
    let (ferry, peers) =
        replica_with_peer(&up.url(), &liar.addr.to_string(), Duration::from_secs(60)).await;
    let (d, data) = blob_owned_by(&up, size, &peers, &liar.addr.to_string());
    *owner.blob.lock().unwrap() = data;
    let url = ferry.url(&format!("/v2/x/blobs/{d}"));
    let first = within(try_get(&url)).await;
    // Either the download fails at its held-back last byte, or (when the
    // lie was caught before the client's first byte) it is served from a
    // fresh download: never the lie as a whole.
    let complete = matches!(&first, Ok(w) if w.body_error.is_none() && w.status == StatusCode::OK);
    let right = matches!(&first, Ok(w) if sha256(&w.body) == d);
    assert!(
        !complete || right,
        "a lie was served whole ({:?})",
        first.map(|w| (w.status, w.body.len()))
    );
    ferry.settle().await;
    // Only the fresh download's verified bytes may be stored, never the lie.
    assert_eq!(ferry.has_blob(&d), right, "the lie was published");
    assert_eq!(ferry.fetch_failures("digest_mismatch"), 1);
    // The liar is left out; the client's retry is served from the upstream.
    let w = within(get(&url)).await;
    assert_eq!(sha256(&w.body), d);
    assert_eq!(up.blob_gets(&d), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_lied_stays_out_whatever_its_probes_say() {
    let up = FakeRegistry::start().await;
    let owner = scripted_owner(|data| RawBody::Bytes(blob_bytes(data.len(), 1))).await;
    let liar = owner.upstream.addr.to_string();
    // Probed every 20 ms: it answers every probe ready.
    let (ferry, peers) = replica_with_peer(&up.url(), &liar, Duration::from_millis(20)).await;
    let (d, data) = blob_owned_by(&up, 1 << 20, &peers, &liar);
    *owner.blob.lock().unwrap() = data;
    let _ = within(try_get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await;
    ferry.settle().await;
    assert_eq!(ferry.fetch_failures("digest_mismatch"), 1);
    // Many good probes later (each one a request to the liar), it is
    // still left out: it was trusted again on its next probe before.
    let after_lie = owner.upstream.requests();
    until(|| owner.upstream.requests() >= after_lie + 5).await;
    assert_eq!(
        ferry.app.metrics.cluster.peers_live.get(),
        0,
        "the liar is back in"
    );
    let (other, _) = blob_owned_by(&up, 4096, &peers, &liar);
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{other}")))).await;
    assert_eq!(sha256(&w.body), other);
    assert_eq!(up.blob_gets(&other), 1, "served from the upstream");
    assert_eq!(
        ferry.app.metrics.cluster.requests_out.get(),
        1,
        "the liar was asked again"
    );
    // Counted by peer and reason, and shown with its reason.
    let text = ferry.app.metrics.encode();
    let line = format!("ferry_cluster_peer_failures_total{{peer=\"{liar}\",reason=\"lied\"}} 1");
    assert!(text.contains(&line), "no {line} in\n{text}");
    let page = String::from_utf8(within(get(&ferry.url("/"))).await.body.to_vec()).unwrap();
    assert!(page.contains("left out: lied"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_path_gives_an_outsider_or_a_replay_no_more_than_a_client() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(blob_bytes(50_000, 850));
    let addr = free_addrs(1)[0];
    let peers = vec![addr.to_string(), "127.0.0.1:9".to_string()];
    let c = cluster_config(&peers, &peers[0], Duration::from_secs(60));
    let json = serde_json::json!({
        "http": {"accessControl": {"repositories": {"**": {"policies": [
            {"users": ["ci"], "actions": ["read"]}
        ]}}}},
        "extensions": {"sync": {"registries": [{"urls": [up.url()]}]}},
        "ferry": {"accessTokens": [{"user": "ci", "token": "tok-123"}]}
    });
    let ferry = Ferry::start_json(&json.to_string(), move |cfg| {
        cfg.listen = addr;
        cfg.cluster = Some(c);
    })
    .await;
    let path = format!("/v2/x/blobs/{d}");
    let url = ferry.url(&path);
    assert_eq!(within(get(&url)).await.status, StatusCode::UNAUTHORIZED);
    let route = format!("{} x", up.url().trim_start_matches("http://"));
    let route = route.as_str();

    // Peer headers signed with the wrong secret, or copied onto another
    // path, are ignored: an ordinary anonymous client.
    let forged = ferry::cluster::signature::sign(b"not the secret", &peer_request(&path, route));
    let copied = ferry::cluster::signature::sign(
        SECRET.as_bytes(),
        &peer_request("/v2/y/blobs/sha256:00", route),
    );
    for headers in [forged, copied] {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        let w = within(request(Method::GET, &url, &h)).await;
        assert_eq!(w.status, StatusCode::UNAUTHORIZED, "{h:?}");
    }
    // Both counted (and logged): a replica with the wrong secret is seen.
    assert_eq!(ferry.app.metrics.cluster.bad_signatures.get(), 2);
    // Signed for a tag list: the peer path is for blobs and manifests only.
    let mpath = "/v2/x/tags/list";
    let signed = ferry::cluster::signature::sign(SECRET.as_bytes(), &peer_request(mpath, route));
    let h: Vec<(&str, &str)> = signed
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
        .collect();
    let w = within(request(Method::GET, &ferry.url(mpath), &h)).await;
    assert_eq!(w.status, StatusCode::UNAUTHORIZED);
    // Signed with the cluster's secret, for this blob: served.
    let signed = ferry::cluster::signature::sign(SECRET.as_bytes(), &peer_request(&path, route));
    let h: Vec<(&str, &str)> = signed
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
        .collect();
    let w = within(request(Method::GET, &url, &h)).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), d);
    // The same signed request captured and sent again: refused (409), and
    // counted as a replay.
    let again = within(request(Method::GET, &url, &h)).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_ne!(sha256(&again.body), d, "a replay got the blob");
    assert_eq!(ferry.app.metrics.cluster.replayed.get(), 1);
    assert_eq!(ferry.app.metrics.cluster.bad_signatures.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_from_dns_and_this_replica_found_among_them() {
    let up = FakeRegistry::start().await;
    let addr = free_addrs(1)[0];
    let c = ClusterConfig {
        peers: PeerSource::Dns {
            name: "localhost".into(),
            port: addr.port(),
        },
        self_addr: None,
        secret: Secret::new(SECRET),
        probe_interval: Duration::from_millis(100),
        dns_interval: Duration::from_millis(100),
        peer_timeout: ferry::config::PEER_TIMEOUT,
        fanout: ferry::config::FANOUT,
        zone: None,
        https: false,
        cert_dir: None,
    };
    let ferry = Ferry::start_with(&up.url(), move |cfg| {
        cfg.listen = addr;
        cfg.cluster = Some(c);
    })
    .await;
    let cluster = ferry.app.cluster.clone().unwrap();
    within(async {
        while cluster.me().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(cluster.me(), Some(addr.to_string()));
    // `localhost` may also name [::1], where nothing listens: once probed,
    // it is left out.
    within(async {
        while cluster.peers().iter().any(|p| p.live) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Alone in the ring, it owns every blob: served from the upstream.
    let d = up.add_blob(blob_bytes(10_000, 860));
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await;
    assert_eq!(sha256(&w.body), d);
    assert_eq!(ferry.app.metrics.cluster.requests_out.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_is_revalidated_upstream_once_for_the_whole_cluster() {
    let up = FakeRegistry::start().await;
    let manifest = Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#,
    );
    let d = up.add_manifest(
        "app",
        Some("v1"),
        "application/vnd.oci.image.manifest.v1+json",
        manifest,
    );
    let replicas = cluster(&up.url(), 3).await;
    let path = "/v2/app/manifests/v1";
    let ask_all = || async {
        for r in &replicas {
            let w = within(get(&r.url(path))).await;
            assert_eq!(w.status, StatusCode::OK);
            assert_eq!(w.header("docker-content-digest"), Some(d.as_str()));
        }
    };
    ask_all().await;
    assert_eq!(
        up.hits("GET", path),
        1,
        "one upstream GET for three replicas"
    );
    assert_eq!(up.hits("HEAD", path), 0);
    // Past tagTTL on every replica: the owner revalidates once, with a HEAD.
    for r in &replicas {
        r.advance(Duration::from_secs(3600));
    }
    ask_all().await;
    assert_eq!(up.hits("GET", path), 1);
    assert_eq!(
        up.hits("HEAD", path),
        1,
        "one revalidation for three replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shared_bucket_the_owner_alone_uploads() {
    let up = FakeRegistry::start().await;
    let size = 2 << 20;
    let d = up.add_blob(blob_bytes(size, 870));
    let bucket = tempfile::tempdir().unwrap();
    let root = bucket.path().to_path_buf();
    let replicas = cluster_with(&up.url(), 3, |cfg| {
        cfg.shared = Some(ferry::config::SharedStorage::Filesystem { root: root.clone() });
    })
    .await;
    let clients: Vec<_> = (0..9)
        .map(|i| {
            let url = replicas[i % 3].url(&format!("/v2/x/blobs/{d}"));
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    for c in clients {
        assert_eq!(sha256(&within(c).await.unwrap().body), d);
    }
    for r in &replicas {
        r.settle().await;
    }
    within(async {
        while replicas
            .iter()
            .map(|r| r.app.metrics.shared_uploads.get())
            .sum::<u64>()
            < 1
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(up.blob_bytes_sent(&d), size as u64, "one upstream fetch");
    let uploads: Vec<u64> = replicas
        .iter()
        .map(|r| r.app.metrics.shared_uploads.get())
        .collect();
    assert_eq!(
        uploads.iter().sum::<u64>(),
        1,
        "one upload for the cluster: {uploads:?}"
    );
    let owner = owner_of(
        &replicas
            .iter()
            .map(|r| r.addr.to_string())
            .collect::<Vec<_>>(),
        &d,
    );
    let uploader = replicas
        .iter()
        .position(|r| r.app.metrics.shared_uploads.get() == 1)
        .unwrap();
    assert_eq!(
        replicas[uploader].addr.to_string(),
        owner,
        "the owner uploads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_slower_than_min_read_rate_is_left_for_the_upstream() {
    let up = FakeRegistry::start().await;
    let size = 1 << 20;
    // The owner sends a byte every 50 ms.
    let owner = scripted_owner(|data| RawBody::Drip {
        bytes: data.clone(),
        every: Duration::from_millis(50),
    })
    .await;
    let peer = &owner.upstream;
    let addr = free_addrs(1)[0];
    let peers = vec![addr.to_string(), peer.addr.to_string()];
    let c = cluster_config(&peers, &peers[0], Duration::from_secs(60));
    let ferry = Ferry::start_with(&up.url(), move |cfg| {
        cfg.listen = addr;
        cfg.cluster = Some(c);
        cfg.timeouts.idle_read = Duration::from_millis(500);
        cfg.timeouts.min_read_rate = 64 << 10;
    })
    .await;
    all_live(std::slice::from_ref(&ferry), 1).await;
    let (d, data) = blob_owned_by(&up, size, &peers, &peer.addr.to_string());
    *owner.blob.lock().unwrap() = data;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await;
    assert_eq!(w.body_error, None);
    assert_eq!(sha256(&w.body), d);
    let took = up.blob_bytes_sent(&d);
    assert!(
        took < size as u64,
        "the bytes the owner did send were kept ({took} from the upstream)"
    );
    assert_eq!(
        up.ranges().len(),
        1,
        "the rest came with one Range: {:?}",
        up.ranges()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_every_client_left_is_cancelled_on_both_replicas() {
    let up = FakeRegistry::start().await;
    let replicas = cluster_with(&up.url(), 2, |cfg| cfg.orphaned_bytes_per_registry = 0).await;
    let peers: Vec<String> = replicas.iter().map(|r| r.addr.to_string()).collect();
    // A blob replica 1 owns, asked of replica 0, stalling at its upstream
    // at 1 MiB and again at 2 MiB.
    let (first, second) = (Gate::new(), Gate::new());
    let size = 16 << 20;
    let (d, data) = (900u64..)
        .map(|seed| blob_bytes(size, seed))
        .map(|data| (sha256(&data), data))
        .find(|(d, _)| owner_of(&peers, d) == peers[1])
        .unwrap();
    let gates = vec![(1 << 20, first.clone()), (2 << 20, second.clone())];
    up.add_blob_as(&d, data, Fault::PauseAtEach(std::sync::Arc::new(gates)));
    start_and_leave(&replicas[0].url(&format!("/v2/x/blobs/{d}"))).await;
    first.reached().await;
    first.open();
    // Replica 0 gives its fill up once bytes come that nobody reads.
    until(|| replicas[0].fetch_failures("deserted") >= 1).await;
    // Replica 1's only reader was replica 0: once it has left, the next
    // bytes from the upstream nobody reads make replica 1 give up too.
    // (Letting them through earlier raced: replica 1 could store the
    // whole blob before replica 0's departure reached it.)
    // (Replica 1 may have given up already, on the bytes up to 2 MiB.)
    if let Some(flight) = replicas[1].app.coordinator.flight(&d.parse().unwrap()) {
        until(|| flight.clients() == 0).await;
    }
    second.open();
    until(|| replicas[1].fetch_failures("deserted") >= 1).await;
    for r in &replicas {
        r.settle().await;
        assert!(!r.has_blob(&d));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_take_no_fetch_slot_so_replicas_never_wait_on_each_other() {
    // One fetch slot per registry on every replica, and each replica asked
    // for a blob the next one owns: A fills from B, B from C, C from A.
    // When a fill held its replica's only slot while it waited, each owner
    // needed that very slot for the upstream fetch its asker waited on:
    // the three waited on each other until the peer timeout, then each
    // asker fetched upstream itself.
    let up = FakeRegistry::start().await;
    let replicas = cluster_with(&up.url(), 3, |cfg| cfg.max_fetches_per_registry = 1).await;
    let peers: Vec<String> = replicas.iter().map(|r| r.addr.to_string()).collect();
    let blobs: Vec<(String, Bytes)> = (0..3)
        .map(|i| blob_owned_by(&up, 1 << 20, &peers, &peers[(i + 1) % 3]))
        .collect();
    let pulls: Vec<_> = blobs
        .iter()
        .enumerate()
        .map(|(i, (d, _))| {
            let url = replicas[i].url(&format!("/v2/x/blobs/{d}"));
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    for (pull, (d, _)) in pulls.into_iter().zip(&blobs) {
        let w = within(pull).await.unwrap();
        assert_eq!(w.status, StatusCode::OK);
        assert_eq!(&sha256(&w.body), d);
    }
    for r in &replicas {
        r.settle().await;
    }
    for (d, _) in &blobs {
        assert_eq!(up.blob_gets(d), 1, "{d}: one upstream GET, by its owner");
    }
    for r in &replicas {
        let text = r.app.metrics.encode();
        assert!(
            !text.contains("ferry_cluster_fallbacks_total{"),
            "a fill fell back: {}",
            text.lines()
                .filter(|l| l.contains("fallbacks"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_order_their_registries_differently_serve_each_its_own_image() {
    // A rolling config change: replica 0 lists [r1, r2], replica 1 lists
    // [r2, r1]. Both registries have `app` with the same tags and other
    // images; each replica's clients must get the image their replica's
    // config routes to (r1's on replica 0, r2's on replica 1), whichever
    // replica owns the tag. Named by position, 8 of 8 tags asked through
    // the other replica were the other registry's image.
    let (r1, r2) = (FakeRegistry::start().await, FakeRegistry::start().await);
    let manifest = |from: &str, tag: &str| {
        Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}},"layers":[],"annotations":{{"from":"{from}","tag":"{tag}"}}}}"#
        ))
    };
    let media = "application/vnd.oci.image.manifest.v1+json";
    let tags: Vec<String> = (0..8).map(|i| format!("v{i}")).collect();
    for t in &tags {
        r1.add_manifest("app", Some(t), media, manifest("r1", t));
        r2.add_manifest("app", Some(t), media, manifest("r2", t));
    }
    let addrs = free_addrs(2);
    let peers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let mut replicas = Vec::new();
    for (i, order) in [[r1.url(), r2.url()], [r2.url(), r1.url()]]
        .iter()
        .enumerate()
    {
        let json = serde_json::json!({"extensions": {"sync": {"enable": true, "registries": [
            {"urls": [order[0]]}, {"urls": [order[1]]}
        ]}}});
        let c = cluster_config(&peers, &peers[i], Duration::from_millis(100));
        let addr = addrs[i];
        replicas.push(
            Ferry::start_json(&json.to_string(), move |cfg| {
                cfg.listen = addr;
                cfg.cluster = Some(c);
            })
            .await,
        );
    }
    all_live(&replicas, 1).await;
    for t in &tags {
        for (i, (replica, from)) in replicas.iter().zip(["r1", "r2"]).enumerate() {
            let w = within(get(&replica.url(&format!("/v2/app/manifests/{t}")))).await;
            assert_eq!(w.status, StatusCode::OK);
            let got = String::from_utf8_lossy(&w.body).into_owned();
            assert_eq!(
                got,
                String::from_utf8_lossy(&manifest(from, t)),
                "{t} through replica {i}"
            );
        }
    }
    // Each registry was asked for each tag once, by the replica that owns
    // it or by the one that routes there.
    let asked: usize = tags
        .iter()
        .map(|t| r1.hits("GET", &format!("/v2/app/manifests/{t}")))
        .sum();
    assert!(
        asked >= tags.len(),
        "r1 asked {asked} times for {} tags",
        tags.len()
    );
}

/// A scripted peer that answers its probes until `frozen` is set, and
/// then nothing at all (a process stopped with SIGSTOP); a blob request
/// gets `blob` (set once chosen) as `send` makes it, and may freeze it.
async fn freezing_peer(
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    blob: std::sync::Arc<std::sync::Mutex<Bytes>>,
    send: impl Fn(&Bytes) -> RawBody + Send + Sync + 'static,
) -> RawUpstream {
    use std::sync::atomic::Ordering;
    RawUpstream::start(move |req| {
        if frozen.load(Ordering::SeqCst) {
            return RawReply::new("200 OK", &[], RawBody::Frozen);
        }
        if req.path == "/readyz" {
            let empty = RawBody::Bytes(Bytes::new());
            return RawReply::new("200 OK", &[("Content-Length", "0".into())], empty);
        }
        let data = blob.lock().unwrap().clone();
        let body = send(&data);
        let mut headers = vec![("Content-Length", data.len().to_string())];
        headers.push(signed_answer(req, 200, &headers));
        RawReply::new("200 OK", &headers, body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_freezes_before_answering_is_left_within_a_probe() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let up = FakeRegistry::start().await;
    let frozen = std::sync::Arc::new(AtomicBool::new(false));
    let blob = std::sync::Arc::new(std::sync::Mutex::new(Bytes::new()));
    let peer = freezing_peer(frozen.clone(), blob.clone(), |d| RawBody::Bytes(d.clone())).await;
    let owner = peer.addr.to_string();
    let (ferry, peers) = replica_with_peer(&up.url(), &owner, Duration::from_millis(50)).await;
    let (d, data) = blob_owned_by(&up, 1 << 20, &peers, &owner);
    *blob.lock().unwrap() = data;
    frozen.store(true, Ordering::SeqCst);
    // Asked at once: the fill waits on the frozen owner until its next
    // probe fails, not for the time an upstream may take to answer (40 s).
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), d);
    assert_eq!(up.blob_gets(&d), 1);
    assert_left_out_once(&ferry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_freezes_mid_transfer_is_left_within_a_probe() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let up = FakeRegistry::start().await;
    let frozen = std::sync::Arc::new(AtomicBool::new(false));
    let blob = std::sync::Arc::new(std::sync::Mutex::new(Bytes::new()));
    let f = frozen.clone();
    // Half the blob, then the owner freezes: silent, probes included.
    let peer = freezing_peer(frozen.clone(), blob.clone(), move |d| {
        f.store(true, Ordering::SeqCst);
        RawBody::ThenHang(d.slice(..d.len() / 2))
    })
    .await;
    let owner = peer.addr.to_string();
    // An idle timeout longer than any test step may take: only leaving
    // the frozen owner at its failed probe ends the wait.
    let (ferry, peers) =
        replica_with_peer_and(&up.url(), &owner, Duration::from_millis(50), |cfg| {
            cfg.timeouts.idle_read = Duration::from_secs(600)
        })
        .await;
    let size = 4 << 20;
    let (d, data) = blob_owned_by(&up, size, &peers, &owner);
    *blob.lock().unwrap() = data;
    // The rest comes from the upstream once a probe finds the owner
    // frozen, not after the upstream's idle timeout.
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), d);
    assert!(
        up.blob_bytes_sent(&d) <= size as u64 / 2 + (1 << 20),
        "only the rest from the upstream: {} bytes",
        up.blob_bytes_sent(&d)
    );
    assert_left_out_once(&ferry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_answer_without_the_owners_signature_is_not_believed() {
    let media = "application/vnd.oci.image.manifest.v1+json";
    // What a peer without the secret answers for the tag: a manifest that
    // names a layer of another repository (the upstream's has none), or a
    // 404 for a tag that exists.
    let forged = Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":1}]}"#,
    );
    let forged_digest = sha256(&forged);
    for answer in ["forged manifest", "404"] {
        let up = FakeRegistry::start().await;
        let real = Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"{media}","layers":[]}}"#
        ));
        let forged = forged.clone();
        let digest = forged_digest.clone();
        let liar = RawUpstream::start(move |req| {
            if req.path == "/readyz" {
                let empty = RawBody::Bytes(Bytes::new());
                return RawReply::new("200 OK", &[("Content-Length", "0".into())], empty);
            }
            if answer == "404" {
                let empty = RawBody::Bytes(Bytes::new());
                return RawReply::new("404 Not Found", &[("Content-Length", "0".into())], empty);
            }
            let headers = [
                ("Content-Length", forged.len().to_string()),
                ("Content-Type", media.to_string()),
                ("Docker-Content-Digest", digest.clone()),
            ];
            RawReply::new("200 OK", &headers, RawBody::Bytes(forged.clone()))
        })
        .await;
        let peer = liar.addr.to_string();
        let (ferry, peers) = replica_with_peer(&up.url(), &peer, Duration::from_secs(60)).await;
        let registry = up.url().trim_start_matches("http://").to_string();
        let tag = (0..)
            .map(|i| format!("v{i}"))
            .find(|t| {
                let key = format!("tag {registry} app:{t}");
                rendezvous::rank(peers.iter().map(String::as_str), key.as_bytes())[0] == peer
            })
            .unwrap();
        up.add_manifest("app", Some(&tag), media, real.clone());
        let w = within(get(&ferry.url(&format!("/v2/app/manifests/{tag}")))).await;
        assert_eq!(w.status, StatusCode::OK, "{answer}");
        assert_eq!(w.body, real, "{answer}: the upstream's manifest");
        assert!(liar.requests() >= 1, "{answer}: the peer was asked");
        let text = ferry.app.metrics.encode();
        let line =
            format!("ferry_cluster_peer_failures_total{{peer=\"{peer}\",reason=\"unsigned\"}} 1");
        assert!(text.contains(&line), "{answer}: no {line}");
    }
}

/// The one fill of the test fell back because its owner left the ring.
fn assert_left_out_once(ferry: &Ferry) {
    let text = ferry.app.metrics.encode();
    assert!(
        text.contains(r#"ferry_cluster_fallbacks_total{reason="left_out"} 1"#),
        "{}",
        text.lines()
            .filter(|l| l.contains("cluster"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
