//! The bench harness: the fake upstream with many distinct big blobs served
//! from one buffer, targets (direct, a ferry child process per scenario,
//! other mirrors by URL), clients, a load generator, /proc readings, and
//! the results table.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::support::{blob_bytes, FakeRegistry};

pub struct Options {
    pub size: usize,
    pub rate: u64,
    pub clients: Vec<usize>,
    pub late: Duration,
    pub small_for: Duration,
    pub upstream_port: u16,
    pub mirrors: Vec<(String, String)>,
    /// Scenario numbers to run (`FERRY_BENCH_ONLY`, e.g. "1,3"); all when empty.
    pub only: Vec<u32>,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

impl Options {
    pub fn from_env() -> Options {
        let num = |n: &str, d: &str| {
            env_or(n, d)
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{n} must be a number"))
        };
        Options {
            size: (num("FERRY_BENCH_SIZE_MIB", "1024") << 20) as usize,
            rate: num("FERRY_BENCH_RATE_MBPS", "128") * 1_000_000,
            clients: env_or("FERRY_BENCH_CLIENTS", "8,64")
                .split(',')
                .filter_map(|c| c.trim().parse().ok())
                .collect(),
            late: Duration::from_millis(num("FERRY_BENCH_LATE_MS", "2000")),
            small_for: Duration::from_secs(num("FERRY_BENCH_SMALL_SECS", "20")),
            upstream_port: num("FERRY_BENCH_UPSTREAM_PORT", "0") as u16,
            mirrors: env_or("FERRY_BENCH_MIRRORS", "")
                .split(',')
                .filter_map(|m| m.split_once('='))
                .map(|(n, u)| {
                    (
                        n.trim().to_string(),
                        u.trim().trim_end_matches('/').to_string(),
                    )
                })
                .collect(),
            only: env_or("FERRY_BENCH_ONLY", "")
                .split(',')
                .filter_map(|c| c.trim().parse().ok())
                .collect(),
        }
    }

    /// True when scenario `n` is to run.
    pub fn runs(&self, n: u32) -> bool {
        self.only.is_empty() || self.only.contains(&n)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Ferry,
    External(String),
}

#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub kind: Kind,
}

impl Target {
    pub fn is_mirror(&self) -> bool {
        self.kind != Kind::Direct
    }

    /// A fresh instance for one scenario (a new ferry child; others as is).
    pub async fn open(&self, bench: &Bench) -> Mirror {
        match &self.kind {
            Kind::Direct => Mirror {
                base: bench.upstream.url(),
                child: None,
                _dir: None,
                peak_anon_kib: None,
                sampler: None,
            },
            Kind::External(url) => Mirror {
                base: url.clone(),
                child: None,
                _dir: None,
                peak_anon_kib: None,
                sampler: None,
            },
            Kind::Ferry => start_ferry(&bench.upstream.url()).await,
        }
    }
}

pub struct Bench {
    pub upstream: FakeRegistry,
    pub targets: Vec<Target>,
    tail: Bytes,
    next: AtomicU64,
}

impl Bench {
    pub async fn start(opts: &Options) -> Bench {
        let addr = format!("127.0.0.1:{}", opts.upstream_port).parse().unwrap();
        let upstream = FakeRegistry::start_on(addr).await;
        upstream.set_rate(opts.rate);
        // Mirrors that check their upstream at start (Distribution's proxy
        // does) are started now that it listens.
        if let Ok(cmd) = std::env::var("FERRY_BENCH_BEFORE") {
            let ok = tokio::process::Command::new("sh")
                .args(["-c", &cmd])
                .status()
                .await;
            assert!(
                ok.is_ok_and(|s| s.success()),
                "FERRY_BENCH_BEFORE ({cmd}) failed"
            );
        }
        eprintln!(
            "upstream on {}; generating {} MiB of blob data",
            upstream.url(),
            opts.size >> 20
        );
        let tail = blob_bytes(opts.size - HEAD, 42);
        let mut targets = vec![
            Target {
                name: "direct".into(),
                kind: Kind::Direct,
            },
            Target {
                name: "ferry".into(),
                kind: Kind::Ferry,
            },
        ];
        for (name, url) in &opts.mirrors {
            targets.push(Target {
                name: name.clone(),
                kind: Kind::External(url.clone()),
            });
        }
        Bench {
            upstream,
            targets,
            tail,
            next: AtomicU64::new(1),
        }
    }

    /// The size of every blob [`Bench::new_blob`] makes.
    pub fn blob_size(&self) -> usize {
        HEAD + self.tail.len()
    }

    /// A blob no target has cached yet.
    pub fn new_blob(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.upstream
            .add_blob_parts(blob_bytes(HEAD, 1000 + n), self.tail.clone())
    }

    /// 64 small blobs and a manifest, fetched once through `m` so they are
    /// cached; returns their paths.
    pub async fn small_objects(&self, m: &Mirror) -> Vec<String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let repo = format!("bench/small{n}");
        let mut paths = Vec::new();
        for i in 0..64u64 {
            let d = self.upstream.add_blob(blob_bytes(4096, n * 1000 + i));
            paths.push(format!("/v2/{repo}/blobs/{d}"));
        }
        let manifest = Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":4096}},"layers":[]}}"#,
            paths[0].rsplit('/').next().unwrap()
        ));
        let md = self.upstream.add_manifest(
            &repo,
            Some("v1"),
            "application/vnd.oci.image.manifest.v1+json",
            manifest,
        );
        paths.push(format!("/v2/{repo}/manifests/{md}"));
        // Warm them; keep what the target serves (Distribution's proxy
        // refuses some manifests it cannot check).
        let client = super::support::client();
        let mut served = Vec::new();
        for p in paths {
            let req = Request::get(format!("{}{p}", m.base))
                .body(Empty::<Bytes>::new())
                .unwrap();
            if let Ok(r) = client.request(req).await {
                if r.status().is_success() && r.into_body().collect().await.is_ok() {
                    served.push(p);
                }
            }
        }
        served
    }

    /// An image of `layers` distinct layers (1/64 of the blob size each,
    /// at least 64 KiB); returns `repo:tag`.
    pub fn new_image(&self, layers: usize) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let size = (self.tail.len() / 64).max(HEAD);
        let mut descs = Vec::new();
        for i in 0..layers as u64 {
            let d = self.upstream.add_blob_parts(
                blob_bytes(HEAD, n * 10_000 + i),
                self.tail.slice(..size - HEAD),
            );
            descs.push(format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{size}}}"#
            ));
        }
        let config = Bytes::from(format!(
            r#"{{"architecture":"amd64","os":"linux","bench":{n}}}"#
        ));
        let cfg_len = config.len();
        let cd = self.upstream.add_blob(config);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cfg_len}}},"layers":[{}]}}"#,
            descs.join(",")
        );
        let repo = format!("bench/image{n}");
        self.upstream.add_manifest(
            &repo,
            Some("v1"),
            "application/vnd.oci.image.manifest.v1+json",
            manifest.into(),
        );
        format!("{repo}:v1")
    }
}

/// Unique bytes at the front of every generated blob.
const HEAD: usize = 64 * 1024;

pub struct Mirror {
    pub base: String,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
    /// Highest anonymous resident memory seen (KiB), sampled every 10 ms:
    /// ferry's own memory, without the page-cache pages of blob files it
    /// has mapped (those count in VmHWM, but the kernel can drop them).
    peak_anon_kib: Option<Arc<AtomicU64>>,
    sampler: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if let Some(s) = self.sampler.take() {
            s.abort();
        }
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Mirror {
    pub fn blob_url(&self, digest: &str) -> String {
        format!("{}/v2/bench/blob/blobs/{digest}", self.base)
    }

    /// User + system CPU seconds of the ferry child.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let pid = self.child.as_ref()?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    }

    /// Peak anonymous resident memory of the ferry child (sampled).
    pub fn peak_anon_mib(&self) -> Option<f64> {
        let kib = self.peak_anon_kib.as_ref()?.load(Ordering::Relaxed);
        (kib > 0).then(|| kib as f64 / 1024.0)
    }

    /// Peak resident memory of the ferry child.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

/// A free loopback `host:port`.
pub fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

async fn start_ferry(upstream: &str) -> Mirror {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let storage = dir.path().to_str().unwrap().to_string();
    let args = [
        "serve",
        "--listen",
        &addr,
        "--upstream",
        upstream,
        "--storage",
        &storage,
    ];
    launch(&addr, &args, dir).await
}

/// Runs `ferry ARGS` (listening on `addr`, its files in `dir`) until the
/// returned mirror is dropped.
pub async fn launch(addr: &str, args: &[&str], dir: tempfile::TempDir) -> Mirror {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn ferry");
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let peak = Arc::new(AtomicU64::new(0));
            let (pid, p) = (child.id(), peak.clone());
            let sampler = tokio::spawn(async move {
                loop {
                    let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
                    let anon = status.ok().and_then(|s| {
                        let line = s.lines().find(|l| l.starts_with("RssAnon:"))?.to_owned();
                        line.split_whitespace().nth(1)?.parse::<u64>().ok()
                    });
                    match anon {
                        Some(kib) => p.fetch_max(kib, Ordering::Relaxed),
                        None => return,
                    };
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            return Mirror {
                base: format!("http://{addr}"),
                child: Some(child),
                _dir: Some(dir),
                peak_anon_kib: Some(peak),
                sampler: Some(sampler),
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("ferry did not start on {addr}");
}

pub struct Pull {
    pub first_byte: Duration,
    pub total: Duration,
    pub bytes: u64,
    pub digest_ok: bool,
}

/// GETs `url`; hashes the body when `want` is given, else discards it.
pub async fn pull(url: &str, want: Option<&str>) -> Pull {
    let client = super::support::client();
    let started = Instant::now();
    let req = Request::get(url).body(Empty::<Bytes>::new()).unwrap();
    let resp = client.request(req).await.expect("request");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    let mut body = resp.into_body();
    let mut hasher = want.map(|_| ferry::oci::Hasher::new(ferry::oci::Algorithm::Sha256));
    let mut first_byte = None;
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body frame");
        if let Ok(d) = frame.into_data() {
            first_byte.get_or_insert_with(|| started.elapsed());
            bytes += d.len() as u64;
            if let Some(h) = hasher.as_mut() {
                h.update(&d);
            }
        }
    }
    let digest_ok = match (hasher, want) {
        (Some(h), Some(w)) => h.finish().to_string() == w,
        _ => true,
    };
    Pull {
        first_byte: first_byte.unwrap_or_default(),
        total: started.elapsed(),
        bytes,
        digest_ok,
    }
}

pub async fn pull_many(url: &str, digest: &str, n: usize) -> Vec<Pull> {
    pull_each(&vec![url.to_string(); n], digest).await
}

/// One concurrent GET per URL, each checked against `digest`.
pub async fn pull_each(urls: &[String], digest: &str) -> Vec<Pull> {
    let tasks: Vec<_> = urls
        .iter()
        .map(|u| {
            let (u, d) = (u.clone(), digest.to_string());
            tokio::spawn(async move { pull(&u, Some(&d)).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The last 4 KiB of a blob not yet cached: status and time to the end.
pub async fn range_tail(url: &str, size: usize) -> (u16, Duration) {
    let client = super::support::client();
    let started = Instant::now();
    let req = Request::get(url)
        .header("range", format!("bytes={}-", size - 4096))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = client.request(req).await.expect("request");
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    (status, started.elapsed())
}

pub struct Load {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub errors: u64,
}

/// `conns` keep-alive connections requesting `paths` round-robin for `d`.
pub async fn hammer(base: &str, paths: &[String], conns: usize, d: Duration) -> Load {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(conns)
        .build_http();
    let deadline = Instant::now() + d;
    let tasks: Vec<_> = (0..conns)
        .map(|i| {
            let client = client.clone();
            let urls: Vec<String> = paths.iter().map(|p| format!("{base}{p}")).collect();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut k = i;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let req = Request::get(&urls[k % urls.len()])
                        .body(Empty::new())
                        .unwrap();
                    k += 1;
                    match client.request(req).await {
                        Ok(r) if r.status().is_success() => {
                            if r.into_body().collect().await.is_err() {
                                errors += 1;
                            }
                            lat.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Load {
        rps: all.len() as f64 / d.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
    }
}

pub fn skopeo_available() -> bool {
    Command::new("skopeo")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Seconds for `skopeo copy` of `image` from `base` into a fresh folder.
pub async fn skopeo_pull(base: &str, image: &str) -> f64 {
    let host = base.trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().unwrap();
    let dest = format!("dir:{}", dir.path().join("img").display());
    let src = format!("docker://{host}/{image}");
    let started = Instant::now();
    let status = tokio::process::Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &src,
            &dest,
        ])
        .status()
        .await
        .expect("run skopeo");
    assert!(status.success(), "skopeo copy {src} failed");
    started.elapsed().as_secs_f64()
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().cloned().fold(0.0, f64::max)
}

pub fn pair(a: f64, b: f64) -> String {
    format!("{} / {}", fmt(a), fmt(b))
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One cell of the results.
#[derive(Clone, Debug)]
pub enum Cell {
    Num(f64),
    Text(String),
}

impl From<f64> for Cell {
    fn from(v: f64) -> Cell {
        Cell::Num(v)
    }
}
impl From<bool> for Cell {
    fn from(v: bool) -> Cell {
        Cell::Text(if v { "yes" } else { "NO" }.into())
    }
}
impl From<String> for Cell {
    fn from(v: String) -> Cell {
        Cell::Text(v)
    }
}

pub struct Table {
    names: Vec<String>,
    rows: Vec<(String, Vec<Option<Cell>>)>,
    /// Per-client totals of the cold N-client scenario, per target.
    series: Vec<(String, usize, Vec<f64>)>,
}

impl Table {
    pub fn new(targets: &[Target]) -> Table {
        Table {
            names: targets.iter().map(|t| t.name.clone()).collect(),
            rows: Vec::new(),
            series: Vec::new(),
        }
    }

    pub fn set(&mut self, t: &Target, metric: &str, value: impl Into<Cell>) {
        let col = self.names.iter().position(|n| *n == t.name).unwrap();
        let width = self.names.len();
        let row = match self.rows.iter().position(|(m, _)| m == metric) {
            Some(i) => i,
            None => {
                self.rows.push((metric.to_string(), vec![None; width]));
                self.rows.len() - 1
            }
        };
        self.rows[row].1[col] = Some(value.into());
    }

    pub fn series(&mut self, t: &Target, n: usize, totals: Vec<f64>) {
        self.series.push((t.name.clone(), n, totals));
    }

    pub fn finish(&self, opts: &Options) {
        let mut md = format!(
            "blob {} MiB, upstream throttled to {} MB/s per connection, loopback, {}\n\n| scenario | {} |\n|---|{}\n",
            opts.size >> 20,
            opts.rate / 1_000_000,
            machine(),
            self.names.join(" | "),
            "---|".repeat(self.names.len())
        );
        let mut json = serde_json::Map::new();
        for (metric, cells) in &self.rows {
            let shown: Vec<String> = cells
                .iter()
                .map(|c| match c {
                    None => "-".into(),
                    Some(Cell::Num(v)) => fmt(*v),
                    Some(Cell::Text(s)) => s.clone(),
                })
                .collect();
            md.push_str(&format!("| {metric} | {} |\n", shown.join(" | ")));
            let mut row = serde_json::Map::new();
            for (name, c) in self.names.iter().zip(cells) {
                let v = match c {
                    None => serde_json::Value::Null,
                    Some(Cell::Num(v)) => (*v).into(),
                    Some(Cell::Text(s)) => s.clone().into(),
                };
                row.insert(name.clone(), v);
            }
            json.insert(metric.clone(), row.into());
        }
        let series: Vec<serde_json::Value> = self
            .series
            .iter()
            .map(|(t, n, v)| serde_json::json!({"target": t, "clients": n, "totals_s": v}))
            .collect();
        json.insert("cold_n_client_totals".into(), series.into());
        println!("\n{md}");
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ferry-bench");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("pull.md"), &md).unwrap();
        std::fs::write(
            out.join("pull.json"),
            serde_json::to_string_pretty(&serde_json::Value::Object(json)).unwrap(),
        )
        .unwrap();
        eprintln!("written to {}", out.display());
        let bad = self.rows.iter().any(|(m, cells)| {
            m.contains("digests")
                && cells
                    .iter()
                    .any(|c| matches!(c, Some(Cell::Text(s)) if s == "NO"))
        });
        assert!(!bad, "a client got wrong bytes: see the table");
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!(
        "{} cores, {cpu}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}
