//! Crash safety: a ferry process killed with SIGKILL at random moments of
//! cold pulls, 20 times over one store, never leaves a blob at its final
//! path that fails its digest, and the next start-up cleans what remains.

use crate::support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use support::*;

fn spawn_ferry(store: &std::path::Path, upstream: &str, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            upstream,
            "--storage",
        ])
        .arg(store)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry")
}

async fn wait_serving(port: u16) {
    // Not only listening: the listener accepts before the app (and its
    // store, which empties tmp/ when it opens) exists; `/healthz` answers
    // once it does.
    let url = format!("http://127.0.0.1:{port}/healthz");
    within(async {
        while !matches!(try_get(&url).await, Ok(w) if w.status == StatusCode::OK) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_never_leaves_a_bad_blob() {
    let up = FakeRegistry::start().await;
    // Slow enough that kills land mid-download: 3 MiB at 24 MB/s.
    up.set_rate(24_000_000);
    let seed = fastrand::u64(..);
    eprintln!("crash test seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let digests: Vec<String> = (0..20)
        .map(|i| up.add_blob(blob_bytes(3 << 20, 200 + i)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");

    for (round, digest) in digests.iter().enumerate() {
        let port = free_port();
        let mut child = spawn_ferry(&store, &up.url(), port);
        wait_serving(port).await;
        // Two clients: one pulls this round's blob, one an earlier one.
        let url = format!("http://127.0.0.1:{port}/v2/crash/test/blobs/{digest}");
        let earlier = &digests[rng.usize(..=round)];
        let url2 = format!("http://127.0.0.1:{port}/v2/crash/test/blobs/{earlier}");
        let pull = |u: String| {
            tokio::spawn(async move {
                let resp = client().request(
                    http::Request::builder()
                        .method(Method::GET)
                        .uri(u)
                        .body(http_body_util::Empty::new())
                        .unwrap(),
                );
                if let Ok(r) = resp.await {
                    let _ = r.into_body().collect().await;
                }
            })
        };
        let (a, b) = (pull(url), pull(url2));
        tokio::time::sleep(Duration::from_millis(rng.u64(0..200))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let _ = tokio::join!(a, b);
    }

    // Every blob at a final path matches its digest.
    let mut checked = 0;
    for entry in walk(&store.join("blobs")) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&entry).unwrap();
        assert_eq!(
            sha256(&bytes),
            format!("sha256:{name}"),
            "{} is corrupt (seed {seed})",
            entry.display()
        );
        checked += 1;
    }
    eprintln!("crash test: {checked} blobs stored after 20 kills, all verified");

    // The next start-up removes the temp files the kills left and serves.
    let port = free_port();
    let mut child = spawn_ferry(&store, &up.url(), port);
    wait_serving(port).await;
    assert_eq!(
        std::fs::read_dir(store.join("tmp")).unwrap().count(),
        0,
        "temp files left after restart"
    );
    let w = within(get(&format!(
        "http://127.0.0.1:{port}/v2/crash/test/blobs/{}",
        digests[0]
    )))
    .await;
    assert_eq!(sha256(&w.body), digests[0]);
    child.kill().unwrap();
    child.wait().unwrap();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
