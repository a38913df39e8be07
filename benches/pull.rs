//! `cargo bench`: ferry side by side with the direct upstream, in one run.
//!
//! A throttled fake upstream registry runs in this process; ferry, built in
//! release mode, runs as a child process with a fresh store for every
//! scenario; clients on loopback hash every byte they receive. Scenarios:
//!
//! 1. cold single client: time to first byte and total, direct vs ferry;
//! 2. warm single client: throughput of a cached blob;
//! 3. N cold clients at once (N = 8): per-client first byte and total,
//!    digests, and upstream bytes / blob size (the dedup figure, goal 1.00).
//!
//! Knobs (environment): `FERRY_BENCH_SIZE_MIB` (default 1024),
//! `FERRY_BENCH_RATE_MBPS` (upstream MB/s per connection, default 128),
//! `FERRY_BENCH_CLIENTS` (default 8). Results are printed and written to
//! `target/ferry-bench/pull.{json,md}`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::{BodyExt, Empty};
use support::{blob_bytes, FakeRegistry};

struct Pull {
    first_byte: Duration,
    total: Duration,
    bytes: u64,
    digest_ok: bool,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn pull(url: &str, want: &str) -> Pull {
    let client = support::client();
    let started = Instant::now();
    let req = Request::get(url)
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = client.request(req).await.expect("request");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    let mut body = resp.into_body();
    let mut hasher = ferry::oci::Hasher::new(ferry::oci::Algorithm::Sha256);
    let mut first_byte = None;
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body frame");
        if let Ok(d) = frame.into_data() {
            first_byte.get_or_insert_with(|| started.elapsed());
            bytes += d.len() as u64;
            hasher.update(&d);
        }
    }
    Pull {
        first_byte: first_byte.unwrap_or_default(),
        total: started.elapsed(),
        bytes,
        digest_ok: hasher.finish().to_string() == want,
    }
}

struct FerryProcess {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for FerryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_ferry(upstream: &str) -> FerryProcess {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "serve",
            "--listen",
            &addr,
            "--upstream",
            upstream,
            "--storage",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn ferry");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return FerryProcess {
                child,
                addr,
                _dir: dir,
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("ferry did not start on {addr}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn max(v: &[f64]) -> f64 {
    v.iter().cloned().fold(0.0, f64::max)
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and test harness probes
    }
    let size_mib = env_u64("FERRY_BENCH_SIZE_MIB", 1024);
    let rate_mbps = env_u64("FERRY_BENCH_RATE_MBPS", 128);
    let clients = env_u64("FERRY_BENCH_CLIENTS", 8) as usize;
    let size = (size_mib << 20) as usize;

    eprintln!("generating a {size_mib} MiB blob...");
    let upstream = FakeRegistry::start().await;
    upstream.set_rate(rate_mbps * 1_000_000);
    let digest = upstream.add_blob(blob_bytes(size, 42));
    let path = format!("/v2/bench/blob/blobs/{digest}");
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut json = serde_json::Map::new();

    // 1. Cold single client: direct, then through a fresh ferry.
    let direct = pull(&format!("{}{path}", upstream.url()), &digest).await;
    assert!(direct.digest_ok && direct.bytes == size as u64);
    let ferry = start_ferry(&upstream.url()).await;
    let before = upstream.body_bytes();
    let cold = pull(&format!("http://{}{path}", ferry.addr), &digest).await;
    assert!(cold.digest_ok, "cold pull through ferry: wrong digest");
    let cold_upstream = upstream.body_bytes() - before;
    rows.push((
        "cold 1 client: first byte".into(),
        format!("{:.1} ms", ms(direct.first_byte)),
        format!(
            "{:.1} ms (+{:.1} ms, {:.2}x)",
            ms(cold.first_byte),
            ms(cold.first_byte) - ms(direct.first_byte),
            ms(cold.first_byte) / ms(direct.first_byte).max(0.001)
        ),
    ));
    rows.push((
        "cold 1 client: total".into(),
        format!("{:.2} s", direct.total.as_secs_f64()),
        format!(
            "{:.2} s (+{:.0} ms, {:.3}x)",
            cold.total.as_secs_f64(),
            ms(cold.total) - ms(direct.total),
            cold.total.as_secs_f64() / direct.total.as_secs_f64()
        ),
    ));
    json.insert("direct_first_byte_ms".into(), ms(direct.first_byte).into());
    json.insert("direct_total_s".into(), direct.total.as_secs_f64().into());
    json.insert("cold_first_byte_ms".into(), ms(cold.first_byte).into());
    json.insert("cold_total_s".into(), cold.total.as_secs_f64().into());
    json.insert(
        "cold_upstream_ratio".into(),
        (cold_upstream as f64 / size as f64).into(),
    );

    // 2. Warm: the same blob again from the same ferry.
    tokio::time::sleep(Duration::from_millis(200)).await; // let the publish land
    let warm = pull(&format!("http://{}{path}", ferry.addr), &digest).await;
    assert!(warm.digest_ok);
    let warm_mbps = size as f64 / warm.total.as_secs_f64() / 1e6;
    rows.push((
        "warm 1 client: throughput".into(),
        format!("({rate_mbps} MB/s throttled)"),
        format!(
            "{warm_mbps:.0} MB/s ({:.2} s, client hashes every byte)",
            warm.total.as_secs_f64()
        ),
    ));
    json.insert("warm_mb_per_s".into(), warm_mbps.into());
    drop(ferry);

    // 3. N cold clients at once through a fresh ferry.
    let ferry = start_ferry(&upstream.url()).await;
    let before = upstream.body_bytes();
    let url = format!("http://{}{path}", ferry.addr);
    let pulls = futures::future::join_all((0..clients).map(|_| {
        let (url, digest) = (url.clone(), digest.clone());
        tokio::spawn(async move { pull(&url, &digest).await })
    }))
    .await;
    let pulls: Vec<Pull> = pulls.into_iter().map(|p| p.unwrap()).collect();
    let all_ok = pulls.iter().all(|p| p.digest_ok && p.bytes == size as u64);
    let ratio = (upstream.body_bytes() - before) as f64 / size as f64;
    let fb: Vec<f64> = pulls.iter().map(|p| ms(p.first_byte)).collect();
    let tot: Vec<f64> = pulls.iter().map(|p| p.total.as_secs_f64()).collect();
    rows.push((
        format!("cold {clients} clients: upstream bytes / blob"),
        "-".into(),
        format!("{ratio:.2} (digests all correct: {all_ok})"),
    ));
    rows.push((
        format!("cold {clients} clients: first byte median / max"),
        "-".into(),
        format!("{:.1} / {:.1} ms", median(fb.clone()), max(&fb)),
    ));
    rows.push((
        format!("cold {clients} clients: total median / max"),
        format!("{:.2} s (1 client)", direct.total.as_secs_f64()),
        format!(
            "{:.2} / {:.2} s (max {:.3}x direct)",
            median(tot.clone()),
            max(&tot),
            max(&tot) / direct.total.as_secs_f64()
        ),
    ));
    json.insert("n_clients".into(), clients.into());
    json.insert("n_upstream_ratio".into(), ratio.into());
    json.insert("n_digests_ok".into(), all_ok.into());
    json.insert("n_first_byte_ms_median".into(), median(fb.clone()).into());
    json.insert("n_first_byte_ms_max".into(), max(&fb).into());
    json.insert("n_total_s_median".into(), median(tot.clone()).into());
    json.insert("n_total_s_max".into(), max(&tot).into());
    drop(ferry);

    let mut md = format!(
        "blob {size_mib} MiB, upstream throttled to {rate_mbps} MB/s per connection, loopback\n\n| scenario | direct upstream | through ferry |\n|---|---|---|\n"
    );
    for (a, b, c) in &rows {
        md.push_str(&format!("| {a} | {b} | {c} |\n"));
    }
    println!("\n{md}");
    json.insert("blob_mib".into(), size_mib.into());
    json.insert("rate_mb_per_s".into(), rate_mbps.into());
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ferry-bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("pull.md"), &md).unwrap();
    std::fs::write(
        out.join("pull.json"),
        serde_json::to_string_pretty(&serde_json::Value::Object(json)).unwrap(),
    )
    .unwrap();
    assert!(all_ok, "a client of the N-client scenario got wrong bytes");
    eprintln!("written to {}", out.display());
}
