//! The client-facing door: listeners, connection limits, slow clients,
//! TLS, and graceful shutdown. It knows nothing of registries: it hands
//! each request to a [`Handler`] and writes back what it returns.
//!
//! [`Listener::bind`] binds the main listener (and, when
//! `ferry.metricsAddress` is set, a second one whose requests are marked
//! [`Role::Metrics`]). [`Listener::run`] accepts connections until its
//! shutdown future completes: `on_drain` is called at once (so `/readyz`
//! turns 503), the listener keeps serving for `drainDelay`, then closes,
//! and in-flight responses get `shutdownTimeout` to finish. It spawns one
//! task per connection and nothing else; background work is the server
//! wiring's (see [`crate::server`]).
//!
//! Every connection holds one of `maxConnections` permits (over the limit
//! it is closed at once and counted); its request headers must arrive
//! within `headerTimeout` and fit in `maxHeaderSize` (431 otherwise), and a
//! connection that sends nothing at all is closed after `headerTimeout`.
//! Out of file descriptors, the accept loop sheds new connections with the
//! help of a spare descriptor instead of leaving them hanging (see
//! `reserve`).

mod reserve;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::{Config, ListenerConfig};
use crate::http::{Body, Role};
use crate::metrics::Metrics;

pub use tls::{reload_loop, CertStore};

/// Answers requests: what the listener calls for each one.
pub trait Handler: Clone + Send + Sync + 'static {
    fn call(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        role: Role,
    ) -> impl Future<Output = Response<Body>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request<Incoming>, SocketAddr, Role) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send,
{
    fn call(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        role: Role,
    ) -> impl Future<Output = Response<Body>> + Send {
        self(req, peer, role)
    }
}

/// A client that opens a connection and never finishes the TLS handshake
/// is dropped after this long.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound listeners, ready to run.
pub struct Listener {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    certs: Option<Arc<CertStore>>,
    limits: ListenerConfig,
    drain_delay: Duration,
    shutdown_grace: Duration,
}

impl Listener {
    /// Loads the TLS certificates (if any) and binds the listen address(es).
    pub async fn bind(config: &Config) -> std::io::Result<Listener> {
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
        Ok(Listener {
            listener,
            metrics_listener,
            certs,
            limits: config.listener.clone(),
            drain_delay: config.drain_delay,
            shutdown_grace: config.shutdown_grace,
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

    /// The HTTPS listener's certificates, when it has them.
    pub fn certs(&self) -> Option<&Arc<CertStore>> {
        self.certs.as_ref()
    }

    /// Serves `handler` until `shutdown` completes, then drains for at most
    /// the configured shutdown timeout. `on_drain` is called when draining
    /// begins.
    pub async fn run(
        self,
        handler: impl Handler,
        metrics: Arc<Metrics>,
        on_drain: impl FnOnce(),
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let Listener {
            listener,
            metrics_listener,
            certs,
            limits,
            drain_delay,
            shutdown_grace,
        } = self;
        let acceptor = match &certs {
            Some(c) => Some(c.acceptor()?),
            None => None,
        };
        let door = Door::new(&limits, metrics.clone());
        let graceful = GracefulShutdown::new();
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let metrics_task = metrics_listener.map(|l| {
            let (door, handler) = (door.clone(), handler.clone());
            tokio::spawn(async move {
                let mut spare = reserve::Spare::new();
                // Connections shed here are not the main listener's refusals.
                let shed = prometheus_client::metrics::counter::Counter::default();
                loop {
                    let (stream, peer) = match l.accept().await {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "metrics listener: accept failed");
                            match spare.after_accept_error(&l, &e, &shed).await {
                                reserve::Recovered::Serve(s, p) => (s, p),
                                _ => continue,
                            }
                        }
                    };
                    let io = TokioIo::new(stream);
                    let conn = door
                        .clone()
                        .serve(handler.clone(), io, peer, Role::Metrics, None);
                    tokio::spawn(conn);
                }
            })
        });
        tokio::pin!(shutdown);
        let mut on_drain = Some(on_drain);
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        let drain_deadline = tokio::time::sleep_until(far);
        tokio::pin!(drain_deadline);
        let mut spare = reserve::Spare::new();
        loop {
            let draining = on_drain.is_none();
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => match spare.after_accept_error(&listener, &e, &metrics.connections_refused).await {
                        reserve::Recovered::Serve(s, p) => (s, p),
                        reserve::Recovered::Shed => {
                            tracing::warn!(error = %e, "out of file descriptors; closed a new connection at once");
                            continue;
                        }
                        reserve::Recovered::Waited => {
                            tracing::warn!(error = %e, "accept failed");
                            continue;
                        }
                    },
                },
                _ = &mut shutdown, if !draining => {
                    // Out of the load balancer first: readyz answers 503
                    // while the listener keeps serving for drainDelay.
                    if let Some(f) = on_drain.take() {
                        f();
                    }
                    tracing::info!(delay_s = drain_delay.as_secs_f64(),
                        "shutdown: readyz now 503; closing the listener after the drain delay");
                    drain_deadline.as_mut().reset(tokio::time::Instant::now() + drain_delay);
                    continue;
                }
                _ = &mut drain_deadline, if draining => break,
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                metrics.connections_refused.inc();
                tracing::warn!(%peer, limit = limits.max_connections,
                    "connection limit reached; closing a new connection");
                tokio::spawn(refuse(stream));
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (door, handler, watcher) = (door.clone(), handler.clone(), graceful.watcher());
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match acceptor {
                    None => {
                        let io = TokioIo::new(stream);
                        door.serve(handler, io, peer, Role::Main, Some(watcher))
                            .await
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
                        let door = door.only(h2);
                        let io = TokioIo::new(stream);
                        door.serve(handler, io, peer, Role::Main, Some(watcher))
                            .await
                    }
                }
            });
        }
        drop(listener);
        if let Some(t) = metrics_task {
            t.abort();
        }
        tracing::info!(
            grace_s = shutdown_grace.as_secs_f64(),
            "shutting down: no new connections, draining"
        );
        match tokio::time::timeout(shutdown_grace, graceful.shutdown()).await {
            Ok(()) => tracing::info!("all connections finished"),
            Err(_) => tracing::warn!("shutdown timeout reached; closing remaining connections"),
        }
        Ok(())
    }
}

/// How every connection is served: HTTP/1.1 and HTTP/2 with ferry's header
/// limits, the first-request deadline, and the connection gauge.
#[derive(Clone)]
pub struct Door {
    builder: auto::Builder<TokioExecutor>,
    header_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Door {
    pub fn new(limits: &ListenerConfig, metrics: Arc<Metrics>) -> Door {
        Door {
            builder: connection_builder(limits),
            header_timeout: limits.header_timeout,
            metrics,
        }
    }

    /// The same door speaking only HTTP/2 (`h2`) or only HTTP/1.1, for a
    /// TLS connection whose protocol ALPN chose.
    fn only(mut self, h2: bool) -> Door {
        self.builder = if h2 {
            self.builder.http2_only()
        } else {
            self.builder.http1_only()
        };
        self
    }

    /// Serves one connection until it ends. A connection that has not sent
    /// a whole request within `headerTimeout` of opening is closed (hyper's
    /// own header timeout covers the requests after the first). Public so
    /// tests can drive it over an in-memory pipe on paused time.
    pub async fn serve<I>(
        self,
        handler: impl Handler,
        io: TokioIo<I>,
        peer: SocketAddr,
        role: Role,
        shutdown: Option<Watcher>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let started = Arc::new(AtomicBool::new(false));
        let service = {
            let started = started.clone();
            service_fn(move |req| {
                started.store(true, Ordering::Relaxed);
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler.call(req, peer, role).await) }
            })
        };
        // Client connections only; the metrics listener's scrapes don't count.
        let counted = role == Role::Main;
        if counted {
            self.metrics.connections.inc();
        }
        let metrics = self.metrics.clone();
        let _open = scopeguard(move || {
            if counted {
                metrics.connections.dec();
            }
        });
        let conn = self.builder.serve_connection(io, service).into_owned();
        type Served = std::pin::Pin<
            Box<dyn Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send>,
        >;
        let mut conn: Served = match shutdown {
            Some(w) => Box::pin(w.watch(conn)),
            None => Box::pin(conn),
        };
        let first_deadline = tokio::time::sleep(self.header_timeout);
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
}

/// HTTP/1.1 and HTTP/2 with ferry's header limits.
fn connection_builder(limits: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(limits.max_header_bytes as u32);
    builder
}

/// Best effort: tell an HTTP/1.1 client why, then close.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let msg = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stream.write_all(msg)).await;
    let _ = stream.shutdown().await;
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
