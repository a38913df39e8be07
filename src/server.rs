//! The top-level wiring of `ferry serve`: the service layer ([`App`]), the
//! HTTP adapter as the listener's handler, and the background tasks
//! (eviction, scrub, shared-tier upkeep, periodic sync, certificate
//! reload), started here and stopped here, so no lower module starts work
//! of its own.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::app::{App, Error, Hooks};
use crate::config::Config;
use crate::http::Role;
use crate::listener::{CertStore, Handler, Listener};

/// A bound, ready-to-run ferry server.
pub struct Server {
    app: Arc<App>,
    listener: Listener,
}

/// The HTTP adapter over `app`, as the listener calls it.
pub fn handler(app: Arc<App>) -> impl Handler {
    move |req, peer: SocketAddr, role: Role| {
        let app = app.clone();
        async move { crate::http::handle(&app, req, peer.ip(), role).await }
    }
}

impl Server {
    /// Binds the listen address(es), opens the store and builds the app.
    pub async fn bind(config: Config) -> Result<Server, Error> {
        Server::bind_with_hooks(config, Hooks::default()).await
    }

    /// As [`Server::bind`], with a given clock and space probe.
    pub async fn bind_with_hooks(config: Config, hooks: Hooks) -> Result<Server, Error> {
        let listener = Listener::bind(&config).await?;
        // The address as bound (a port of 0 is now a real one): the cluster
        // finds itself among its peers by it.
        let mut config = config;
        config.listen = listener.local_addr();
        let app = App::with_hooks(config, hooks)?;
        Ok(Server { app, listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// The separate metrics listener's address, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.listener.metrics_addr()
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// The HTTPS listener's certificates, when it has them.
    pub fn certs(&self) -> Option<&Arc<CertStore>> {
        self.listener.certs()
    }

    /// Serves until `shutdown` completes, then drains; the background tasks
    /// run for as long.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Server { app, listener } = self;
        let mut background = crate::sync::spawn(&app);
        background.extend(crate::app::tasks::spawn(&app));
        if let Some(cluster) = app.cluster.clone() {
            if let Some(c) = &app.config.cluster {
                let described = crate::cluster::Cluster::describe(c);
                tracing::info!(listen = %app.config.listen, "{}", described.trim_end());
            }
            let live = app.metrics.cluster.peers_live.clone();
            background.push(tokio::spawn(async move { cluster.run(live).await }));
        }
        if let Some(c) = listener.certs() {
            let every = app.config.listener.tls_reload_interval;
            background.push(tokio::spawn(crate::listener::reload_loop(c.clone(), every)));
        }
        let draining = app.clone();
        let result = listener
            .run(
                handler(app.clone()),
                app.metrics.clone(),
                move || draining.draining.store(true, Ordering::SeqCst),
                shutdown,
            )
            .await;
        background.iter().for_each(|t| t.abort());
        result
    }
}
