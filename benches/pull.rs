//! `cargo bench`: ferry side by side with the direct upstream (and, when
//! `scripts/bench-compare.sh` starts them, CNCF Distribution and nginx), in
//! one run.
//!
//! A throttled fake upstream registry runs in this process; ferry, built in
//! release mode, runs as a child process with a fresh store for every
//! scenario; clients on loopback. Scenarios:
//!
//! 1. cold single client: time to first byte and total;
//! 2. warm single client: throughput (the client discards the bytes);
//! 3. N cold clients at once (N = 8 and 64): first byte and total (median,
//!    max), digests, upstream bytes / blob size;
//! 4. a late joiner, 2 s after the first client: its first byte and total;
//! 5. a Range at the end of a blob not yet cached: status and time;
//! 6. cached small objects (4 KiB blobs and a manifest) at 64 connections:
//!    requests/s, p50 and p99 latency;
//! 7. a 20-layer image pulled with skopeo, cold then warm (when installed);
//! 8. ferry's cost: peak RSS and CPU seconds per GiB served (from /proc);
//! 9. three replicas, 16 cold clients spread round-robin over them, with
//!    and without `ferry.cluster`: first byte, total, upstream bytes, and
//!    the bytes replicas received from peers (the owner's egress); the
//!    direct column is 16 clients straight at the upstream.
//! 10. the fleet (`support/fleet.rs`): 24 cold clients over 12 replicas
//!     with the fan-out tree and without it (the owner sends N-1 copies),
//!     beside 3 replicas, and the tree with a relay killed: the most one
//!     replica sends to peers, upstream bytes, first byte and total.
//!
//! Knobs (environment): `FERRY_BENCH_SIZE_MIB` (1024),
//! `FERRY_BENCH_RATE_MBPS` (128, per connection), `FERRY_BENCH_CLIENTS`
//! ("8,64"), `FERRY_BENCH_LATE_MS` (2000), `FERRY_BENCH_SMALL_SECS` (20),
//! `FERRY_BENCH_UPSTREAM_PORT` (0: any), `FERRY_BENCH_MIRRORS`
//! (`name=url,...`: other mirrors of this upstream to measure),
//! `FERRY_BENCH_BEFORE` (a shell command run once the upstream listens,
//! e.g. to start those mirrors), `FERRY_BENCH_ONLY` ("1,3": only these
//! scenarios; 1 runs 2 and 8's CPU figures too). Results are
//! printed and written to `target/ferry-bench/pull.{json,md}`.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "support/harness.rs"]
mod harness;

#[path = "support/cluster.rs"]
mod cluster;

#[path = "support/fleet.rs"]
mod fleet;

use std::time::Duration;

use harness::*;

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and harness probes
    }
    let opts = Options::from_env();
    eprintln!(
        "ferry bench: blob {} MiB, upstream {} MB/s per connection, clients {:?}",
        opts.size >> 20,
        opts.rate / 1_000_000,
        opts.clients
    );
    let bench = Bench::start(&opts).await;
    let mut table = Table::new(&bench.targets);

    for t in &bench.targets {
        eprintln!("== {}", t.name);
        // 1 + 2 + 8 (cold and warm cost).
        if opts.runs(1) {
            let m = t.open(&bench).await;
            let digest = bench.new_blob();
            let cpu0 = m.cpu_seconds();
            let cold = pull(&m.blob_url(&digest), Some(&digest)).await;
            let cpu1 = m.cpu_seconds();
            table.set(t, "cold 1 client: first byte (ms)", ms(cold.first_byte));
            table.set(t, "cold 1 client: total (s)", cold.total.as_secs_f64());
            if t.is_mirror() {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let warm = pull(&m.blob_url(&digest), None).await;
                let cpu2 = m.cpu_seconds();
                table.set(
                    t,
                    "warm 1 client: throughput (MB/s)",
                    mbps(opts.size, warm.total),
                );
                if let (Some(a), Some(b), Some(c)) = (cpu0, cpu1, cpu2) {
                    let gib = opts.size as f64 / (1u64 << 30) as f64;
                    table.set(t, "cost: CPU s per GiB, cold", (b - a) / gib);
                    table.set(t, "cost: CPU s per GiB, warm", (c - b) / gib);
                }
            }
            drop(m);
        }

        // 3 (+ 8: peak RSS).
        for &n in opts.clients.iter().filter(|_| opts.runs(3)) {
            let m = t.open(&bench).await;
            let digest = bench.new_blob();
            let pulls = pull_many(&m.blob_url(&digest), &digest, n).await;
            let fb: Vec<f64> = pulls.iter().map(|p| ms(p.first_byte)).collect();
            let tot: Vec<f64> = pulls.iter().map(|p| p.total.as_secs_f64()).collect();
            let ok = pulls
                .iter()
                .all(|p| p.digest_ok && p.bytes == opts.size as u64);
            table.set(
                t,
                &format!("cold {n} clients: first byte median/max (ms)"),
                pair(median(&fb), max(&fb)),
            );
            table.set(
                t,
                &format!("cold {n} clients: total median/max (s)"),
                pair(median(&tot), max(&tot)),
            );
            table.set(t, &format!("cold {n} clients: all digests correct"), ok);
            table.set(
                t,
                &format!("cold {n} clients: upstream bytes / blob"),
                bench.upstream.blob_bytes_sent(&digest) as f64 / opts.size as f64,
            );
            if let Some(rss) = m.peak_rss_mib() {
                table.set(t, &format!("cost: peak RSS at {n} clients (MiB)"), rss);
            }
            if let Some(anon) = m.peak_anon_mib() {
                table.set(
                    t,
                    &format!("cost: peak anonymous RSS at {n} clients (MiB)"),
                    anon,
                );
            }
            table.series(t, n, tot);
        }

        // 4 and 5.
        if opts.runs(4) || opts.runs(5) {
            let m = t.open(&bench).await;
            let digest = bench.new_blob();
            let url = m.blob_url(&digest);
            let first = {
                let (url, d) = (url.clone(), digest.clone());
                tokio::spawn(async move { pull(&url, Some(&d)).await })
            };
            tokio::time::sleep(opts.late).await;
            let late = pull(&url, Some(&digest)).await;
            let first = first.await.unwrap();
            table.set(t, "late joiner: first byte (ms)", ms(late.first_byte));
            table.set(t, "late joiner: total (s)", late.total.as_secs_f64());
            table.set(
                t,
                "late joiner: digests correct",
                late.digest_ok && first.digest_ok,
            );
            table.set(
                t,
                "late joiner: upstream bytes / blob",
                bench.upstream.blob_bytes_sent(&digest) as f64 / opts.size as f64,
            );

            // 5.
            let digest = bench.new_blob();
            let (status, took) = range_tail(&m.blob_url(&digest), opts.size).await;
            table.set(
                t,
                "range on an uncached blob: status, time (ms)",
                format!("{status}, {:.1}", ms(took)),
            );
            drop(m);
        }

        // 6 and 7.
        if !(opts.runs(6) || opts.runs(7)) {
            continue;
        }
        let m = t.open(&bench).await;
        let paths = bench.small_objects(&m).await;
        let load = hammer(&m.base, &paths, 64, opts.small_for).await;
        table.set(t, "small cached objects, 64 conns: requests/s", load.rps);
        table.set(
            t,
            "small cached objects, 64 conns: p50/p99 (ms)",
            pair(load.p50, load.p99),
        );
        table.set(
            t,
            "small cached objects, 64 conns: errors",
            load.errors as f64,
        );

        // 7.
        if skopeo_available() {
            let image = bench.new_image(20);
            let cold = skopeo_pull(&m.base, &image).await;
            table.set(t, "skopeo 20-layer image: cold (s)", cold);
            if t.is_mirror() {
                let warm = skopeo_pull(&m.base, &image).await;
                table.set(t, "skopeo 20-layer image: warm (s)", warm);
            }
        }
        drop(m);
    }

    if opts.runs(9) {
        scenario_cluster(&bench, &mut table).await;
    }
    if opts.runs(10) {
        fleet::scenario_fleet(&bench, &mut table).await;
    }
    table.finish(&opts);
}

/// 9: three replicas, 16 clients round-robin, with and without the cluster.
async fn scenario_cluster(bench: &Bench, table: &mut Table) {
    const CLIENTS: usize = 16;
    let size = bench.blob_size() as f64;
    let (direct, ferry) = (&bench.targets[0], &bench.targets[1]);
    eprintln!("== 3 replicas, {CLIENTS} clients round-robin");
    let digest = bench.new_blob();
    let urls = vec![format!("{}/v2/bench/blob/blobs/{digest}", bench.upstream.url()); CLIENTS];
    let pulls = pull_each(&urls, &digest).await;
    let sent = bench.upstream.blob_bytes_sent(&digest) as f64 / size;
    for label in ["3 replicas, no cluster", "3 replicas, cluster"] {
        record(table, direct, label, &pulls);
        table.set(
            direct,
            &format!("{label}, {CLIENTS} clients: upstream bytes / blob"),
            sent,
        );
    }
    for (clustered, label) in [
        (false, "3 replicas, no cluster"),
        (true, "3 replicas, cluster"),
    ] {
        let fanout = clustered.then_some(ferry::config::FANOUT);
        let replicas = cluster::start_replicas(&bench.upstream.url(), 3, fanout).await;
        let digest = bench.new_blob();
        let urls: Vec<String> = (0..CLIENTS)
            .map(|i| replicas[i % replicas.len()].blob_url(&digest))
            .collect();
        let pulls = pull_each(&urls, &digest).await;
        record(table, ferry, label, &pulls);
        table.set(
            ferry,
            &format!("{label}, {CLIENTS} clients: upstream bytes / blob"),
            bench.upstream.blob_bytes_sent(&digest) as f64 / size,
        );
        if clustered {
            let mut from_peers = 0;
            for r in &replicas {
                from_peers += cluster::metric(r, "ferry_cluster_peer_bytes_total").await;
            }
            table.set(
                ferry,
                &format!("{label}, {CLIENTS} clients: bytes from peers / blob"),
                from_peers as f64 / size,
            );
        }
    }
}

pub(crate) fn record(table: &mut Table, t: &Target, label: &str, pulls: &[Pull]) {
    let fb: Vec<f64> = pulls.iter().map(|p| ms(p.first_byte)).collect();
    let tot: Vec<f64> = pulls.iter().map(|p| p.total.as_secs_f64()).collect();
    let n = pulls.len();
    table.set(
        t,
        &format!("{label}, {n} clients: first byte median/max (ms)"),
        pair(median(&fb), max(&fb)),
    );
    table.set(
        t,
        &format!("{label}, {n} clients: total median/max (s)"),
        pair(median(&tot), max(&tot)),
    );
    table.set(
        t,
        &format!("{label}, {n} clients: all digests correct"),
        pulls.iter().all(|p| p.digest_ok),
    );
}
