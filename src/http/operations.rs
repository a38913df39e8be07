//! The operations endpoints: `/healthz` (the process answers), `/readyz`
//! (the store is writable and shutdown has not begun; upstreams are not
//! asked, so an upstream outage does not take every replica out of the
//! load balancer), `/metrics`, and `/` (the status page).
//!
//! With `ferry.metricsAddress` set, `/metrics` is served only there.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{Response, StatusCode};

use super::{response, Body, Role};
use crate::app::App;

/// `/healthz`, `/readyz` and `/metrics`; `None` for everything else.
pub(super) async fn answer(app: &Arc<App>, path: &str, role: Role) -> Option<Response<Body>> {
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
            let why = if app.draining.load(Ordering::SeqCst) {
                Some("shutting down".to_string())
            } else {
                app.store_writable()
                    .await
                    .err()
                    .map(|e| format!("store not writable: {e}"))
            };
            Some(match why {
                // Peers compare their routing with this one's.
                None => match &app.cluster {
                    Some(c) => {
                        let mut r = text(StatusCode::OK, "ready\n".into(), "text/plain");
                        if let Ok(v) = http::HeaderValue::from_str(&c.routing().encode()) {
                            r.headers_mut()
                                .insert(crate::routing::fingerprint::HEADER, v);
                        }
                        if let Some(v) = c.zone().and_then(|z| http::HeaderValue::from_str(z).ok())
                        {
                            r.headers_mut().insert(crate::cluster::tree::ZONE, v);
                        }
                        r
                    }
                    None => text(StatusCode::OK, "ready\n".into(), "text/plain"),
                },
                Some(w) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {w}\n"),
                    "text/plain",
                ),
            })
        }
        "/metrics" if role == Role::Metrics || app.config.listener.metrics_listen.is_none() => {
            app.refresh_gauges();
            let body = app.metrics.encode();
            Some(text(
                StatusCode::OK,
                body,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ))
        }
        _ if role == Role::Metrics => Some(text(
            StatusCode::NOT_FOUND,
            "the metrics listener serves /metrics, /healthz, /readyz and /ferry/v1/prewarm\n"
                .into(),
            "text/plain",
        )),
        _ => None,
    }
}
