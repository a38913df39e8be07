//! An owner that dies mid-pull, at several points of its transfer: the
//! blob's next owner goes on with the one upstream download from the bytes
//! it has, and the other replicas go on from it, so the upstream sends the
//! blob about once, not once more per surviving replica.

use super::*;

use std::sync::Arc;

/// A replica in its own runtime on its own thread, so that it can die as
/// a killed process does: every task and socket dropped at once, mid-write,
/// with no graceful shutdown.
struct Doomed {
    app: Arc<ferry::App>,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Doomed {
    async fn start(upstream: String, addr: SocketAddr, cluster: ClusterConfig) -> Doomed {
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

    async fn kill(mut self) {
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
