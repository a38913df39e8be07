//! Request handling: dispatch by route, client access control, the handlers
//! for blobs, manifests, listings and referrers, and the access log.
//!
//! [`App`] is everything a request needs (config, coordinator, clock,
//! metrics, access control); [`App::handle`] answers one request and logs
//! it. The listeners that feed it live in [`crate::listener`]; the
//! operations endpoints (`/healthz`, `/readyz`, `/metrics`, the status page
//! at `/`) in `operations` and `status_page`.

mod blobs;
mod listing;
mod manifests;
mod operations;
mod range;
mod referrers;
mod response;
mod router;
mod status_page;
mod tag_freshness;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::access::{Access, Denied, Identity};
use crate::clock::Clock;
use crate::config::Config;
use crate::coordinator::Coordinator;
use crate::lifecycle::{Lifecycle, SpaceProbe};
use crate::listener::Role;
use crate::metrics::{status_class, CacheLabels, Metrics, RequestLabels};
use crate::oci::{ErrorCode, RegistryError};
use crate::routing::{Resolved, Router};
use crate::stats::Stats;
use crate::store::FsStore;
use dashmap::DashMap;

pub use listing::{next_link, paged_list};
pub use manifests::referenced_digests;
pub use range::{resolve as resolve_range, RangeRequest};
pub use response::Body;
pub use router::{route, Route};

/// Everything a request handler needs.
#[derive(Debug)]
pub struct App {
    pub config: Arc<Config>,
    pub coordinator: Arc<Coordinator>,
    /// Wall-clock time for tag freshness; tests use a manual one.
    pub clock: Clock,
    pub stats: Stats,
    pub metrics: Arc<Metrics>,
    /// Set at shutdown: `/readyz` answers 503 from then on.
    pub draining: std::sync::atomic::AtomicBool,
    /// Tag revalidations in flight, shared by concurrent requests.
    revalidations: DashMap<String, tag_freshness::SharedRevalidation>,
    next_request_id: AtomicU64,
    /// Client access control, when configured.
    pub access: Option<Access>,
}

/// What tests may swap: the clock, and the free-space probe.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub clock: Clock,
    pub space: Option<SpaceProbe>,
}

impl App {
    /// Opens the store (cleaning up after a crash, indexing what it holds)
    /// and builds the upstream clients.
    pub fn new(config: Config) -> std::io::Result<Arc<App>> {
        App::with_hooks(config, Hooks::default())
    }

    /// As [`App::new`], with a given clock and space probe.
    pub fn with_hooks(config: Config, hooks: Hooks) -> std::io::Result<Arc<App>> {
        let clock = hooks.clock;
        let (store, recovery) = FsStore::open(&config.storage_root)?;
        if recovery.temp_files_removed > 0 {
            tracing::info!(removed = recovery.temp_files_removed, root = %config.storage_root.display(),
                "removed temp files left by an earlier run");
        }
        let lifecycle = Arc::new(Lifecycle::open(
            &store,
            config.lifecycle.clone(),
            hooks.space,
        )?);
        tracing::info!(
            blobs = lifecycle.index.len(),
            bytes = lifecycle.index.total(),
            "store indexed"
        );
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let router = Router::new(&config).map_err(invalid)?;
        let access = match &config.access {
            Some(a) => Some(Access::load(a).map_err(invalid)?),
            None => None,
        };
        let metrics = Arc::new(Metrics::default().with_registries(&router));
        let shared = match &config.shared {
            Some(s) => Some(Arc::new(crate::shared::Shared::open(s)?)),
            None => None,
        };
        let coordinator = Coordinator::new(
            Arc::new(store),
            router,
            lifecycle,
            clock.clone(),
            metrics.clone(),
            crate::coordinator::FetchSettings {
                absent_ttl: config.absent_ttl,
                max_blob_size: config.max_blob_size,
                shared,
            },
        );
        Ok(Arc::new(App {
            config: Arc::new(config),
            coordinator,
            clock,
            stats: Stats::default(),
            metrics,
            draining: std::sync::atomic::AtomicBool::new(false),
            revalidations: DashMap::new(),
            next_request_id: AtomicU64::new(1),
            access,
        }))
    }

    /// Answers one request from `peer` and writes its access-log line.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: IpAddr,
        role: Role,
    ) -> Response<Body> {
        let started = Instant::now();
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let head = method == Method::HEAD;
        let client = crate::listener::client_of(self, peer, req.headers());
        if path == "/" && role == Role::Main {
            return match self.may_see_status(req.headers()).await {
                Ok(()) => status_page::render(self),
                Err(e) => self.refusal(&e, head),
            };
        }
        if let Some(r) = self.operations(&path, role).await {
            return r;
        }
        let mut answer = Answer::default();
        let response = match self.identify(&req).await {
            Err(e) => self.refusal(&e, head),
            Ok(who) => {
                answer.user = match &who {
                    Identity::User(u) => Some(u.clone()),
                    Identity::Anonymous => None,
                };
                match self.dispatch(&req, head, &who, &mut answer).await {
                    Ok(r) => r,
                    Err(e) => self.refusal(&e, head),
                }
            }
        };
        let bytes = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let m = &self.metrics;
        m.requests
            .get_or_create(&RequestLabels {
                route: route_label(&path),
                status: status_class(response.status().as_u16()),
            })
            .inc();
        let cache = answer.cache;
        if cache != "-" {
            m.cache.get_or_create(&CacheLabels { result: cache }).inc();
        }
        if !head {
            m.bytes_served.inc_by(bytes.parse().unwrap_or(0));
        }
        tracing::info!(
            request_id = id,
            %client,
            user = answer.user.as_deref().unwrap_or("-"),
            %method,
            path = %path,
            status = response.status().as_u16(),
            bytes = %bytes,
            cache,
            registry = answer.registry.as_deref().unwrap_or("-"),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request"
        );
        response
    }

    /// An error response; a refusal by access control carries the
    /// challenge that makes clients log in.
    fn refusal(&self, e: &RegistryError, head: bool) -> Response<Body> {
        let mut r = response::error(e, head);
        if e.code == ErrorCode::Unauthorized && self.access.is_some() {
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static(crate::access::CHALLENGE),
            );
        }
        r
    }

    /// The status page names repositories' digests and upstream errors:
    /// with access control on, only `adminPolicy` users see it.
    async fn may_see_status(&self, headers: &http::HeaderMap) -> Result<(), RegistryError> {
        let Some(a) = &self.access else {
            return Ok(());
        };
        let who = a.identify(headers).await.map_err(|d| {
            self.metrics.access_denied.inc();
            denied(d, "the credentials are not valid")
        })?;
        match who {
            Identity::User(u) if a.is_admin(&u) => Ok(()),
            Identity::User(_) => {
                self.metrics.access_denied.inc();
                Err(denied(
                    Denied::Forbidden,
                    "the status page is for adminPolicy users",
                ))
            }
            Identity::Anonymous => {
                self.metrics.access_denied.inc();
                Err(denied(
                    Denied::Unauthenticated,
                    "the status page is for adminPolicy users",
                ))
            }
        }
    }

    /// Who sent the request (anonymous when access control is off).
    async fn identify(&self, req: &Request<Incoming>) -> Result<Identity, RegistryError> {
        match &self.access {
            None => Ok(Identity::Anonymous),
            Some(a) => a.identify(req.headers()).await.map_err(|d| {
                self.metrics.access_denied.inc();
                denied(d, "the credentials are not valid")
            }),
        }
    }

    /// May `who` read a routed repository? Policies may name it as the
    /// client did (`team/app`) or by registry (`ghcr.io/team/app`: one of
    /// the registry's hosts, then its upstream name). For each candidate
    /// registry, a policy written for that registry that matches decides;
    /// otherwise the client's name does. Unreadable candidates are dropped;
    /// none left is a refusal.
    fn allow_repo(&self, who: &Identity, repo: &mut Resolved) -> Result<(), RegistryError> {
        let Some(a) = &self.access else {
            return Ok(());
        };
        let by_name = a.check_read(who, repo.local.as_str());
        let mut refusal = by_name.err();
        repo.targets.retain(|t| {
            let qualified: Vec<(String, &String)> = t
                .registry
                .host_names()
                .iter()
                .map(|h| (format!("{h}/{}", t.upstream_name), h))
                .collect();
            let governing: Vec<&String> = qualified
                .iter()
                .filter(|(q, h)| a.governs(h, q))
                .map(|(q, _)| q)
                .collect();
            if governing.is_empty() {
                return by_name.is_ok();
            }
            let verdicts: Vec<Result<(), Denied>> =
                governing.iter().map(|q| a.check_read(who, q)).collect();
            if verdicts.iter().any(|v| v.is_ok()) {
                return true;
            }
            refusal = refusal.or(verdicts.into_iter().find_map(|v| v.err()));
            false
        });
        if repo.targets.is_empty() {
            self.metrics.access_denied.inc();
            let d = refusal.unwrap_or(Denied::Forbidden);
            return Err(denied(
                d,
                &format!("pulling {} needs credentials that may read it", repo.local),
            ));
        }
        Ok(())
    }

    async fn dispatch(
        self: &Arc<Self>,
        req: &Request<Incoming>,
        head: bool,
        who: &Identity,
        answer: &mut Answer,
    ) -> Result<Response<Body>, RegistryError> {
        let route = router::route(req.method(), req.uri().path())?;
        let name = match &route {
            Route::Blob { name, .. }
            | Route::Manifest { name, .. }
            | Route::TagsList { name }
            | Route::Referrers { name, .. } => Some(name.as_str()),
            Route::Base | Route::Catalog => None,
        };
        if self.access.is_some() && *who == Identity::Anonymous && matches!(route, Route::Base) {
            // Like Docker Hub: the base endpoint challenges anonymous
            // clients, so those with credentials learn to send them (those
            // without go on anonymously, and read what anonymous may).
            self.metrics.access_denied.inc();
            return Err(denied(
                Denied::Unauthenticated,
                "this registry takes credentials",
            ));
        }
        let repo = match name {
            Some(name) => {
                let mut repo = self.resolve(req, name)?;
                self.allow_repo(who, &mut repo)?;
                answer.registry = repo.targets.first().map(|t| t.registry.name.clone());
                Some(repo)
            }
            None => None,
        };
        let repo = || repo.as_ref().expect("named routes are resolved");
        let (response, cache) = match route {
            Route::Base => {
                let r = Response::builder()
                    .status(StatusCode::OK)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(http::header::CONTENT_LENGTH, 2)
                    .header(response::API_VERSION_HEADER, "registry/2.0")
                    .body(if head {
                        response::empty()
                    } else {
                        response::full("{}")
                    })
                    .expect("valid headers");
                (r, "-")
            }
            Route::Blob { digest, .. } => {
                let a = if head {
                    blobs::head(&self.coordinator, repo(), &digest).await?
                } else {
                    let far = self.config.far_range_distance;
                    blobs::get(&self.coordinator, repo(), &digest, req.headers(), far).await?
                };
                (a.response, a.cache)
            }
            Route::Manifest { reference, .. } => {
                let a = manifests::serve(self, repo(), &reference, req.headers(), head).await?;
                (a.response, a.cache)
            }
            Route::TagsList { .. } => (
                listing::tags(self, repo(), req.uri().query(), head).await?,
                "-",
            ),
            Route::Catalog => {
                let visible = |name: &str| {
                    self.access
                        .as_ref()
                        .is_none_or(|a| a.check_read(who, name).is_ok())
                };
                (
                    listing::catalog(self, req.uri().query(), head, visible).await?,
                    "hit",
                )
            }
            Route::Referrers { digest, .. } => {
                referrers::serve(self, repo(), &digest, req.uri().query(), head).await?
            }
        };
        answer.cache = cache;
        Ok(response)
    }
}

impl App {
    /// A manifest as a client would get it (by digest, or by tag with the
    /// freshness rules), accepting every manifest type.
    pub async fn manifest(
        self: &Arc<Self>,
        repo: &Resolved,
        reference: &crate::oci::Reference,
    ) -> Result<manifests::Manifest, RegistryError> {
        manifests::get(self, repo, reference).await
    }

    /// Routes a request's repository name, honouring containerd's `?ns=`.
    fn resolve(&self, req: &Request<Incoming>, name: &str) -> Result<Resolved, RegistryError> {
        let ns = req.uri().query().and_then(|q| query_param(q, "ns"));
        self.coordinator.router().resolve(name, ns.as_deref())
    }
}

/// What the access log says of a request besides its status and size.
#[derive(Debug)]
struct Answer {
    /// `hit`, `miss`, `joined`, ... or `-`.
    cache: &'static str,
    /// The registry the repository routes to first.
    registry: Option<String>,
    user: Option<String>,
}

impl Default for Answer {
    fn default() -> Self {
        Answer {
            cache: "-",
            registry: None,
            user: None,
        }
    }
}

/// The OCI error for an access-control refusal.
fn denied(d: Denied, message: &str) -> RegistryError {
    match d {
        Denied::Unauthenticated => {
            RegistryError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
        }
        Denied::Forbidden => RegistryError::new(StatusCode::FORBIDDEN, ErrorCode::Denied, message),
    }
}

/// A low-cardinality name for the endpoint a path asked for.
fn route_label(path: &str) -> &'static str {
    if path == "/v2/" || path == "/v2" {
        "base"
    } else if path == "/v2/_catalog" {
        "catalog"
    } else if !path.starts_with("/v2/") {
        "other"
    } else if path.contains("/blobs/") {
        "blob"
    } else if path.contains("/manifests/") {
        "manifest"
    } else if path.ends_with("/tags/list") {
        "tags"
    } else if path.contains("/referrers/") {
        "referrers"
    } else {
        "other"
    }
}

/// The percent-decoded value of `key` in a query string.
pub(crate) fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_query_is_decoded() {
        assert_eq!(
            query_param("ns=docker.io", "ns").as_deref(),
            Some("docker.io")
        );
        assert_eq!(
            query_param("a=1&ns=127.0.0.1%3A5000", "ns").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(query_param("nsx=1", "ns"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
