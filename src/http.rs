//! The HTTP adapter: from a request to the service layer ([`crate::app`])
//! and back to a response, plus the access log.
//!
//! [`handle`] answers one request: the operations endpoints (`/healthz`,
//! `/readyz`, `/metrics`, the status page at `/`), else identify the
//! client, route the path ([`router`]), narrow the repository to what the
//! client may read, and call the handler for the route. Each handler turns
//! an answer of the service layer into headers and a body; none of them
//! decides what to serve. The listeners that feed [`handle`] live in
//! [`crate::listener`].

mod blobs;
mod forwarded;
mod listing;
mod manifests;
mod operations;
mod prewarm;
mod range;
mod referrers;
mod response;
mod router;
mod status_page;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use prometheus_client::metrics::counter::Counter;

use crate::access::Identity;
use crate::app::App;
use crate::cluster::{PeerCheck, Refusal};
use crate::metrics::{status_class, CacheLabels, CacheStatus, DurationLabels, RequestLabels};
use crate::oci::{ErrorCode, RegistryError};
use crate::routing::{Origin, PeerId};

pub use crate::oci::{resolve_range, RangeRequest};
pub use forwarded::client_addr;
pub use response::Body;
pub use router::{route, Route};

/// Which requests a listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The registry API, the status page, and (unless a metrics address is
    /// set) `/metrics` and health.
    Main,
    /// Only `/metrics`, `/healthz`, `/readyz` and the operations API
    /// (`/ferry/v1/prewarm`, behind its admin tokens).
    Metrics,
}

/// Numbers requests for the access log.
static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

/// Answers one request from `peer` and writes its access-log line.
pub async fn handle<B>(app: &Arc<App>, req: Request<B>, peer: IpAddr, role: Role) -> Response<Body>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    let id = NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let head = method == Method::HEAD;
    let client = client_addr(peer, req.headers(), &app.config.listener.trusted_proxies);
    if path == "/" && role == Role::Main {
        return match app.may_see_status(req.headers(), client).await {
            Ok(()) => status_page::render(app),
            Err(e) => refusal(app, &e, head),
        };
    }
    if path.starts_with(prewarm::PREFIX) {
        let agent = user_agent(req.headers()).to_string();
        if let Some(r) = prewarm::answer(app, req).await {
            tracing::info!(
                request_id = id,
                %client,
                user = if r.status().is_client_error() { "-" } else { "admin" },
                %method,
                path = %path,
                status = r.status().as_u16(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                agent,
                "request"
            );
            return r;
        }
        return refusal(
            app,
            &RegistryError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NameUnknown,
                "no such path",
            ),
            head,
        );
    }
    if let Some(r) = operations::answer(app, &path, role).await {
        return r;
    }
    let mut answer = Answer::default();
    // A cluster peer's signed request skips client identification; it is
    // let past access control for blobs and manifests only (see `dispatch`).
    let mut replayed = false;
    let peer = app.cluster.as_ref().and_then(|c| {
        let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
        match c.check(req.method(), path_and_query, req.headers()) {
            PeerCheck::Peer(signed) => Some(signed),
            PeerCheck::Client => None,
            PeerCheck::Refused(why) => {
                match why {
                    Refusal::BadSignature => app.metrics.cluster.bad_signatures.inc(),
                    Refusal::Replayed => {
                        replayed = true;
                        app.metrics.cluster.replayed.inc()
                    }
                };
                c.refused(req.headers(), why);
                None
            }
        }
    });
    let identified = match &peer {
        Some(_) => Ok(Identity::Anonymous),
        None => app.identify(req.headers(), client).await,
    };
    let response = match identified {
        // A replay is refused outright rather than served as an anonymous
        // client's: a replica whose request was raced in first by a
        // replay (or arrived after the memory was full) then goes
        // elsewhere instead of taking an unsigned answer for a lie.
        _ if replayed => {
            let why = "this signed peer request was taken before (a replay); sign a new one";
            refusal(
                app,
                &RegistryError::new(StatusCode::CONFLICT, ErrorCode::Denied, why),
                head,
            )
        }
        Err(e) => refusal(app, &e, head),
        Ok(who) => {
            answer.user = match (&who, &peer) {
                (_, Some(p)) => Some(format!("peer:{}", p.from)),
                (Identity::User(u), None) => Some(u.clone()),
                (Identity::Anonymous, None) => None,
            };
            let origin = match &peer {
                Some(p) => {
                    app.metrics.cluster.requests_in.inc();
                    // Fair between the clients the peers serve.
                    let client = p.client.parse().unwrap_or(client);
                    let from = PeerId::of(&p.from);
                    let hops = crate::cluster::tree::decode(req.headers());
                    (Origin::Peer { client, from, hops }, Some(p.repo.as_str()))
                }
                None => (Origin::Client(client), None),
            };
            let lied = path.strip_prefix(crate::cluster::LIED_PATH);
            match (&peer, lied) {
                (Some(p), Some(digest)) => {
                    let query = req.uri().query().unwrap_or("");
                    peer_lied(app, &p.from, digest, query)
                }
                _ => match dispatch(app, &req, head, &who, origin, &mut answer).await {
                    Ok(r) => r,
                    Err(e) => refusal(app, &e, head),
                },
            }
        }
    };
    let mut response = response;
    if let (Some(_), Some(cluster)) = (&peer, app.cluster.as_ref()) {
        // A peer takes nothing from an answer it cannot tell from a forgery.
        let status = response.status().as_u16();
        cluster.sign_answer(req.headers(), status, response.headers_mut());
    }
    let bytes = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let m = &app.metrics;
    m.requests
        .get_or_create(&RequestLabels {
            route: route_label(&path),
            status: status_class(response.status().as_u16()),
        })
        .inc();
    if let Some(result) = answer.cache {
        m.cache.get_or_create(&CacheLabels { result }).inc();
    }
    m.request_duration
        .get_or_create(&DurationLabels {
            route: route_label(&path),
            cache: answer.cache.map_or("none", CacheStatus::as_str),
        })
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(
        request_id = id,
        %client,
        user = answer.user.as_deref().unwrap_or("-"),
        %method,
        path = %path,
        status = response.status().as_u16(),
        bytes,
        cache = answer.cache.map_or("-", CacheStatus::as_str),
        registry = answer.registry.as_deref().unwrap_or("-"),
        elapsed_ms = started.elapsed().as_millis() as u64,
        agent = user_agent(req.headers()),
        "request"
    );
    // Content only: an error's JSON or a redirect is not a byte the cache
    // served (the status page's "saved" is served less fetched).
    match response.status().is_success() {
        true => count_served(response, &m.bytes_served),
        false => response,
    }
}

/// `GET /ferry/peer/lied/<digest>?peer=<host:port>` from a signed peer:
/// it caught that peer sending bytes that are not the blob. The liar is
/// left out here too, and a fill of the blob from it ends now (see
/// `Coordinator::peer_lied`). `204`; `400` for a bad digest.
fn peer_lied(app: &Arc<App>, from: &str, raw: &str, query: &str) -> Response<Body> {
    let parsed = raw.parse::<crate::oci::Digest>();
    let (Ok(digest), Some(liar)) = (parsed, query_param(query, "peer")) else {
        let why = "a lie report names a digest and a peer";
        return refusal(
            app,
            &RegistryError::bad_request(ErrorCode::DigestInvalid, why),
            false,
        );
    };
    if let Some(cluster) = &app.cluster {
        cluster.fail(&liar, "lied");
    }
    let fill = app.coordinator.peer_lied(&liar, &digest);
    tracing::warn!(from, liar = %liar, %digest, fill = fill.as_str(),
        "a replica caught a peer sending bytes that are not the blob");
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(response::empty())
        .expect("valid")
}

/// Bodies of up to this many bytes, known whole, count as served at once.
const SERVED_AT_ONCE: u64 = 64 << 10;

/// Counts a response's body bytes as served as they go out, not as
/// announced, so a pull in progress shows what it was sent. A small body
/// known whole (manifests, errors, small blobs, `HEAD`s) is counted at
/// once, which spares the common small answer a wrapper.
fn count_served(response: Response<Body>, served: &Counter) -> Response<Body> {
    match response.body().size_hint().exact() {
        Some(n) if n <= SERVED_AT_ONCE => {
            served.inc_by(n);
            response
        }
        _ => {
            let served = served.clone();
            response.map(|body| crate::upstream::CountedBody::new(body, served).boxed_unsync())
        }
    }
}

/// The client's `User-Agent` for the access log (which runtime asked:
/// `docker/…`, `containerd/…`, `containers/…` for podman, `Buildah/…`,
/// `skopeo/…`), cut short so a client cannot make log lines long; the log
/// quotes and escapes it.
fn user_agent(headers: &http::HeaderMap) -> &str {
    let agent = headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    match agent.char_indices().nth(160) {
        Some((end, _)) => &agent[..end],
        None => agent,
    }
}

/// An error response; a refusal by access control carries the challenge
/// that makes clients log in.
fn refusal(app: &App, e: &RegistryError, head: bool) -> Response<Body> {
    let mut r = response::error(e, head);
    if e.code == ErrorCode::Unauthorized && app.access.is_some() {
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static(crate::access::CHALLENGE),
        );
    }
    r
}

async fn dispatch<B>(
    app: &Arc<App>,
    req: &Request<B>,
    head: bool,
    who: &Identity,
    (origin, peer_routed): (Origin, Option<&str>),
    answer: &mut Answer,
) -> Result<Response<Body>, RegistryError> {
    let route = router::route(req.method(), req.uri().path())?;
    let query = req.uri().query();
    let name = match &route {
        Route::Blob { name, .. }
        | Route::Manifest { name, .. }
        | Route::TagsList { name }
        | Route::Referrers { name, .. } => Some(name.as_str()),
        Route::Base | Route::Catalog => None,
    };
    if matches!(route, Route::Base) {
        app.challenge_base(who)?;
    }
    let repo = match name {
        Some(name) => {
            let repo = match (peer_routed, &route) {
                // A signed peer request for a blob or manifest: the
                // sending replica authorized its client and routed the
                // name already.
                (Some(routed), Route::Blob { .. } | Route::Manifest { .. }) => {
                    app.resolve_routed(name, routed, origin)?
                }
                _ => {
                    let ns = query.and_then(|q| query_param(q, "ns"));
                    let mut repo = app.resolve(name, ns.as_deref(), origin)?;
                    app.authorize(who, &mut repo)?;
                    repo
                }
            };
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
            (r, None)
        }
        Route::Blob { digest, .. } => {
            let (r, cache) = if head {
                blobs::head(&app.coordinator, repo(), &digest).await?
            } else {
                let ranges = crate::coordinator::RangePolicy {
                    far: app.config.far_range_distance,
                    verified: app.config.verified_ranges,
                };
                blobs::get(&app.coordinator, repo(), &digest, req.headers(), ranges).await?
            };
            (r, Some(cache))
        }
        Route::Manifest { reference, .. } => {
            let (r, cache) = manifests::serve(app, repo(), &reference, req.headers(), head).await?;
            (r, Some(cache))
        }
        Route::TagsList { .. } => (listing::tags(app, repo(), query, head).await?, None),
        Route::Catalog => {
            let visible = |name: &str| app.may_list(who, name);
            (
                listing::catalog(app, query, head, visible).await?,
                Some(CacheStatus::Hit),
            )
        }
        Route::Referrers { digest, .. } => {
            let (r, cache) = referrers::serve(app, repo(), &digest, query, head).await?;
            (r, Some(cache))
        }
    };
    answer.cache = cache;
    Ok(response)
}

/// What the access log says of a request besides its status and size.
#[derive(Debug, Default)]
struct Answer {
    /// Where the answer came from; `None` for routes without a cache.
    cache: Option<CacheStatus>,
    /// The registry the repository routes to first.
    registry: Option<String>,
    user: Option<String>,
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

/// The percent-decoded value of `key` in a query string (`+` is a space,
/// as in HTML forms; invalid UTF-8 is replaced).
pub(crate) fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| {
            let v = v.replace('+', " ");
            percent_encoding::percent_decode_str(&v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
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
        assert_eq!(query_param("x=%zz%4", "x").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("x=a+b", "x").as_deref(), Some("a b"));
    }
}
