//! Manifests by digest, and the pieces tags are built from.
//!
//! Candidate registries are asked in order; a 404/401/403 (or a failure)
//! passes the request to the next, and the one that answers is remembered
//! for the repository's blobs. By digest, a stored manifest is answered
//! with no upstream call (it is immutable) once it is known to belong to
//! the repository; otherwise it is fetched, its digest verified, and
//! stored with its media type. Tags are stored per registry (see
//! [`super::tags`] for their freshness rules).

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Method, StatusCode};

use super::App;
use crate::metrics::CacheStatus;
use crate::oci::{
    is_manifest_media_type, sniff_manifest_media_type, Digest, ErrorCode, Hasher, Reference,
    RegistryError, RepoName, Tag,
};
use crate::routing::{Resolved, Target};
use crate::store::{self, TagRecord};
use crate::upstream::headers::content_length;
use crate::upstream::{worse, UpstreamError};

/// The header registries name a manifest's digest in.
const DIGEST_HEADER: &str = "docker-content-digest";

/// A verified manifest.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// What a manifest request resolved to.
#[derive(Clone, Debug)]
pub struct Resolution {
    pub manifest: Manifest,
    pub cache: CacheStatus,
    /// A `Warning` header value, when a stored tag was served stale.
    pub warning: Option<String>,
}

/// A manifest by digest: stored (immutable, no upstream call), else from
/// the first registry that has it, verified.
pub async fn by_digest(
    app: &App,
    repo: &Resolved,
    digest: &Digest,
    accept: &str,
) -> Result<(Manifest, CacheStatus), RegistryError> {
    let reference = Reference::Digest(digest.clone());
    if let Some(m) = stored(app, digest).await? {
        confirm(app, repo, &reference, accept, &m).await?;
        return Ok((m, CacheStatus::Hit));
    }
    let mut failure = None;
    for target in &repo.targets {
        match fetch(app, target, &reference, accept, Some(digest)).await {
            Ok(m) => {
                remember(app, repo, target);
                return Ok((m, CacheStatus::Miss));
            }
            Err(Failure::Upstream(e)) => failure = Some(worse(failure, e)),
            Err(Failure::Refused(e)) => return Err(e),
        }
    }
    let failure = failure.expect("a resolved repository has a target");
    failed(app, repo, &reference, &failure);
    Err(report(Some(failure)))
}

/// Counts a manifest that no registry gave, and logs why (upstream trouble
/// at most once per registry every few seconds; a 404 only at INFO).
pub fn failed(app: &App, repo: &Resolved, reference: &Reference, e: &UpstreamError) {
    let Some(first) = repo.targets.first().map(|t| &t.registry) else {
        return;
    };
    let registry = first.name.as_str();
    app.metrics
        .fetch_failed(registry, crate::metrics::Kind::Manifest, "upstream");
    if crate::upstream::is_not_found(e) {
        tracing::info!(repo = %repo.local, %reference, registry, error = %e, "manifest not found upstream");
    } else if let Some(unlogged) = first.upstream.stats().may_log_failure() {
        tracing::warn!(repo = %repo.local, %reference, registry, error = %e,
            failures_not_logged = unlogged, "manifest fetch failed");
    }
}

/// Why a registry did not give us a manifest.
pub enum Failure {
    /// Not there, or the registry failed: the next one may do better.
    Upstream(UpstreamError),
    /// A definite refusal (bytes that fail their digest): stop here.
    Refused(RegistryError),
}

pub fn report(failure: Option<UpstreamError>) -> RegistryError {
    failure
        .expect("a resolved repository has a target")
        .to_registry_error(ErrorCode::ManifestUnknown)
}

pub fn remember(app: &App, repo: &Resolved, target: &Target) {
    app.coordinator.router().remember_served(repo, target);
}

/// Fetches a manifest with `GET` from one registry, verifies it against
/// `expected` (when asked by digest) and stores it.
pub async fn fetch(
    app: &App,
    target: &Target,
    reference: &Reference,
    accept: &str,
    expected: Option<&Digest>,
) -> Result<Manifest, Failure> {
    let upstream = &target.registry.upstream;
    let (url, resp) = ask(target, Method::GET, reference, accept).await?;
    let header_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
    let header_digest = header_str(resp.headers(), DIGEST_HEADER);
    let limit = app.config.max_manifest_size;
    if content_length(resp.headers()).is_some_and(|l| l > limit as u64) {
        return Err(Failure::Refused(
            UpstreamError::TooLarge { url, limit }.to_registry_error(ErrorCode::ManifestInvalid),
        ));
    }
    let bytes = upstream
        .read_body(&url, resp.into_body(), limit)
        .await
        .map_err(|e| match e {
            UpstreamError::TooLarge { .. } => {
                Failure::Refused(e.to_registry_error(ErrorCode::ManifestInvalid))
            }
            e => Failure::Upstream(e),
        })?;
    keep(
        app,
        target,
        reference,
        bytes,
        header_type,
        header_digest,
        expected,
    )
    .await
}

/// Verifies a manifest's `bytes` (against `expected` when asked by
/// digest), settles its media type, and stores it (locally, in the shared
/// tier, and as belonging to `target`'s repository).
pub async fn keep(
    app: &App,
    target: &Target,
    reference: &Reference,
    bytes: Bytes,
    header_type: Option<String>,
    header_digest: Option<String>,
    expected: Option<&Digest>,
) -> Result<Manifest, Failure> {
    let name = &target.upstream_name;
    let algorithm = expected.map_or(crate::oci::Algorithm::Sha256, |d| d.algorithm());
    let mut h = Hasher::new(algorithm);
    h.update(&bytes);
    let digest = h.finish();
    if let Some(want) = expected {
        if &digest != want {
            app.metrics.digest_mismatches.inc();
            return Err(Failure::Refused(RegistryError::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::ManifestInvalid,
                format!(
                    "upstream manifest {name}@{want} from {} hashes to {digest}; refused",
                    target.registry.name
                ),
            )));
        }
    } else if let Some(hd) = header_digest.as_deref() {
        if hd != digest.to_string() {
            tracing::warn!(repo = %name, %reference, upstream_digest = hd, %digest,
                "upstream Docker-Content-Digest differs from the manifest's hash; using the hash");
        }
    }
    let media_type = match header_type {
        Some(t) if is_manifest_media_type(t.split(';').next().unwrap_or("").trim()) => {
            t.split(';').next().unwrap_or("").trim().to_string()
        }
        other => sniff_manifest_media_type(&bytes)
            .filter(|t| !t.contains('\n'))
            .or(other)
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into()),
    };
    // Stored as a header line and sent as a header: it must be a valid one.
    let media_type =
        if http::HeaderValue::from_str(&media_type).is_ok() && !media_type.contains('\n') {
            media_type
        } else {
            "application/octet-stream".to_string()
        };
    let m = Manifest {
        digest,
        media_type,
        bytes,
    };
    let tiers = app.coordinator.tiers();
    if let Err(e) = tiers.put_manifest(&m.digest, &m.media_type, &m.bytes).await {
        tracing::error!(repo = %name, digest = %m.digest, error = %e, "cannot store manifest; serving it uncached");
    }
    link(app, target, &m).await;
    Ok(m)
}

/// Records that a manifest and everything it references belong to
/// `target`'s repository, so its layers are served there from the cache.
pub async fn link(app: &App, target: &Target, m: &Manifest) {
    let mut digests = referenced_digests(&m.bytes);
    digests.push(m.digest.clone());
    app.coordinator.link(target, digests).await;
}

/// A stored manifest is answered under `repo` only if it belongs there (see
/// the coordinator's membership): known, or confirmed by the upstream.
async fn confirm(
    app: &App,
    repo: &Resolved,
    reference: &Reference,
    accept: &str,
    m: &Manifest,
) -> Result<(), RegistryError> {
    if let Some(target) = app.coordinator.belongs(repo, &m.digest).await {
        // Its references may not be recorded yet (stored through another
        // repository, or before memberships existed): cheap to repeat.
        link(app, target, m).await;
        return Ok(());
    }
    let (_, target) = repo
        .first(|t| async move {
            match head_digest(t, reference, accept).await {
                Ok(_) => Ok(()),
                Err(Failure::Upstream(e)) => Err(e),
                Err(Failure::Refused(e)) => Err(UpstreamError::Protocol {
                    url: t.registry.name.clone(),
                    cause: e.message,
                }),
            }
        })
        .await
        .map_err(|e| e.to_registry_error(ErrorCode::ManifestUnknown))?;
    link(app, target, m).await;
    Ok(())
}

/// What a manifest or index names: child manifests (of an index) and
/// blobs (config, layers, artifact blobs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct References {
    pub manifests: Vec<Digest>,
    pub blobs: Vec<Digest>,
}

/// The one parser of what a manifest references. Not its `subject` and
/// not descriptors with `urls` (foreign layers): registries accept those
/// without holding them, so they prove nothing about what the repository
/// contains, and ferry does not fetch them.
pub fn references(bytes: &[u8]) -> References {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return References::default();
    };
    let digest_of = |v: &serde_json::Value| {
        if v.get("urls").is_some() {
            return None;
        }
        v.get("digest")?.as_str()?.parse::<Digest>().ok()
    };
    let list = |key: &str| -> Vec<Digest> {
        doc.get(key)
            .and_then(|l| l.as_array())
            .map(|l| l.iter().filter_map(digest_of).collect())
            .unwrap_or_default()
    };
    let mut blobs: Vec<Digest> = doc.get("config").and_then(digest_of).into_iter().collect();
    blobs.extend(list("layers"));
    blobs.extend(list("blobs"));
    References {
        manifests: list("manifests"),
        blobs,
    }
}

/// The digests a manifest or index names and so brings into its
/// repository (see [`references`]).
pub fn referenced_digests(bytes: &[u8]) -> Vec<Digest> {
    let r = references(bytes);
    let mut out = r.blobs;
    out.extend(r.manifests);
    out
}

/// The value of header `name`, when it is text.
pub fn header_text(h: &HeaderMap, name: &str) -> Option<String> {
    header_str(h, name)
}

/// Asks one registry for a manifest (`GET` or `HEAD`): its URL (for
/// messages) and its answer, which must be a 200.
async fn ask(
    target: &Target,
    method: Method,
    reference: &Reference,
    accept: &str,
) -> Result<(String, http::Response<hyper::body::Incoming>), Failure> {
    let upstream = &target.registry.upstream;
    let name = &target.upstream_name;
    let url = upstream
        .url(&format!("/v2/{name}/manifests/{reference}"))
        .to_string();
    let resp = upstream
        .manifest(method, name, reference, accept)
        .await
        .map_err(Failure::Upstream)?;
    if resp.status() != StatusCode::OK {
        return Err(Failure::Upstream(UpstreamError::Status {
            url,
            status: resp.status(),
        }));
    }
    Ok((url, resp))
}

/// `HEAD` of a tag at one registry: the digest it names now, if the
/// upstream says (a `HEAD` does not count against Docker Hub's pull quota).
pub async fn head_digest(
    target: &Target,
    reference: &Reference,
    accept: &str,
) -> Result<Option<Digest>, Failure> {
    let (_, resp) = ask(target, Method::HEAD, reference, accept).await?;
    Ok(header_str(resp.headers(), DIGEST_HEADER).and_then(|d| d.parse::<Digest>().ok()))
}

/// A manifest kept here or by another replica in the shared tier (checked
/// against its digest either way; see [`crate::shared::tiered`]).
pub async fn stored(app: &App, digest: &Digest) -> Result<Option<Manifest>, RegistryError> {
    let found = app.coordinator.tiers().get_manifest(digest).await;
    Ok(found.map(|(media_type, bytes)| Manifest {
        digest: digest.clone(),
        media_type,
        bytes,
    }))
}

/// The stored record of a tag at one registry and the manifest it names.
pub async fn stored_tag(
    app: &App,
    target: &Target,
    name: &RepoName,
    tag: &Tag,
) -> Option<(TagRecord, Manifest)> {
    let store = app.coordinator.store().clone();
    let (r, n, t) = (target.registry.name.clone(), name.clone(), tag.clone());
    let local = store::blocking(move || store.get_tag(&r, &n, &t))
        .await
        .ok()
        .flatten();
    // Another replica may have resolved the tag more recently.
    let shared = match app.coordinator.shared() {
        Some(s) => s
            .get_tag(&target.registry.name, name, tag)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(repo = %name, %tag, error = %e, "cannot read tag from the shared tier");
                None
            }),
        None => None,
    };
    // A record dated in the future (clock skew, damage) would stay fresh
    // for ever: it counts as just expired instead.
    let not_after = app.clock.now_ms() + 5 * 60 * 1000;
    let shared = shared.map(|mut r| {
        if r.fetched_at_ms > not_after {
            r.fetched_at_ms = 0;
        }
        r
    });
    let record = match (local, shared) {
        (Some(l), Some(s)) if s.fetched_at_ms > l.fetched_at_ms => s,
        (Some(l), _) => l,
        (None, s) => s?,
    };
    let digest: Digest = record.digest.parse().ok()?;
    let m = stored(app, &digest).await.ok()??;
    Some((record, m))
}

/// Records that `tag` names `m` at `target`'s registry, confirmed now.
pub async fn put_tag(app: &App, target: &Target, name: &RepoName, tag: &Tag, m: &Manifest) {
    let store = app.coordinator.store().clone();
    let record = TagRecord {
        digest: m.digest.to_string(),
        media_type: m.media_type.clone(),
        fetched_at_ms: app.clock.now_ms(),
    };
    let (r, n, t) = (target.registry.name.clone(), name.clone(), tag.clone());
    let shared_record = record.clone();
    if let Err(e) = store::blocking(move || store.put_tag(&r, &n, &t, &record)).await {
        tracing::error!(repo = %name, %tag, error = %e, "cannot store tag mapping");
    }
    if let Some(shared) = app.coordinator.shared().cloned() {
        let (registry, name, tag) = (target.registry.name.clone(), name.clone(), tag.clone());
        tokio::spawn(async move {
            if let Err(e) = shared.put_tag(&registry, &name, &tag, &shared_record).await {
                tracing::warn!(repo = %name, %tag, error = %e, "cannot put tag mapping in the shared tier");
            }
        });
    }
    link(app, target, m).await;
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)?.to_str().ok().map(str::to_owned)
}
