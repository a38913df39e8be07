//! An owner that dies mid-pull, at several points of its transfer: the
//! blob's next owner goes on with the one upstream download from the bytes
//! it has, and the other replicas go on from it, so the upstream sends the
//! blob about once, not once more per surviving replica.

use super::*;

use std::sync::Arc;

/// A replica in its own runtime on its own thread, so that it can die as
/// a killed process does: every task and socket dropped at once, mid-write,
/// with no graceful shutdown.
pub(super) struct Doomed {
    pub(super) app: Arc<ferry::App>,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Doomed {
    pub(super) async fn start(
        upstream: String,
        addr: SocketAddr,
        cluster: ClusterConfig,
    ) -> Doomed {
        let (ready, started) = tokio::sync::oneshot::channel();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let ferry = rt.block_on(Ferry::start_with(&upstream, move |cfg| {
                cfg.listen = addr;
                cfg.cluster = Some(cluster);
            }));
            let _ = ready.send(ferry.app.clone());
            let _ = rt.block_on(killed);
            rt.shutdown_background();
            drop(ferry);
        });
        Doomed {
            app: started.await.expect("the doomed replica started"),
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    pub(super) async fn kill(mut self) {
        let _ = self.kill.take().unwrap().send(());
        let thread = self.thread.take().unwrap();
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
    }
}

/// Three replicas; the owner of a cold 4 MiB blob dies once it has sent
/// `at` bytes to the two others, whose clients all want the blob. Returns
/// the bytes the three replicas read from the upstream (the fake upstream
/// counts what it wrote into the dead owner's socket after its death too)
/// and the handovers counted.
async fn kill_the_owner_at(at: u64) -> (u64, u64) {
    let up = FakeRegistry::start().await;
    let size = 4 << 20;
    let addrs = free_addrs(3);
    let peers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let gate = Gate::new();
    let (d, data) = (900..)
        .map(|seed| blob_bytes(size, seed))
        .map(|data| (sha256(&data), data))
        .find(|(d, _)| owner_of(&peers, d) == peers[0])
        .unwrap();
    up.add_blob_with(data, Fault::PauseAt(at, gate.clone()));
    let probe = Duration::from_millis(100);
    let owner = Doomed::start(up.url(), addrs[0], cluster_config(&peers, &peers[0], probe)).await;
    let mut others = Vec::new();
    for i in 1..3 {
        let (addr, c) = (addrs[i], cluster_config(&peers, &peers[i], probe));
        others.push(
            Ferry::start_with(&up.url(), move |cfg| {
                cfg.listen = addr;
                cfg.cluster = Some(c);
            })
            .await,
        );
    }
    all_live(&others, 2).await;
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let url = others[i % 2].url(&format!("/v2/x/blobs/{d}"));
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    // The owner has `at` bytes, both others asked it, and every byte it
    // had reached them.
    within(gate.reached()).await;
    let app = owner.app.clone();
    until(|| app.metrics.cluster.requests_in.get() == 2).await;
    until(|| {
        others
            .iter()
            .all(|r| r.app.metrics.cluster.peer_bytes.get() == at)
    })
    .await;
    let owner_app = owner.app.clone();
    owner.kill().await;
    gate.open();
    for c in clients {
        let w = within(c).await.unwrap();
        assert_eq!(w.status, StatusCode::OK, "killed at {at}");
        assert_eq!(sha256(&w.body), d, "killed at {at}");
    }
    for r in &others {
        r.settle().await;
        assert!(r.has_blob(&d), "killed at {at}: a replica did not store it");
    }
    let handovers = others
        .iter()
        .map(|r| r.app.metrics.cluster.handovers.get())
        .sum();
    let read =
        upstream_bytes_of(&owner_app) + others.iter().map(|r| r.upstream_bytes()).sum::<u64>();
    (read, handovers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_killed_at_any_point_costs_the_upstream_about_one_blob() {
    let size = 4u64 << 20;
    for at in [0, size / 2, size * 9 / 10] {
        let (sent, handovers) = kill_the_owner_at(at).await;
        eprintln!(
            "owner killed at byte {at}: upstream {:.3}x the blob",
            sent as f64 / size as f64
        );
        // Each surviving replica going on from the upstream on its own
        // would read 1 + (1 - at/size) blobs, up to 2.
        assert!(
            sent as f64 <= 1.15 * size as f64,
            "killed at {at}: the replicas read {sent} upstream bytes of a {size}-byte blob"
        );
        assert_eq!(
            handovers, 1,
            "killed at {at}: one replica went on from the next owner"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_owner_takes_what_a_replica_ahead_has_before_the_upstream() {
    // The owner (scripted) sent 3 MiB to replica C and 1 MiB to replica B
    // (the next owner), then died for both: C's transfer breaks, B's goes
    // silent while the owner claims to have it all. B takes 1..3 MiB from
    // C, then the rest from the upstream; C takes the rest from B.
    let up = FakeRegistry::start().await;
    let size: usize = 8 << 20;
    let (ahead, behind) = (3u64 << 20, 1u64 << 20);
    let addrs = free_addrs(2);
    let blob = Arc::new(std::sync::Mutex::new(Bytes::new()));
    let b = blob.clone();
    let c_addr = addrs[1].to_string();
    let owner = RawUpstream::start(move |req| {
        if req.path == "/readyz" {
            let empty = RawBody::Bytes(Bytes::new());
            return RawReply::new("200 OK", &[("Content-Length", "0".into())], empty);
        }
        let data = b.lock().unwrap().clone();
        let mut headers = vec![
            ("Content-Length", data.len().to_string()),
            (ferry::cluster::signature::HAVE, data.len().to_string()),
        ];
        headers.push(signed_answer(req, 200, &headers));
        let from_c = req.head.contains(&format!("ferry-peer: {c_addr}"));
        let body = match (req.method.as_str(), from_c) {
            ("HEAD", _) => RawBody::Bytes(Bytes::new()),
            (_, true) => RawBody::Bytes(data.slice(..ahead as usize)),
            (_, false) => RawBody::ThenHang(data.slice(..behind as usize)),
        };
        RawReply::new("200 OK", &headers, body)
    })
    .await;
    let mut peers: Vec<String> = vec![owner.addr.to_string()];
    peers.extend(addrs.iter().map(|a| a.to_string()));
    // A blob the scripted owner owns, whose next owner is B (peers[1]).
    let (d, data) = (5000..)
        .map(|seed| blob_bytes(size, seed))
        .map(|data| (sha256(&data), data))
        .find(|(d, _)| {
            let rank = rendezvous::rank(peers.iter().map(String::as_str), d.as_bytes());
            rank[0] == peers[0] && rank[1] == peers[1]
        })
        .unwrap();
    up.add_blob(data.clone());
    *blob.lock().unwrap() = data;
    let mut replicas = Vec::new();
    for i in 1..3 {
        let mut c = cluster_config(&peers, &peers[i], Duration::from_millis(100));
        c.peer_timeout = Duration::from_millis(300);
        let addr = addrs[i - 1];
        replicas.push(
            Ferry::start_with(&up.url(), move |cfg| {
                cfg.listen = addr;
                cfg.cluster = Some(c);
            })
            .await,
        );
    }
    all_live(&replicas, 2).await;
    let (b_replica, c_replica) = (&replicas[0], &replicas[1]);
    let urls = [b_replica, c_replica].map(|r| r.url(&format!("/v2/x/blobs/{d}")));
    // B first, so that it is receiving the blob when C's transfer breaks
    // and C looks for the next owner (one that is not receiving it is not
    // handed the blob).
    let mut clients = Vec::new();
    for url in urls {
        clients.push(tokio::spawn(async move { get(&url).await }));
        until(|| b_replica.app.metrics.cluster.peer_bytes.get() == behind).await;
    }
    for c in clients {
        let w = within(c).await.unwrap();
        assert_eq!(w.status, StatusCode::OK);
        assert_eq!(sha256(&w.body), d);
    }
    assert_eq!(b_replica.app.metrics.cluster.catch_ups.get(), 1);
    assert_eq!(c_replica.app.metrics.cluster.handovers.get(), 1);
    // Only what no replica had came from the upstream.
    assert_eq!(up.blob_bytes_sent(&d), size as u64 - ahead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_owner_that_was_not_receiving_the_blob_is_not_handed_it() {
    // Only replica R's clients wanted the blob: its next owner B has none
    // of it when the owner dies. R goes on from the upstream itself
    // instead of making B start a second download from byte 0.
    let up = FakeRegistry::start().await;
    let size: usize = 4 << 20;
    let sent = 1u64 << 20;
    let blob = Arc::new(std::sync::Mutex::new(Bytes::new()));
    let b = blob.clone();
    let owner = RawUpstream::start(move |req| {
        if req.path == "/readyz" {
            let empty = RawBody::Bytes(Bytes::new());
            return RawReply::new("200 OK", &[("Content-Length", "0".into())], empty);
        }
        let data = b.lock().unwrap().clone();
        let mut headers = vec![("Content-Length", data.len().to_string())];
        headers.push(signed_answer(req, 200, &headers));
        // 1 MiB, then the connection closes: it died.
        RawReply::new(
            "200 OK",
            &headers,
            RawBody::Bytes(data.slice(..sent as usize)),
        )
    })
    .await;
    let addrs = free_addrs(2);
    let mut peers = vec![owner.addr.to_string()];
    peers.extend(addrs.iter().map(|a| a.to_string()));
    // Owned by the scripted owner; next owner B (peers[2]), asked by R.
    let (d, data) = (9000..)
        .map(|seed| blob_bytes(size, seed))
        .map(|data| (sha256(&data), data))
        .find(|(d, _)| {
            let rank = rendezvous::rank(peers.iter().map(String::as_str), d.as_bytes());
            rank[0] == peers[0] && rank[1] == peers[2]
        })
        .unwrap();
    up.add_blob(data.clone());
    *blob.lock().unwrap() = data;
    let mut replicas = Vec::new();
    for i in 1..3 {
        let c = cluster_config(&peers, &peers[i], Duration::from_millis(100));
        let addr = addrs[i - 1];
        replicas.push(
            Ferry::start_with(&up.url(), move |cfg| {
                cfg.listen = addr;
                cfg.cluster = Some(c);
            })
            .await,
        );
    }
    all_live(&replicas, 2).await;
    let (r, next) = (&replicas[0], &replicas[1]);
    let w = within(get(&r.url(&format!("/v2/x/blobs/{d}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), d);
    assert_eq!(up.blob_gets(&d), 1, "one upstream download, R's");
    assert_eq!(up.blob_bytes_sent(&d), size as u64 - sent);
    assert_eq!(r.app.metrics.cluster.handovers.get(), 0);
    next.settle().await;
    assert!(!next.has_blob(&d), "the next owner did not download it");
}
