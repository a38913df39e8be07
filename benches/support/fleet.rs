//! Scenario 10, the fleet: one cold blob pulled at once by 24 clients
//! spread round-robin over 12 replica processes, with the fan-out tree
//! (`fanout` 4) and without it (`fanout` past the replica count: the owner
//! sends N-1 copies), beside the same pull over 3 replicas; then the tree
//! once more with a relay killed at a third of the blob. What matters is
//! the most one replica sends to peers (its egress), upstream bytes, and
//! the slowest client. Knobs: `FERRY_BENCH_FLEET_REPLICAS` (12),
//! `FERRY_BENCH_FLEET_CLIENTS` (24).

use std::time::Duration;

use super::cluster::{metric, start_replicas};
use super::harness::{pull, Bench, Mirror, Pull, Table};

/// One pull of the fleet and what the replicas counted.
struct Fleet {
    pulls: Vec<Pull>,
    upstream: f64,
    /// Bytes each replica sent to peers, over the blob's size.
    sent: Vec<f64>,
    /// CPU seconds of all replicas (the killed one's not counted).
    cpu: f64,
    killed: bool,
}

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub async fn scenario_fleet(bench: &Bench, table: &mut Table) {
    let n = knob("FERRY_BENCH_FLEET_REPLICAS", 12);
    let clients = knob("FERRY_BENCH_FLEET_CLIENTS", 24);
    let fanout = ferry::config::FANOUT;
    let ferry = &bench.targets[1];
    let runs = [
        (
            format!("fleet: 3 replicas, tree (fanout {fanout})"),
            3,
            fanout,
            false,
        ),
        (format!("fleet: {n} replicas, owner only"), n, 1024, false),
        (
            format!("fleet: {n} replicas, tree (fanout {fanout})"),
            n,
            fanout,
            false,
        ),
        (
            format!("fleet: {n} replicas, tree, a relay killed at 1/3"),
            n,
            fanout,
            true,
        ),
    ];
    for (label, n, fanout, kill) in runs {
        eprintln!("== {label}, {clients} clients");
        let f = run(bench, n, clients, fanout, kill).await;
        if kill {
            table.set(ferry, &format!("{label}: a relay was killed"), f.killed);
        }
        // `record` names the clients that completed (a killed replica's
        // own clients do not).
        super::record(table, ferry, &label, &f.pulls);
        let label = format!("{label}, {clients} clients");
        table.set(
            ferry,
            &format!("{label}: upstream bytes / blob"),
            f.upstream,
        );
        let most = f.sent.iter().copied().fold(0.0, f64::max);
        let all: f64 = f.sent.iter().sum();
        table.set(
            ferry,
            &format!("{label}: most sent to peers by one replica / blob"),
            most,
        );
        table.set(
            ferry,
            &format!("{label}: sent to peers by all replicas / blob"),
            all,
        );
        table.set(ferry, &format!("{label}: CPU seconds, all replicas"), f.cpu);
        let sent: Vec<String> = f.sent.iter().map(|s| format!("{s:.2}")).collect();
        eprintln!("   sent to peers / blob, by replica: {}", sent.join(" "));
    }
}

async fn run(bench: &Bench, n: usize, clients: usize, fanout: usize, kill: bool) -> Fleet {
    let mut replicas: Vec<Option<Mirror>> = start_replicas(&bench.upstream.url(), n, Some(fanout))
        .await
        .into_iter()
        .map(Some)
        .collect();
    let size = bench.blob_size() as u64;
    let digest = bench.new_blob();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let url = replicas[i % n].as_ref().unwrap().blob_url(&digest);
            let d = digest.clone();
            (
                i % n,
                tokio::spawn(async move { pull(&url, Some(&d)).await }),
            )
        })
        .collect();
    let killed = match kill {
        true => kill_a_relay(&mut replicas, size).await,
        false => None,
    };
    let mut pulls = Vec::new();
    for (replica, task) in tasks {
        // The killed replica's own clients lose their connection (behind
        // a balancer they would retry elsewhere); its descendants must not.
        match task.await {
            _ if Some(replica) == killed => {}
            Ok(p) => pulls.push(p),
            Err(e) => panic!("a client of replica {replica}: {e}"),
        }
    }
    let mut upstream = 0;
    let mut sent = Vec::new();
    let mut cpu = 0.0;
    for r in replicas.iter().flatten() {
        cpu += r.cpu_seconds().unwrap_or(0.0);
        upstream += metric(r, "ferry_upstream_bytes_total").await;
        sent.push(metric(r, "ferry_cluster_peer_bytes_sent_total").await as f64 / size as f64);
    }
    Fleet {
        pulls,
        upstream: upstream as f64 / size as f64,
        sent,
        cpu,
        killed: killed.is_some(),
    }
}

/// Once the owner has a third of the blob, kills (SIGKILL) the replica
/// that relays it to the most peers and reads nothing from the upstream;
/// returns its index (its upstream bytes are none, so the sum stays
/// right). `None` when no relay was found before the pull ended (a small
/// blob in the smoke run).
async fn kill_a_relay(replicas: &mut [Option<Mirror>], size: u64) -> Option<usize> {
    loop {
        let mut fetched = 0;
        for r in replicas.iter().flatten() {
            fetched += metric(r, "ferry_upstream_bytes_total").await;
        }
        if fetched >= size / 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seen = Vec::new();
    let (victim, children) = 'found: {
        for _ in 0..100 {
            seen.clear();
            let mut best = (0, 0);
            for (i, r) in replicas.iter().enumerate() {
                let r = r.as_ref().unwrap();
                let streams = metric(r, "ferry_cluster_peer_streams").await;
                let own = metric(r, "ferry_upstream_bytes_total").await;
                seen.push((streams, own));
                if own == 0 && streams > best.1 {
                    best = (i, streams);
                }
            }
            if best.1 > 0 {
                break 'found best;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("   no relay to kill (peer streams, upstream bytes by replica: {seen:?})");
        return None;
    };
    eprintln!("   killing replica {victim}, relaying to {children} peers");
    drop(replicas[victim].take());
    Some(victim)
}
