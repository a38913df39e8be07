//! Test support: an in-process fake upstream registry and helpers to run
//! ferry in-process against it, all on 127.0.0.1:0.

#![allow(dead_code, unused_imports)]

pub mod client;
pub mod conformance;
pub mod fake_registry;
pub mod raw_upstream;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use ferry::config::{Config, Overrides};
use ferry::{App, Server};
use tokio::sync::oneshot;

pub use client::*;
pub use fake_registry::{FakeRegistry, Fault, Gate};

/// A ferry server running in this process with a fresh store.
pub struct Ferry {
    pub addr: SocketAddr,
    /// The separate metrics listener, when `metricsAddress` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The HTTPS listener's certificates, when it has them.
    pub certs: Option<Arc<ferry::listener::CertStore>>,
    pub app: Arc<App>,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Ferry {
    pub async fn start(upstream: &str) -> Ferry {
        Ferry::start_with(upstream, |_| {}).await
    }

    pub async fn start_with(upstream: &str, tweak: impl FnOnce(&mut Config)) -> Ferry {
        let dir = tempfile::tempdir().unwrap();
        Ferry::start_in(dir, upstream, tweak).await
    }

    /// With free space read from `available` instead of the filesystem.
    pub async fn start_with_space(
        upstream: &str,
        available: std::sync::Arc<std::sync::atomic::AtomicU64>,
        tweak: impl FnOnce(&mut Config),
    ) -> Ferry {
        let hooks = ferry::Hooks {
            clock: ferry::clock::Clock::manual(),
            space: Some(ferry::lifecycle::SpaceProbe::Manual(available)),
        };
        Ferry::start_hooked(tempfile::tempdir().unwrap(), upstream, tweak, hooks).await
    }

    pub async fn start_in(
        dir: tempfile::TempDir,
        upstream: &str,
        tweak: impl FnOnce(&mut Config),
    ) -> Ferry {
        Ferry::start_hooked(dir, upstream, tweak, hooks()).await
    }

    async fn start_hooked(
        dir: tempfile::TempDir,
        upstream: &str,
        tweak: impl FnOnce(&mut Config),
        hooks: ferry::Hooks,
    ) -> Ferry {
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            storage: Some(dir.path().join("store")),
            upstream: Some(upstream.to_string()),
        };
        let mut config = Config::defaults(&overrides).unwrap();
        config.timeouts.idle_read = std::time::Duration::from_secs(20);
        // Fast retries: tests assert what happens, not how long it takes.
        for r in &mut config.registries {
            r.retry.delay = std::time::Duration::from_millis(5);
            r.retry.max_delay = std::time::Duration::from_millis(20);
        }
        tweak(&mut config);
        Ferry::launch(config, hooks, dir).await
    }

    /// Binds and runs ferry on `config`; stopped by [`Ferry::stop`].
    async fn launch(config: Config, hooks: ferry::Hooks, dir: tempfile::TempDir) -> Ferry {
        let server = Server::bind_with_hooks(config, hooks).await.unwrap();
        let addr = server.local_addr();
        let metrics_addr = server.metrics_addr();
        let certs = server.certs().cloned();
        let app = server.app().clone();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Ferry {
            addr,
            metrics_addr,
            certs,
            app,
            dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Starts ferry with a config file's JSON (listen and storage are set
    /// by the test), then `tweak`.
    pub async fn start_json(json: &str, tweak: impl FnOnce(&mut Config)) -> Ferry {
        let dir = tempfile::tempdir().unwrap();
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            storage: Some(dir.path().join("store")),
            upstream: None,
        };
        let file = ferry::config::FileConfig::parse(json).unwrap();
        let mut config = Config::resolve(file, &overrides).unwrap();
        config.timeouts.idle_read = std::time::Duration::from_secs(20);
        tweak(&mut config);
        Ferry::launch(config, hooks(), dir).await
    }

    /// Moves ferry's (manual) clock forward.
    pub fn advance(&self, by: std::time::Duration) {
        self.app.clock.advance(by);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `ferry_fetch_failures_total` of blobs for one reason, over every
    /// registry.
    pub fn fetch_failures(&self, reason: &str) -> u64 {
        fetch_failures_in(&self.app.metrics.encode(), "blob", reason)
    }

    pub fn store_root(&self) -> std::path::PathBuf {
        self.dir.path().join("store")
    }

    /// `ferry_upstream_bytes_total` of the first (or only) registry.
    pub fn upstream_bytes(&self) -> u64 {
        upstream_bytes_of(&self.app)
    }

    /// True when the blob sits at its final, content-addressed path.
    pub fn has_blob(&self, digest: &str) -> bool {
        let d: ferry::oci::Digest = digest.parse().unwrap();
        self.app.coordinator.store().blob_len(&d).unwrap().is_some()
    }

    /// Waits (bounded) until no fetch is in flight.
    pub async fn settle(&self) {
        within(async {
            while self.app.coordinator.in_flight() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

/// `ferry_upstream_bytes_total` of `app`'s first (or only) registry: the
/// bytes it read from the upstream.
pub fn upstream_bytes_of(app: &App) -> u64 {
    let text = app.metrics.encode();
    text.lines()
        .find(|l| l.starts_with("ferry_upstream_bytes_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no upstream bytes metric in {text}"))
}

/// The sum of `ferry_fetch_failures_total` lines of `kind` and `reason` in
/// a metrics text.
pub fn fetch_failures_in(text: &str, kind: &str, reason: &str) -> u64 {
    let (k, r) = (format!("kind=\"{kind}\""), format!("reason=\"{reason}\""));
    text.lines()
        .filter(|l| {
            l.starts_with("ferry_fetch_failures_total{") && l.contains(&k) && l.contains(&r)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A manual clock; free space from the real filesystem.
fn hooks() -> ferry::Hooks {
    ferry::Hooks {
        clock: ferry::clock::Clock::manual(),
        space: None,
    }
}

/// Guards a test against hanging: a step that does not finish in 60 s is a
/// failure (this is a hang guard, not a timing assertion).
pub async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(60), f)
        .await
        .expect("test step hung for 60 s")
}

/// Waits until `done` holds, checking every 10 ms (bounded by [`within`]).
pub async fn until(mut done: impl FnMut() -> bool) {
    within(async {
        while !done() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Deterministic pseudo-random bytes.
pub fn blob_bytes(len: usize, seed: u64) -> bytes::Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v.into()
}

pub fn sha256(bytes: &[u8]) -> String {
    ferry::oci::Digest::sha256_of(bytes).to_string()
}

/// This process's anonymous resident memory (`RssAnon`), in bytes: what
/// ferry holds itself, not file pages it maps.
pub fn anon_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .expect("RssAnon in /proc/self/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}
