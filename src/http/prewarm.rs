//! The operations API's prewarm endpoints, on the main listener and on
//! `ferry.metricsAddress` alike:
//!
//! - `POST /ferry/v1/prewarm` with `{"images": [...], "platforms": [...]}`
//!   answers `202` with `{"id": ...}` and a `Location`;
//! - `GET /ferry/v1/prewarm/<id>` answers the job's progress.
//!
//! Only with `Authorization: Bearer <token>` of `ferry.adminTokens`: none
//! configured is `403` for everyone, a missing or wrong token `401`. Never
//! anonymous: a prewarm spends the upstream's budget and the disk.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use super::{response, Body};
use crate::app::prewarm;
use crate::app::App;
use crate::oci::{ErrorCode, RegistryError};

/// Where the endpoints live.
pub const PREFIX: &str = "/ferry/v1/prewarm";
/// The largest request body taken.
const MAX_BODY: usize = 256 << 10;

/// Answers a request under [`PREFIX`]; `None` for any other path.
pub(super) async fn answer<B>(app: &Arc<App>, req: Request<B>) -> Option<Response<Body>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path();
    let rest = path.strip_prefix(PREFIX)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let rest = rest.to_string();
    if let Err(e) = admitted(app, req.headers()) {
        return Some(*e);
    }
    Some(match (req.method().clone(), rest.as_str()) {
        (Method::POST, "" | "/") => start(app, req.into_body()).await,
        (Method::GET, id) if id.len() > 1 => match app.prewarms.get(&id[1..]) {
            Some(job) => json(StatusCode::OK, &job.progress()),
            None => error(
                StatusCode::NOT_FOUND,
                ErrorCode::NameUnknown,
                format!(
                    "no prewarm job {:?} (the last {} are kept)",
                    &id[1..],
                    prewarm::KEEP
                ),
            ),
        },
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            format!("POST {PREFIX} starts a prewarm; GET {PREFIX}/<id> reads one"),
        ),
    })
}

/// A bearer token of `ferry.adminTokens`, or the refusal.
fn admitted(app: &App, headers: &http::HeaderMap) -> Result<(), Box<Response<Body>>> {
    let tokens = &app.config.admin_tokens;
    if tokens.is_empty() {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            ErrorCode::Denied,
            "the operations API is off: set ferry.adminTokens or ferry.adminTokensFile".into(),
        )));
    }
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    match presented {
        Some(t) if tokens.allows(t.trim()) => Ok(()),
        _ => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "a bearer token of ferry.adminTokens is needed".into(),
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"ferry operations\""),
            );
            Err(Box::new(r))
        }
    }
}

async fn start<B>(app: &Arc<App>, body: B) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!("the request body (at most {} KiB): {e}", MAX_BODY >> 10),
            )
        }
    };
    let request: prewarm::Request = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!("a prewarm is {{\"images\": [\"repo:tag\", ...], \"platforms\": [\"linux/amd64\", ...]}}: {e}"),
            )
        }
    };
    if let Err(why) = request.check() {
        return error(StatusCode::BAD_REQUEST, ErrorCode::Unsupported, why);
    }
    let job = app.start_prewarm(request);
    let mut r = json(StatusCode::ACCEPTED, &serde_json::json!({ "id": job.id }));
    if let Ok(v) = http::HeaderValue::from_str(&format!("{PREFIX}/{}", job.id)) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    r
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(response::full(body))
        .expect("valid headers")
}

fn error(status: StatusCode, code: ErrorCode, message: String) -> Response<Body> {
    response::error(&RegistryError::new(status, code, message), false)
}
