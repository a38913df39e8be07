//! Hostile clients that cost memory if anything does: thousands of idle
//! connections, and clients that ask for a large blob and never read it.
//! Both are measured as the growth of this process's anonymous memory
//! (`RssAnon`: heap and stacks, not the page cache of mapped blobs), in a
//! test binary of its own so no other test's allocations blur the figure.
//! Run with `--nocapture` to see the figures.

use crate::support;

use std::time::Duration;

use http::StatusCode;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const MIB: u64 = 1024 * 1024;

#[test]
fn idle_connections_and_clients_that_never_read_cost_bounded_memory() {
    crate::alone(scenario());
}

async fn scenario() {
    ferry::listener::raise_open_file_limit().unwrap();
    let up = FakeRegistry::start().await;
    let size = 32 * MIB;
    let digest = up.add_blob(blob_bytes(size as usize, 800));
    let ferry = Ferry::start_with(&up.url(), |cfg| {
        // Long enough for all the idle connections below to be open at
        // once even on a loaded machine (at 2 s, a busy 2-core machine
        // had the first ones timed out before the last were accepted, and
        // the count never reached them all); short, so they close soon.
        cfg.listener.header_timeout = Duration::from_secs(6);
    })
    .await;
    let url = ferry.url(&format!("/v2/x/blobs/{digest}"));
    assert_eq!(sha256(&within(get(&url)).await.body), digest);
    let gauge = &ferry.app.metrics.connections;
    until(|| gauge.get() == 0).await;
    let base = anon_rss();

    // 3,000 connections that never send a byte.
    const IDLE: usize = 3000;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(within(TcpStream::connect(ferry.addr)).await.unwrap());
    }
    until(|| gauge.get() as usize >= IDLE).await;
    // ferry still answers while they sit there.
    let w = within(get(&ferry.url("/v2/"))).await;
    assert_eq!(w.status, StatusCode::OK);
    let with_idle = anon_rss();
    let per_idle = with_idle.saturating_sub(base) / IDLE as u64;
    eprintln!(
        "{IDLE} idle connections: anonymous memory {:.1} -> {:.1} MiB ({per_idle} bytes each)",
        base as f64 / MIB as f64,
        with_idle as f64 / MIB as f64
    );
    assert!(per_idle < 32 * 1024, "{per_idle} bytes per idle connection");
    // The header timeout closes every one of them.
    until(|| gauge.get() == 0).await;
    for mut c in idle {
        let mut b = [0u8; 1];
        let n = within(tokio::io::AsyncReadExt::read(&mut c, &mut b))
            .await
            .unwrap_or(0);
        assert_eq!(n, 0, "an idle connection got bytes instead of a close");
    }

    // 200 clients ask for the 32 MiB blob and never read a byte.
    const STALLED: usize = 200;
    let mut stalled = Vec::with_capacity(STALLED);
    let request = format!("GET /v2/x/blobs/{digest} HTTP/1.1\r\nHost: ferry\r\n\r\n");
    for _ in 0..STALLED {
        let mut c = within(TcpStream::connect(ferry.addr)).await.unwrap();
        c.write_all(request.as_bytes()).await.unwrap();
        stalled.push(c);
    }
    until(|| gauge.get() as usize >= STALLED).await;
    // Every response is streaming, and the bytes queued at the clients
    // stopped growing (their receive buffers are full; ferry's sends
    // stall): the same total on consecutive looks.
    let queued = || -> Vec<u64> {
        stalled
            .iter()
            .map(|c| rustix::io::ioctl_fionread(c).unwrap_or(0))
            .collect()
    };
    let mut last = 0;
    let mut same = 0;
    until(|| {
        let q = queued();
        let total: u64 = q.iter().sum();
        same = if total == last { same + 1 } else { 0 };
        last = total;
        q.iter().all(|n| *n > 0) && same >= 3
    })
    .await;
    let queued = queued();
    eprintln!(
        "queued per stalled client: min {} max {}",
        queued.iter().min().unwrap(),
        queued.iter().max().unwrap()
    );
    let with_stalled = anon_rss();
    let growth = with_stalled.saturating_sub(base);
    eprintln!(
        "{STALLED} clients not reading a {} MiB blob: anonymous memory {:.1} -> {:.1} MiB ({} KiB each; all of it would be {} MiB)",
        size / MIB,
        base as f64 / MIB as f64,
        with_stalled as f64 / MIB as f64,
        growth / STALLED as u64 / 1024,
        size * STALLED as u64 / MIB
    );
    // Far below one copy of the blob per client (6,400 MiB).
    assert!(growth < 256 * MIB, "memory grew {} MiB", growth / MIB);
    // Another client is served in full meanwhile.
    assert_eq!(sha256(&within(get(&url)).await.body), digest);
    drop(stalled);
    until(|| gauge.get() == 0).await;
}
