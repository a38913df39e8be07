//! Tags from the cluster peer that owns them: in a cluster, a tag
//! (registry + repository + tag) has one owner, like a blob digest, and only
//! the owner revalidates it upstream (manifest requests are what Docker
//! Hub's rate limit counts). Another replica whose stored tag expired asks
//! the owner, which answers from its own freshness rules, and keeps what it
//! got as if it came from the upstream: hashed, stored, linked, fresh for
//! `tagTTL`.
//!
//! The owner's 404 counts as the upstream's. Anything else short of a good
//! answer (the owner unreachable, a stale answer with a `Warning`, any
//! other status, a body too large) returns `None` and the caller asks the
//! upstream itself, so a partition costs upstream requests, never an
//! error. A tag kept from the owner is fresh for `tagTTL` from then on, so
//! it may be served up to twice `tagTTL` after the owner last asked the
//! upstream.

use http::header::{CONTENT_TYPE, WARNING};
use http::StatusCode;

use super::manifests::{self, Failure, Manifest};
use super::App;
use crate::cluster::OwnerKey;
use crate::oci::{Reference, Tag};
use crate::routing::{Resolved, Target};
use crate::upstream::UpstreamError;

/// `tag` at `target` from the peer that owns it, or `None` when this
/// replica should ask the upstream (it owns the tag, the request came from
/// a peer, or the owner did not answer well).
pub async fn tag(
    app: &App,
    repo: &Resolved,
    target: &Target,
    tag: &Tag,
    accept: &str,
) -> Option<Result<Manifest, Failure>> {
    if repo.origin.is_peer() {
        return None;
    }
    let cluster = app.cluster.as_ref()?;
    let owner = cluster.owner(OwnerKey::Tag { target, tag })?;
    let metrics = &app.metrics.cluster;
    let path = format!("/v2/{}/manifests/{tag}", repo.local);
    metrics.requests_out.inc();
    let asked = cluster.get_tag(&owner, &repo.local, target, tag, accept);
    let resp = match asked.await {
        // A stale answer (the owner's upstream is down) is not taken as
        // fresh: this replica tries the upstream itself, and falls back on
        // its own stored tag with its own `maxStale`.
        Ok(r) if r.status() == StatusCode::OK && !r.headers().contains_key(WARNING) => r,
        Ok(r) if r.status() == StatusCode::NOT_FOUND => {
            // The owner asked the upstream, which has no such tag: as good
            // as asking it here.
            return Some(Err(Failure::Upstream(UpstreamError::Status {
                url: format!("peer {owner}{path}"),
                status: StatusCode::NOT_FOUND,
            })));
        }
        Ok(r) => {
            tracing::info!(peer = %owner, %tag, status = r.status().as_u16(), "peer did not serve the tag fresh; asking the upstream");
            metrics.fell_back("status");
            return None;
        }
        Err(e) => {
            tracing::warn!(%tag, error = %e, "peer did not answer; asking the upstream for the tag");
            metrics.fell_back("unreachable");
            return None;
        }
    };
    let header_type = manifests::header_text(resp.headers(), CONTENT_TYPE.as_str());
    let header_digest = manifests::header_text(resp.headers(), "docker-content-digest");
    let url = format!("peer {owner}{path}");
    let limit = app.config.max_manifest_size;
    let bytes = match target
        .registry
        .upstream
        .read_body(&url, resp.into_body(), limit)
        .await
    {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(%tag, error = %e, "reading the tag from a peer failed; asking the upstream");
            metrics.fell_back("broken");
            return None;
        }
    };
    metrics.peer_bytes.inc_by(bytes.len() as u64);
    let reference = Reference::Tag(tag.clone());
    Some(
        manifests::keep(
            app,
            target,
            &reference,
            bytes,
            header_type,
            header_digest,
            None,
        )
        .await,
    )
}
