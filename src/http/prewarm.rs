//! The operations API's prewarm endpoints, on the main listener and on
//! `ferry.metricsAddress` alike:
//!
//! - `POST /ferry/v1/prewarm` with `{"images": [...], "platforms": [...],
//!   "everyReplica": false}` answers `202` with `{"id": ...}` and a
//!   `Location`;
//! - `GET /ferry/v1/prewarm/<id>` answers the job's progress.
//!
//! Only with `Authorization: Bearer <token>` of `ferry.adminTokens`: none
//! configured is `403` for everyone, a missing or wrong token `401`. Never
//! anonymous: a prewarm spends the upstream's budget and the disk. A
//! replica asked by a peer for `everyReplica` takes the cluster's
//! signature instead (the body bound to it, see
//! `cluster::body_binding`), answers `200`, and signs its answer with the
//! digest of its body.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use super::{response, Body};
use crate::app::prewarm;
use crate::app::App;
use crate::cluster::{body_binding, PeerCheck, Refusal, Signed};
use crate::oci::{Digest, ErrorCode, RegistryError};

/// Where the endpoints live.
pub const PREFIX: &str = crate::cluster::PREWARM_PATH;
/// The largest request body taken.
const MAX_BODY: usize = 256 << 10;

/// Who is asking.
enum Who {
    /// A bearer token of `ferry.adminTokens`.
    Admin,
    /// A signed cluster peer (its own job with `everyReplica`).
    Peer(Signed),
}

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
    let request_headers = req.headers().clone();
    let who = match admitted(app, &req) {
        Ok(who) => who,
        Err(e) => return Some(*e),
    };
    let (status, body) = match (req.method().clone(), rest.as_str()) {
        (Method::POST, "" | "/") => start(app, req.into_body(), &who).await,
        (Method::GET, id) if id.len() > 1 => read(app, &id[1..], &who),
        _ => failure(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            format!("POST {PREFIX} starts a prewarm; GET {PREFIX}/<id> reads one"),
        ),
    };
    let mut r = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len());
    if status == StatusCode::ACCEPTED {
        if let Some(id) = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["id"].as_str().map(String::from))
        {
            r = r.header(http::header::LOCATION, format!("{PREFIX}/{id}"));
        }
    }
    if let (Who::Peer(_), Some(cluster)) = (&who, &app.cluster) {
        // Signed for this request, its body by its digest.
        r = r.header(
            "docker-content-digest",
            Digest::sha256_of(&body).to_string(),
        );
        let mut resp = r.body(response::full(body)).expect("valid headers");
        cluster.sign_answer(&request_headers, status.as_u16(), resp.headers_mut());
        return Some(resp);
    }
    Some(r.body(response::full(body)).expect("valid headers"))
}

/// A signed peer, or a bearer token of `ferry.adminTokens`; or the refusal.
fn admitted<B>(app: &App, req: &Request<B>) -> Result<Who, Box<Response<Body>>> {
    let headers = req.headers();
    if let Some(cluster) = &app.cluster {
        let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
        match cluster.check(req.method(), path_and_query, headers) {
            PeerCheck::Peer(signed) => return Ok(Who::Peer(signed)),
            PeerCheck::Client => {}
            PeerCheck::Refused(why) => {
                match why {
                    Refusal::BadSignature => app.metrics.cluster.bad_signatures.inc(),
                    Refusal::Replayed => app.metrics.cluster.replayed.inc(),
                };
                cluster.refused(headers, why);
            }
        }
    }
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
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token);
    match presented {
        Some(t) if tokens.allows(t.trim()) => Ok(Who::Admin),
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

async fn start<B>(app: &Arc<App>, body: B, who: &Who) -> (StatusCode, Vec<u8>)
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return failure(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!("the request body (at most {} KiB): {e}", MAX_BODY >> 10),
            )
        }
    };
    if let Who::Peer(signed) = who {
        if signed.repo != body_binding(&bytes) {
            return failure(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "the peer's signature does not cover this body".into(),
            );
        }
    }
    let mut request: prewarm::Request = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return failure(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!("a prewarm is {{\"images\": [\"repo:tag\", ...], \"platforms\": [\"linux/amd64\", ...], \"everyReplica\": false}}: {e}"),
            )
        }
    };
    if let Err(why) = request.check() {
        return failure(StatusCode::BAD_REQUEST, ErrorCode::Unsupported, why);
    }
    let status = match who {
        Who::Admin => StatusCode::ACCEPTED,
        Who::Peer(_) => {
            // A replica's share of everyReplica: its own job, no further.
            request.every_replica = false;
            StatusCode::OK
        }
    };
    let job = app.start_prewarm(request);
    (
        status,
        serde_json::to_vec(&serde_json::json!({ "id": job.id })).unwrap_or_default(),
    )
}

fn read(app: &App, id: &str, who: &Who) -> (StatusCode, Vec<u8>) {
    if let Who::Peer(signed) = who {
        if signed.repo != body_binding(b"") {
            return failure(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "a peer's signature for another request".into(),
            );
        }
    }
    match app.prewarms.get(id) {
        Some(job) => (
            StatusCode::OK,
            serde_json::to_vec(&job.progress()).unwrap_or_default(),
        ),
        None => failure(
            StatusCode::NOT_FOUND,
            ErrorCode::NameUnknown,
            format!(
                "no prewarm job {id:?} (the last {} are kept)",
                prewarm::KEEP
            ),
        ),
    }
}

fn failure(status: StatusCode, code: ErrorCode, message: String) -> (StatusCode, Vec<u8>) {
    let e = RegistryError::new(status, code, message);
    (status, e.to_json())
}

fn error(status: StatusCode, code: ErrorCode, message: String) -> Response<Body> {
    response::error(&RegistryError::new(status, code, message), false)
}
