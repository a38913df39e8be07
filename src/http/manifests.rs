//! `GET`/`HEAD /v2/<name>/manifests/<reference>`: the client's `Accept`
//! lines, the manifest from [`crate::app::manifests`], and the response
//! (media type, digest, and a `Warning` when a stored tag was served
//! stale).

use std::sync::Arc;

use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};

use super::response::{self, Body, API_VERSION_HEADER, DIGEST_HEADER};
use crate::app::App;
use crate::metrics::CacheStatus;
use crate::oci::{default_manifest_accept, Reference, RegistryError};
use crate::routing::Resolved;

pub async fn serve(
    app: &Arc<App>,
    repo: &Resolved,
    reference: &Reference,
    headers: &HeaderMap,
    head: bool,
) -> Result<(Response<Body>, CacheStatus), RegistryError> {
    // Clients (Go's containers/image, containerd) send one Accept line per
    // type: all of them count.
    let accept: Vec<&str> = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let accept = if accept.is_empty() {
        default_manifest_accept()
    } else {
        accept.join(", ")
    };
    let r = app.resolve_manifest(repo, reference, &accept).await?;
    let m = &r.manifest;
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, m.media_type.as_str())
        .header(CONTENT_LENGTH, m.bytes.len())
        .header(DIGEST_HEADER, m.digest.to_string())
        .header(API_VERSION_HEADER, "registry/2.0");
    if let Some(w) = &r.warning {
        builder = builder.header(http::header::WARNING, w);
    }
    let body = if head {
        response::empty()
    } else {
        response::full(m.bytes.clone())
    };
    Ok((builder.body(body).expect("valid headers"), r.cache))
}
