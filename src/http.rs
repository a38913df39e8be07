//! The HTTP front: the listener, connection handling, graceful shutdown,
//! request dispatch and the access log.
//!
//! [`Server::bind`] opens the store (cleaning what a crash left), builds the
//! upstream client and the coordinator, and binds the listener; [`Server::run`]
//! serves HTTP/1.1 and HTTP/2 (prior knowledge) until its shutdown future
//! completes, then stops accepting and gives in-flight responses a bounded
//! time to finish.

mod blobs;
mod listing;
mod manifests;
mod range;
mod referrers;
mod response;
mod router;
mod tag_freshness;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::config::Config;
use crate::coordinator::Coordinator;
use crate::lifecycle::{Lifecycle, SpaceProbe};
use crate::metrics::{status_class, CacheLabels, MethodLabels, Metrics, RequestLabels};
use crate::oci::RegistryError;
use crate::routing::{Resolved, Router};
use crate::stats::Stats;
use crate::store;
use crate::store::FsStore;
use dashmap::DashMap;

pub use listing::{next_link, paged_list};
pub use range::{resolve as resolve_range, RangeRequest};
pub use response::Body;
pub use router::{route, Route};

/// Everything a request handler needs.
#[derive(Debug)]
pub struct App {
    pub config: Arc<Config>,
    pub coordinator: Arc<Coordinator>,
    /// Wall-clock time for tag freshness; tests use a manual one.
    pub clock: Clock,
    pub stats: Stats,
    pub metrics: Metrics,
    /// Set at shutdown: `/readyz` answers 503 from then on.
    pub draining: std::sync::atomic::AtomicBool,
    /// Tag revalidations in flight, shared by concurrent requests.
    revalidations: DashMap<String, tag_freshness::SharedRevalidation>,
    next_request_id: AtomicU64,
}

/// What tests may swap: the clock, and the free-space probe.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub clock: Clock,
    pub space: Option<SpaceProbe>,
}

impl App {
    /// Opens the store (cleaning up after a crash, indexing what it holds)
    /// and builds the upstream clients.
    pub fn new(config: Config) -> std::io::Result<Arc<App>> {
        App::with_hooks(config, Hooks::default())
    }

    /// As [`App::new`], with a given clock and space probe.
    pub fn with_hooks(config: Config, hooks: Hooks) -> std::io::Result<Arc<App>> {
        let clock = hooks.clock;
        let (store, recovery) = FsStore::open(&config.storage_root)?;
        if recovery.temp_files_removed > 0 {
            tracing::info!(removed = recovery.temp_files_removed, root = %config.storage_root.display(),
                "removed temp files left by an earlier run");
        }
        let lifecycle = Arc::new(Lifecycle::open(
            &store,
            config.lifecycle.clone(),
            hooks.space,
        )?);
        tracing::info!(
            blobs = lifecycle.index.len(),
            bytes = lifecycle.index.total(),
            "store indexed"
        );
        let router = Router::new(&config)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let coordinator = Coordinator::new(Arc::new(store), router, lifecycle, clock.clone());
        Ok(Arc::new(App {
            config: Arc::new(config),
            coordinator,
            clock,
            stats: Stats::default(),
            metrics: Metrics::default(),
            draining: std::sync::atomic::AtomicBool::new(false),
            revalidations: DashMap::new(),
            next_request_id: AtomicU64::new(1),
        }))
    }

    /// Answers one request and writes its access-log line.
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let head = method == Method::HEAD;
        if let Some(r) = self.operations(&path).await {
            return r;
        }
        let (response, cache) = match self.dispatch(&req, head).await {
            Ok(answer) => answer,
            Err(e) => (response::error(&e, head), "-"),
        };
        let bytes = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let m = &self.metrics;
        m.requests
            .get_or_create(&RequestLabels {
                route: route_label(&path),
                status: status_class(response.status().as_u16()),
            })
            .inc();
        if cache != "-" {
            m.cache.get_or_create(&CacheLabels { result: cache }).inc();
        }
        if !head {
            m.bytes_served.inc_by(bytes.parse().unwrap_or(0));
        }
        tracing::info!(
            request_id = id,
            %method,
            path = %path,
            status = response.status().as_u16(),
            bytes = %bytes,
            cache,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request"
        );
        response
    }

    /// `/healthz`, `/readyz` and `/metrics`; `None` for everything else.
    async fn operations(self: &Arc<Self>, path: &str) -> Option<Response<Body>> {
        let text = |status: StatusCode, body: String, kind: &'static str| {
            Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, kind)
                .header(http::header::CONTENT_LENGTH, body.len())
                .body(response::full(body))
                .expect("valid headers")
        };
        match path {
            "/healthz" => Some(text(StatusCode::OK, "ok\n".into(), "text/plain")),
            "/readyz" => {
                let why = if self.draining.load(Ordering::SeqCst) {
                    Some("shutting down".to_string())
                } else {
                    self.store_writable().await.err()
                };
                Some(match why {
                    None => text(StatusCode::OK, "ready\n".into(), "text/plain"),
                    Some(w) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {w}\n"),
                        "text/plain",
                    ),
                })
            }
            "/metrics" => {
                self.sync_metrics();
                let body = self.metrics.encode();
                Some(text(
                    StatusCode::OK,
                    body,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ))
            }
            _ => None,
        }
    }

    /// Readiness: a file can be created and removed in the store's tmp/.
    async fn store_writable(&self) -> Result<(), String> {
        let dir = self.config.storage_root.join("tmp");
        store::blocking(move || {
            let p = dir.join(format!("readyz-{}", std::process::id()));
            std::fs::write(&p, b"")?;
            std::fs::remove_file(&p)
        })
        .await
        .map_err(|e| format!("store not writable: {e}"))
    }

    /// Copies figures kept elsewhere into the registry before a scrape.
    fn sync_metrics(&self) {
        let m = &self.metrics;
        let lc = self.coordinator.lifecycle();
        let sync = |c: &prometheus_client::metrics::counter::Counter, v: u64| {
            let cur = c.get();
            if v > cur {
                c.inc_by(v - cur);
            }
        };
        sync(
            &m.stale_served,
            self.stats.stale_served.load(Ordering::Relaxed),
        );
        sync(&m.evictions, lc.evictions.load(Ordering::Relaxed));
        sync(&m.uncached, lc.uncached.load(Ordering::Relaxed));
        sync(
            &m.revalidations
                .get_or_create(&MethodLabels { method: "HEAD" }),
            self.stats.tag_head_revalidations.load(Ordering::Relaxed),
        );
        sync(
            &m.revalidations
                .get_or_create(&MethodLabels { method: "GET" }),
            self.stats.tag_get_fetches.load(Ordering::Relaxed),
        );
        m.in_flight.set(self.coordinator.in_flight() as i64);
        m.store_bytes.set(lc.index.total() as i64);
        m.store_blobs.set(lc.index.len() as i64);
        let damaged = lc
            .last_scrub
            .lock()
            .ok()
            .and_then(|r| r.as_ref().map(|r| r.damaged.len()));
        m.scrub_damaged_last.set(damaged.unwrap_or(0) as i64);
    }

    async fn dispatch(
        self: &Arc<Self>,
        req: &Request<Incoming>,
        head: bool,
    ) -> Result<(Response<Body>, &'static str), RegistryError> {
        match router::route(req.method(), req.uri().path())? {
            Route::Base => {
                let r = Response::builder()
                    .status(StatusCode::OK)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(http::header::CONTENT_LENGTH, 2)
                    .header(response::API_VERSION_HEADER, "registry/2.0")
                    .body(if head {
                        response::empty()
                    } else {
                        response::full("{}")
                    })
                    .expect("valid headers");
                Ok((r, "-"))
            }
            Route::Blob { name, digest } => {
                let repo = self.resolve(req, &name)?;
                let a = if head {
                    blobs::head(&self.coordinator, &repo, &digest).await?
                } else {
                    let far = self.config.far_range_distance;
                    blobs::get(&self.coordinator, &repo, &digest, req.headers(), far).await?
                };
                Ok((a.response, a.cache))
            }
            Route::Manifest { name, reference } => {
                let repo = self.resolve(req, &name)?;
                let a = manifests::serve(self, &repo, &reference, req.headers(), head).await?;
                Ok((a.response, a.cache))
            }
            Route::TagsList { name } => {
                let repo = self.resolve(req, &name)?;
                Ok((
                    listing::tags(self, &repo, req.uri().query(), head).await?,
                    "-",
                ))
            }
            Route::Catalog => Ok((
                listing::catalog(self, req.uri().query(), head).await?,
                "hit",
            )),
            Route::Referrers { name, digest } => {
                let repo = self.resolve(req, &name)?;
                let (r, cache) =
                    referrers::serve(self, &repo, &digest, req.uri().query(), head).await?;
                Ok((r, cache))
            }
        }
    }
}

impl App {
    /// A manifest as a client would get it (by digest, or by tag with the
    /// freshness rules), accepting every manifest type.
    pub async fn manifest(
        self: &Arc<Self>,
        repo: &Resolved,
        reference: &crate::oci::Reference,
    ) -> Result<manifests::Manifest, RegistryError> {
        manifests::get(self, repo, reference).await
    }

    /// Routes a request's repository name, honouring containerd's `?ns=`.
    fn resolve(&self, req: &Request<Incoming>, name: &str) -> Result<Resolved, RegistryError> {
        let ns = req.uri().query().and_then(|q| query_param(q, "ns"));
        self.coordinator.router().resolve(name, ns.as_deref())
    }
}

/// A low-cardinality name for the endpoint a path asked for.
fn route_label(path: &str) -> &'static str {
    if path == "/v2/" || path == "/v2" {
        "base"
    } else if path == "/v2/_catalog" {
        "catalog"
    } else if !path.starts_with("/v2/") {
        "other"
    } else if path.contains("/blobs/") {
        "blob"
    } else if path.contains("/manifests/") {
        "manifest"
    } else if path.ends_with("/tags/list") {
        "tags"
    } else if path.contains("/referrers/") {
        "referrers"
    } else {
        "other"
    }
}

/// The percent-decoded value of `key` in a query string.
pub(crate) fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A client that opens a connection and never finishes the TLS handshake
/// is dropped after this long.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The HTTPS listener's acceptor (zot's `http.tls`): HTTP/2 and HTTP/1.1
/// by ALPN. Certificates are read at start-up.
fn tls_acceptor(t: &crate::config::ListenerTls) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("http.tls: {what} {}: {e}", path.display()),
        )
    };
    let certs = CertificateDer::pem_file_iter(&t.cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("certificate", &t.cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(&t.key).map_err(|e| bad("key", &t.key, &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad("protocols for", &t.cert, &e))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| bad("certificate and key", &t.cert, &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// A bound, ready-to-run ferry server.
pub struct Server {
    app: Arc<App>,
    listener: TcpListener,
}

impl Server {
    /// Opens the store, builds the app and binds the listen address.
    pub async fn bind(config: Config) -> std::io::Result<Server> {
        Server::bind_with_hooks(config, Hooks::default()).await
    }

    /// As [`Server::bind`], with a given clock.
    pub async fn bind_with_hooks(config: Config, hooks: Hooks) -> std::io::Result<Server> {
        let listen = config.listen;
        let app = App::with_hooks(config, hooks)?;
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}"))
        })?;
        Ok(Server { app, listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Serves until `shutdown` completes, then drains for at most the
    /// configured shutdown timeout.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Server { app, listener } = self;
        let mut background = crate::sync::spawn(&app);
        background.extend(crate::lifecycle::tasks::spawn(&app));
        let graceful = GracefulShutdown::new();
        let builder = auto::Builder::new(TokioExecutor::new());
        let tls = match &app.config.tls {
            Some(t) => Some(tls_acceptor(t)?),
            None => None,
        };
        tokio::pin!(shutdown);
        let drain_deadline = tokio::time::sleep(std::time::Duration::from_secs(86400 * 365));
        tokio::pin!(drain_deadline);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown, if !app.draining.load(Ordering::SeqCst) => {
                    // Out of the load balancer first: readyz answers 503
                    // while the listener keeps serving for drainDelay.
                    app.draining.store(true, Ordering::SeqCst);
                    tracing::info!(delay_s = app.config.drain_delay.as_secs_f64(),
                        "shutdown: readyz now 503; closing the listener after the drain delay");
                    drain_deadline.as_mut().reset(tokio::time::Instant::now() + app.config.drain_delay);
                    continue;
                }
                _ = &mut drain_deadline, if app.draining.load(Ordering::SeqCst) => break,
            };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let tls = tls.clone();
            tokio::spawn(async move {
                let served = match tls {
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                .await;
                        let stream = match handshake {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        background.iter().for_each(|t| t.abort());
        let grace = app.config.shutdown_grace;
        tracing::info!(
            grace_s = grace.as_secs_f64(),
            "shutting down: no new connections, draining"
        );
        match tokio::time::timeout(grace, graceful.shutdown()).await {
            Ok(()) => tracing::info!("all connections finished"),
            Err(_) => tracing::warn!("shutdown timeout reached; closing remaining connections"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_query_is_decoded() {
        assert_eq!(
            query_param("ns=docker.io", "ns").as_deref(),
            Some("docker.io")
        );
        assert_eq!(
            query_param("a=1&ns=127.0.0.1%3A5000", "ns").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(query_param("nsx=1", "ns"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
