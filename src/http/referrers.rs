//! `GET /v2/<name>/referrers/<digest>`: the index from
//! [`crate::app::referrers`], filtered by `artifactType` here
//! (`OCI-Filters-Applied` says so).

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Response, StatusCode};
use serde_json::Value;

use super::query_param;
use super::response::{self, Body, API_VERSION_HEADER};
use crate::app::referrers::INDEX;
use crate::app::App;
use crate::metrics::CacheStatus;
use crate::oci::{Digest, RegistryError};
use crate::routing::Resolved;

pub async fn serve(
    app: &Arc<App>,
    repo: &Resolved,
    digest: &Digest,
    query: Option<&str>,
    head: bool,
) -> Result<(Response<Body>, CacheStatus), RegistryError> {
    let (index, cache) = crate::app::referrers::index(app, repo, digest).await?;
    let filter = query.and_then(|q| query_param(q, "artifactType"));
    let index = match &filter {
        Some(t) => filtered(index, t),
        None => index,
    };
    let bytes = serde_json::to_vec(&index).expect("json serializes");
    let mut r = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, INDEX)
        .header(CONTENT_LENGTH, bytes.len())
        .header(API_VERSION_HEADER, "registry/2.0");
    if filter.is_some() {
        r = r.header("oci-filters-applied", "artifactType");
    }
    let body = if head {
        response::empty()
    } else {
        response::full(bytes)
    };
    Ok((r.body(body).expect("valid headers"), cache))
}

fn filtered(mut index: Value, artifact_type: &str) -> Value {
    if let Some(list) = index.get_mut("manifests").and_then(Value::as_array_mut) {
        list.retain(|m| m.get("artifactType").and_then(Value::as_str) == Some(artifact_type));
    }
    index
}
