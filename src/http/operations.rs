//! The operations endpoints: `/healthz` (the process answers), `/readyz`
//! (the store is writable and shutdown has not begun; upstreams are not
//! asked, so an upstream outage does not take every replica out of the
//! load balancer), `/metrics`, and `/` (the status page).
//!
//! With `ferry.metricsAddress` set, `/metrics` is served only there.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{Response, StatusCode};

use super::{response, App, Body};
use crate::listener::Role;
use crate::metrics::MethodLabels;
use crate::store;

impl App {
    /// `/healthz`, `/readyz` and `/metrics`; `None` for everything else.
    pub(super) async fn operations(
        self: &Arc<Self>,
        path: &str,
        role: Role,
    ) -> Option<Response<Body>> {
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
            "/metrics"
                if role == Role::Metrics || self.config.listener.metrics_listen.is_none() =>
            {
                self.sync_metrics();
                let body = self.metrics.encode();
                Some(text(
                    StatusCode::OK,
                    body,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ))
            }
            _ if role == Role::Metrics => Some(text(
                StatusCode::NOT_FOUND,
                "the metrics listener serves /metrics, /healthz and /readyz\n".into(),
                "text/plain",
            )),
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
    pub(super) fn sync_metrics(&self) {
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
        m.store_max_bytes
            .set(lc.config.max_size.unwrap_or(0) as i64);
        let damaged = lc
            .last_scrub
            .lock()
            .ok()
            .and_then(|r| r.as_ref().map(|r| r.damaged.len()));
        m.scrub_damaged_last.set(damaged.unwrap_or(0) as i64);
    }
}
