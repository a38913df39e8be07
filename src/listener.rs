//! The client-facing door: listeners, connection limits, slow clients,
//! TLS with certificate reload, and graceful shutdown.
//!
//! [`Server::bind`] opens the store and builds the [`App`], then binds the
//! main listener (and, when `ferry.metricsAddress` is set, a second one that
//! serves only `/metrics` and health). [`Server::run`] accepts connections
//! until its shutdown future completes: `/readyz` turns 503 at once, the
//! listener keeps serving for `drainDelay`, then closes, and in-flight
//! responses get `shutdownTimeout` to finish.
//!
//! Every connection holds one of `maxConnections` permits (over the limit
//! it is closed at once and counted); its request headers must arrive
//! within `headerTimeout` and fit in `maxHeaderSize` (431 otherwise), and a
//! connection that sends nothing at all is closed after `headerTimeout`.

mod forwarded;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::{Config, ListenerConfig};
use crate::http::{App, Hooks};

pub use forwarded::client_addr;
pub use tls::CertStore;

/// Which requests a listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The registry API, the status page, and (unless a metrics address is
    /// set) `/metrics` and health.
    Main,
    /// Only `/metrics`, `/healthz` and `/readyz`.
    Metrics,
}

/// A client that opens a connection and never finishes the TLS handshake
/// is dropped after this long.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A bound, ready-to-run ferry server.
pub struct Server {
    app: Arc<App>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    certs: Option<Arc<CertStore>>,
}

impl Server {
    /// Opens the store, builds the app and binds the listen address(es).
    pub async fn bind(config: Config) -> std::io::Result<Server> {
        Server::bind_with_hooks(config, Hooks::default()).await
    }

    /// As [`Server::bind`], with a given clock and space probe.
    pub async fn bind_with_hooks(config: Config, hooks: Hooks) -> std::io::Result<Server> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        };
        let certs = match &config.tls {
            Some(t) => Some(CertStore::load(t)?),
            None => None,
        };
        let listener = bind(config.listen).await?;
        let metrics_listener = match config.listener.metrics_listen {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let app = App::with_hooks(config, hooks)?;
        Ok(Server {
            app,
            listener,
            metrics_listener,
            certs,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The separate metrics listener's address, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener has an address"))
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// The HTTPS listener's certificates, when it has them.
    pub fn certs(&self) -> Option<&Arc<CertStore>> {
        self.certs.as_ref()
    }

    /// Serves until `shutdown` completes, then drains for at most the
    /// configured shutdown timeout.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Server {
            app,
            listener,
            metrics_listener,
            certs,
        } = self;
        let mut background = crate::sync::spawn(&app);
        background.extend(crate::lifecycle::tasks::spawn(&app));
        let acceptor = match &certs {
            Some(c) => {
                background.push(spawn_cert_reload(
                    c.clone(),
                    app.config.listener.tls_reload_interval,
                ));
                Some(c.acceptor()?)
            }
            None => None,
        };
        let graceful = GracefulShutdown::new();
        let builder = connection_builder(&app.config.listener);
        let permits = Arc::new(Semaphore::new(app.config.listener.max_connections));
        if let Some(l) = metrics_listener {
            let (app, builder) = (app.clone(), builder.clone());
            background.push(tokio::spawn(async move {
                loop {
                    let (stream, peer) = match l.accept().await {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "metrics listener: accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let conn = serve_io(
                        app.clone(),
                        builder.clone(),
                        TokioIo::new(stream),
                        peer,
                        Role::Metrics,
                        None,
                    );
                    tokio::spawn(conn);
                }
            }));
        }
        tokio::pin!(shutdown);
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(86400 * 365);
        let drain_deadline = tokio::time::sleep_until(far);
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
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                app.metrics.connections_refused.inc();
                tracing::warn!(%peer, limit = app.config.listener.max_connections,
                    "connection limit reached; closing a new connection");
                tokio::spawn(refuse(stream));
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (app, builder, watcher) = (app.clone(), builder.clone(), graceful.watcher());
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match acceptor {
                    None => {
                        let io = TokioIo::new(stream);
                        serve_io(app, builder, io, peer, Role::Main, Some(watcher)).await
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
                        // ALPN already chose the protocol: no sniffing.
                        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        let builder = if h2 {
                            builder.http2_only()
                        } else {
                            builder.http1_only()
                        };
                        let io = TokioIo::new(stream);
                        serve_io(app, builder, io, peer, Role::Main, Some(watcher)).await
                    }
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

/// HTTP/1.1 and HTTP/2 with ferry's header limits.
pub fn connection_builder(limits: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32);
    builder
}

/// Serves one connection until it ends. A connection that has not sent a
/// whole request within `headerTimeout` of opening is closed (hyper's own
/// header timeout covers the requests after the first). Public so tests
/// can drive it over an in-memory pipe on paused time.
pub async fn serve_io<I>(
    app: Arc<App>,
    builder: auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    peer: SocketAddr,
    role: Role,
    shutdown: Option<Watcher>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Arc::new(AtomicBool::new(false));
    let service = {
        let (app, started) = (app.clone(), started.clone());
        service_fn(move |req| {
            started.store(true, Ordering::Relaxed);
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.handle(req, peer.ip(), role).await) }
        })
    };
    // Client connections only; the metrics listener's scrapes don't count.
    let counted = role == Role::Main;
    if counted {
        app.metrics.connections.inc();
    }
    let _open = scopeguard(|| {
        if counted {
            app.metrics.connections.dec();
        }
    });
    let conn = builder.serve_connection(io, service).into_owned();
    type Served = std::pin::Pin<
        Box<dyn Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send>,
    >;
    let mut conn: Served = match shutdown {
        Some(w) => Box::pin(w.watch(conn)),
        None => Box::pin(conn),
    };
    let first_deadline = tokio::time::sleep(app.config.listener.header_timeout);
    tokio::pin!(first_deadline);
    // Armed until the first request arrives; the first deadline after
    // that disarms it instead of closing a connection that is working.
    let mut armed = true;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = &mut first_deadline, if armed => {
                if started.load(Ordering::Relaxed) {
                    armed = false;
                    continue;
                }
                tracing::debug!(%peer, "no request within the header timeout; closing");
                return;
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Best effort: tell an HTTP/1.1 client why, then close.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let msg = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stream.write_all(msg)).await;
    let _ = stream.shutdown().await;
}

fn spawn_cert_reload(
    certs: Arc<CertStore>,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let c = certs.clone();
            match tokio::task::spawn_blocking(move || c.reload_if_changed()).await {
                Ok(Ok(true)) => tracing::info!("TLS certificate reloaded"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "TLS certificate files changed but cannot be used; keeping the current certificate")
                }
                Err(_) => {}
            }
        }
    })
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    Guard(Some(f))
}

/// The client address of a request from `peer` (see [`client_addr`]).
pub fn client_of(app: &App, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
    client_addr(peer, headers, &app.config.listener.trusted_proxies)
}

/// Raises this process's soft limit of open files to its hard limit, as Go
/// servers do at start: every client connection and every upstream
/// connection is a file, and the customary soft limit of 1024 would turn
/// a busy node's connections into accept errors long before
/// `ferry.maxConnections`. Returns the limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let Some(hard) = limit.maximum else {
        // No hard limit: take a generous, finite one.
        let want = Rlimit {
            current: Some(1 << 20),
            maximum: None,
        };
        return match setrlimit(Resource::Nofile, want) {
            Ok(()) => Ok(1 << 20),
            Err(_) => Ok(limit.current.unwrap_or(u64::MAX)),
        };
    };
    if limit.current == Some(hard) {
        return Ok(hard);
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        },
    )
    .map_err(std::io::Error::from)?;
    Ok(hard)
}
