//! The OCI referrers API as a service: the referrers index of a digest,
//! passed through from upstream and cached like a tag (for
//! `referrersTTL`). An upstream without the API (404) gets the empty image
//! index the spec allows; an unavailable one, the cached list. Filtering by
//! `artifactType` is the HTTP adapter's.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::Value;

use super::App;
use crate::metrics::CacheStatus;
use crate::oci::{Digest, ErrorCode, RegistryError};
use crate::routing::{Resolved, Target};
use crate::store;
use crate::upstream::{is_absent, UpstreamError};

/// The media type of a referrers answer.
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn empty_index() -> Value {
    serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": []})
}

fn cache_key(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm().as_str(), digest.hex())
}

/// The referrers index: cached while fresh, else from upstream.
pub async fn index(
    app: &Arc<App>,
    repo: &Resolved,
    digest: &Digest,
) -> Result<(Value, CacheStatus), RegistryError> {
    let key = cache_key(digest);
    let mut cached: Option<Value> = None;
    for target in &repo.targets {
        if let Some((at, index)) = read_cache(app, target, &key).await {
            if app.clock.age(at) < target.registry.config.freshness.referrers_ttl {
                return Ok((index, CacheStatus::Hit));
            }
            cached.get_or_insert(index);
        }
    }
    let failure = match repo.first(|t| upstream_index(app, t, digest)).await {
        Ok((index, target)) => {
            write_cache(app, target, repo, &key, &index).await;
            return Ok((index, CacheStatus::Miss));
        }
        Err(e) => e,
    };
    if is_absent(&failure) {
        // No referrers API upstream (or nothing known): the spec's answer.
        return Ok((empty_index(), CacheStatus::Miss));
    }
    match cached {
        Some(index) if failure.is_unavailable() => Ok((index, CacheStatus::Stale)),
        _ => Err(failure.to_registry_error(ErrorCode::ManifestUnknown)),
    }
}

async fn upstream_index(
    app: &App,
    target: &Target,
    digest: &Digest,
) -> Result<Value, UpstreamError> {
    let upstream = &target.registry.upstream;
    let path = format!("/v2/{}/referrers/{digest}", target.upstream_name);
    let url = upstream.url(&path).to_string();
    let mut headers = HeaderMap::new();
    headers.insert(http::header::ACCEPT, HeaderValue::from_static(INDEX));
    let resp = upstream.request(Method::GET, &path, headers).await?;
    if resp.status() != StatusCode::OK {
        return Err(UpstreamError::Status {
            url,
            status: resp.status(),
        });
    }
    let body = upstream
        .read_body(&url, resp.into_body(), app.config.max_manifest_size)
        .await?;
    let index: Value = serde_json::from_slice(&body).map_err(|e| UpstreamError::Protocol {
        url: url.clone(),
        cause: format!("referrers answer is not JSON: {e}"),
    })?;
    if !index.get("manifests").is_some_and(Value::is_array) {
        return Err(UpstreamError::Protocol {
            url,
            cause: "referrers answer is not an image index".into(),
        });
    }
    Ok(index)
}

async fn read_cache(app: &App, target: &Target, key: &str) -> Option<(u64, Value)> {
    let store = app.coordinator.store().clone();
    let (r, n, k) = (
        target.registry.name.clone(),
        target.upstream_name.clone(),
        key.to_string(),
    );
    let bytes = store::blocking(move || store.get_record(&r, &n, "_referrers", &k))
        .await
        .ok()??;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some((v.get("fetchedAt")?.as_u64()?, v.get("index")?.clone()))
}

async fn write_cache(app: &App, target: &Target, repo: &Resolved, key: &str, index: &Value) {
    let record = serde_json::json!({"fetchedAt": app.clock.now_ms(), "index": index});
    let bytes = serde_json::to_vec(&record).expect("json serializes");
    let store = app.coordinator.store().clone();
    let (r, n, k) = (
        target.registry.name.clone(),
        target.upstream_name.clone(),
        key.to_string(),
    );
    if let Err(e) =
        store::blocking(move || store.put_record(&r, &n, "_referrers", &k, &bytes)).await
    {
        tracing::warn!(repo = %repo.local, error = %e, "cannot cache referrers");
    }
}
