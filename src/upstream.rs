//! The client side: requests to the upstream registry.
//!
//! One [`Upstream`] per registry holds a pooled hyper client (HTTP/1.1 and
//! HTTP/2 over rustls, or plain HTTP), the registry's base URL and its
//! timeouts. It follows redirects (registries send blobs to object storage
//! or CDNs) a bounded number of times, and turns every way a request can go
//! wrong into an [`UpstreamError`] that names the URL and the cause. Client
//! headers never pass through here: the front decides what to forward.

mod auth;
mod error;
pub mod headers;
mod listing;
pub mod retry;
mod stats;
mod tls;

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, LOCATION};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::{RetryPolicy, Timeouts};
use crate::oci::{Digest, Reference, RepoName};

pub use auth::{parse_challenges, Challenge};
pub use error::{is_absent, is_not_found, worse, UpstreamError};
pub use listing::paged_list;
pub use stats::{Health, RegistryCollector, UpstreamStats};

/// Redirects followed before a request is given up.
pub const MAX_REDIRECTS: usize = 5;

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A client for one upstream registry, reachable at one or more URLs.
#[derive(Clone)]
pub struct Upstream {
    urls: Vec<Uri>,
    client: HttpClient,
    timeouts: Timeouts,
    retry: RetryPolicy,
    retry_cap: Duration,
    tokens: std::sync::Arc<auth::TokenCache>,
    access: std::sync::Arc<Access>,
    /// Set once the registry asked for Basic auth: send it up front.
    basic_preemptive: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stats: std::sync::Arc<UpstreamStats>,
}

/// Who ferry is to a registry, and whom it lets issue tokens.
#[derive(Debug, Default)]
struct Access {
    credentials: Option<crate::config::Credentials>,
    /// Realm hosts trusted besides the registry's own registrable domain.
    token_realms: Vec<String>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("urls", &self.urls)
            .finish()
    }
}

impl Upstream {
    /// A client for one URL with default retries (tests, tools).
    pub fn new(base: Uri, timeouts: Timeouts) -> Upstream {
        Upstream::with_urls(
            vec![base],
            timeouts,
            RetryPolicy::default(),
            Duration::from_secs(5),
        )
    }

    /// A client that tries `urls` in order and retries per `retry`, never
    /// waiting longer than `retry_cap` at once; web roots, no credentials.
    pub fn with_urls(
        urls: Vec<Uri>,
        timeouts: Timeouts,
        retry: RetryPolicy,
        retry_cap: Duration,
    ) -> Upstream {
        let tls = tls::client_config(true, None).expect("default TLS configuration");
        Upstream::build(urls, timeouts, retry, retry_cap, tls, Access::default())
    }

    /// The client for one configured registry: its URLs, retries, TLS
    /// options (`tlsVerify`, `certDir`) and credentials.
    pub fn for_registry(
        config: &crate::config::RegistryConfig,
        timeouts: Timeouts,
        retry_cap: Duration,
    ) -> Result<Upstream, String> {
        let tls = tls::client_config(config.tls_verify, config.cert_dir.as_deref())?;
        let access = Access {
            credentials: config.credentials.clone(),
            token_realms: config.token_realms.clone(),
        };
        Ok(Upstream::build(
            config.urls.clone(),
            timeouts,
            config.retry,
            retry_cap,
            tls,
            access,
        ))
    }

    fn build(
        urls: Vec<Uri>,
        timeouts: Timeouts,
        retry: RetryPolicy,
        retry_cap: Duration,
        tls: rustls::ClientConfig,
        access: Access,
    ) -> Upstream {
        assert!(!urls.is_empty(), "a registry needs a URL");
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeouts.connect));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        Upstream {
            urls,
            client,
            timeouts,
            retry,
            retry_cap,
            tokens: Default::default(),
            access: std::sync::Arc::new(access),
            basic_preemptive: Default::default(),
            stats: Default::default(),
        }
    }

    /// Bytes, retries, latency and health of this registry.
    pub fn stats(&self) -> &std::sync::Arc<UpstreamStats> {
        &self.stats
    }

    /// The registry's URLs, in failover order.
    pub fn urls(&self) -> &[Uri] {
        &self.urls
    }

    pub fn retry_policy(&self) -> (RetryPolicy, Duration) {
        (self.retry, self.retry_cap)
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// `GET` or `HEAD` of a blob.
    pub async fn blob(
        &self,
        method: Method,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        self.request(method, &path, HeaderMap::new()).await
    }

    /// `GET` or `HEAD` of a manifest, with the `Accept` header to send.
    pub async fn manifest(
        &self,
        method: Method,
        repo: &RepoName,
        reference: &Reference,
        accept: &str,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(accept) {
            headers.insert(http::header::ACCEPT, v);
        }
        self.request(method, &path, headers).await
    }

    /// Sends a request to `path` on the registry: each URL in order, with
    /// retries and backoff on connect errors, timeouts, 408, 429 and 5xx.
    /// Returns the final response whatever its status.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if path.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(UpstreamError::Protocol {
                url: format!("{}{path}", self.urls[0]),
                cause: "not a valid request path".into(),
            });
        }
        let (method, headers) = (&method, &headers);
        let (result, retries) = retry::with_retries(&self.retry, self.retry_cap, |_| async move {
            let mut last = None;
            let mut retry_after = None;
            for base in &self.urls {
                let asked = std::time::Instant::now();
                let answer = self.request_at(base, method.clone(), path, headers.clone()).await;
                match &answer {
                    Ok(resp) if resp.status().is_server_error() => self
                        .stats
                        .failed(format!("{} answered {}", join(base, path), resp.status())),
                    Ok(_) => self.stats.answered(asked.elapsed()),
                    Err(e) => self.stats.failed(e.to_string()),
                }
                match answer {
                    Ok(resp) if retry::is_retryable(resp.status()) => {
                        tracing::debug!(url = %base, status = resp.status().as_u16(), "upstream answered a retryable status");
                        retry_after = retry_after.max(retry::retry_after(resp.headers()));
                        last = Some(Ok(resp));
                    }
                    Ok(resp) => return retry::Round::Done(Ok(resp)),
                    Err(e) => {
                        tracing::debug!(url = %base, error = %e, "upstream attempt failed");
                        last = Some(Err(e));
                    }
                }
            }
            retry::Round::Retry {
                result: last.expect("at least one URL"),
                retry_after,
            }
        })
        .await;
        self.stats.retries.inc_by(retries.into());
        result
    }

    /// One try at one of the registry's URLs, following redirects and
    /// answering one authentication challenge (Bearer or Basic).
    async fn request_at(
        &self,
        base: &Uri,
        method: Method,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Response<Incoming>, UpstreamError> {
        use std::sync::atomic::Ordering;
        let url = join(base, path);
        let scope = scope_for(path);
        let basic = self
            .access
            .credentials
            .as_ref()
            .and_then(|c| HeaderValue::from_str(&c.basic_header()).ok());
        let mut token = match &scope {
            Some(s) => self.tokens.get(s).await,
            None => None,
        };
        let mut auth = match (&token, &basic) {
            (Some(t), _) => bearer(t),
            (None, Some(b)) if self.basic_preemptive.load(Ordering::Relaxed) => Some(b.clone()),
            _ => None,
        };
        let mut answered_challenge = false;
        loop {
            let resp = self
                .send(method.clone(), url.clone(), &headers, auth.as_ref())
                .await?;
            if resp.status() != StatusCode::UNAUTHORIZED || answered_challenge {
                return Ok(resp);
            }
            answered_challenge = true;
            let challenges: Vec<Challenge> = resp
                .headers()
                .get_all(http::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(parse_challenges)
                .collect();
            if let Some(challenge) = challenges
                .iter()
                .find(|c| c.scheme == "bearer" && c.param("realm").is_some())
            {
                let realm = challenge.param("realm").unwrap_or_default();
                if !self.realm_allowed(realm) {
                    tracing::warn!(registry = %base, realm,
                        "token realm is on a host outside the registry's domain; refused (allow it with tokenRealms)");
                    return Err(UpstreamError::Auth {
                        url: url.to_string(),
                        cause: format!("token realm {realm} is not trusted for this registry"),
                    });
                }
                let challenge_scope = challenge
                    .param("scope")
                    .map(str::to_owned)
                    .or_else(|| scope.clone())
                    .unwrap_or_default();
                let key = scope.clone().unwrap_or_else(|| challenge_scope.clone());
                let mut auth_failure = None;
                let fresh = self
                    .tokens
                    .get_or_fetch(&key, token.as_deref(), || {
                        self.fetch_token(challenge, &challenge_scope, &mut auth_failure)
                    })
                    .await;
                match (fresh, auth_failure) {
                    (Some(t), _) => {
                        auth = bearer(&t);
                        token = Some(t);
                    }
                    // The token server is down: the registry is unavailable.
                    (None, Some(e)) => return Err(e),
                    // The token server said no: the 401 stands.
                    (None, None) => return Ok(resp),
                }
            } else if challenges.iter().any(|c| c.scheme == "basic") && basic.is_some() {
                self.basic_preemptive.store(true, Ordering::Relaxed);
                auth = basic.clone();
            } else {
                return Ok(resp);
            }
        }
    }

    /// A token realm may be the registry's own host, one under the same
    /// registrable domain (`auth.docker.io` for `registry-1.docker.io`), or
    /// a host listed in `tokenRealms`. Anything else could be an upstream
    /// trying to collect credentials.
    fn realm_allowed(&self, realm: &str) -> bool {
        let Some(host) = realm
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_ascii_lowercase))
        else {
            return false;
        };
        if self.access.token_realms.contains(&host) {
            return true;
        }
        let domain = |h: &str| psl::domain_str(h).map(str::to_owned);
        self.urls.iter().any(|u| {
            let own = u.host().unwrap_or_default().to_ascii_lowercase();
            own == host || (domain(&own).is_some() && domain(&own) == domain(&host))
        })
    }

    /// Asks a token realm for a token, with Basic credentials when the
    /// registry has some. When the realm cannot be reached or fails (5xx),
    /// `failure` says so.
    async fn fetch_token(
        &self,
        challenge: &Challenge,
        scope: &str,
        failure: &mut Option<UpstreamError>,
    ) -> Option<(String, Duration)> {
        let realm = challenge.param("realm")?;
        let realm_uri: Uri = realm.parse().ok()?;
        if !matches!(realm_uri.scheme_str(), Some("http" | "https")) {
            tracing::warn!(realm, "token realm is not an http(s) URL; not asking it");
            return None;
        }
        let mut query = Vec::new();
        if let Some(service) = challenge.param("service") {
            query.push(format!("service={}", percent_encode(service)));
        }
        if !scope.is_empty() {
            query.push(format!("scope={}", percent_encode(scope)));
        }
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url: Uri = if query.is_empty() {
            realm_uri
        } else {
            format!("{realm}{sep}{}", query.join("&")).parse().ok()?
        };
        let basic = self
            .access
            .credentials
            .as_ref()
            .and_then(|c| HeaderValue::from_str(&c.basic_header()).ok());
        let resp = match self
            .send(Method::GET, url.clone(), &HeaderMap::new(), basic.as_ref())
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "token request failed");
                *failure = Some(UpstreamError::Auth {
                    url: url.to_string(),
                    cause: e.to_string(),
                });
                return None;
            }
        };
        if retry::is_retryable(resp.status()) {
            *failure = Some(UpstreamError::Auth {
                url: url.to_string(),
                cause: format!("token server answered {}", resp.status()),
            });
            return None;
        }
        if resp.status() != StatusCode::OK {
            tracing::warn!(
                realm,
                status = resp.status().as_u16(),
                with_credentials = basic.is_some(),
                "token realm refused"
            );
            return None;
        }
        let body = self
            .read_body(&url.to_string(), resp.into_body(), 64 * 1024)
            .await
            .ok()?;
        let parsed = auth::parse_token_response(&body);
        if parsed.is_none() {
            tracing::warn!(realm, "token realm answered without a token");
        }
        parsed
    }

    /// One request, following redirects. `Authorization` goes only to the
    /// host first asked, never to a redirect target elsewhere.
    async fn send(
        &self,
        method: Method,
        mut url: Uri,
        headers: &HeaderMap,
        auth: Option<&HeaderValue>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let origin = url.authority().cloned();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = Request::builder()
                .method(method.clone())
                .uri(url.clone())
                .body(Empty::new())
                .map_err(|e| UpstreamError::Connect {
                    url: url.to_string(),
                    cause: e.to_string(),
                })?;
            *req.headers_mut() = headers.clone();
            req.headers_mut().insert(
                http::header::USER_AGENT,
                HeaderValue::from_static(concat!("ferry/", env!("CARGO_PKG_VERSION"))),
            );
            if let Some(a) = auth.filter(|_| url.authority() == origin.as_ref()) {
                req.headers_mut()
                    .insert(http::header::AUTHORIZATION, a.clone());
            }
            let sent = tokio::time::timeout(
                self.timeouts.response_header + self.timeouts.connect,
                self.client.request(req),
            )
            .await;
            let resp = match sent {
                Err(_) => {
                    return Err(UpstreamError::Timeout {
                        url: url.to_string(),
                        phase: "waiting for response headers",
                    })
                }
                Ok(Err(e)) => {
                    return Err(UpstreamError::Connect {
                        url: url.to_string(),
                        cause: error_chain(&e),
                    })
                }
                Ok(Ok(resp)) => resp,
            };
            if !is_redirect(resp.status()) {
                return Ok(resp);
            }
            let Some(next) = resp
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| resolve_location(&url, l))
            else {
                return Err(UpstreamError::Protocol {
                    url: url.to_string(),
                    cause: format!("{} redirect without a usable Location", resp.status()),
                });
            };
            tracing::debug!(from = %url, to = %next, "following upstream redirect");
            url = next;
        }
        Err(UpstreamError::TooManyRedirects {
            url: url.to_string(),
            limit: MAX_REDIRECTS,
        })
    }

    /// Reads a whole (small) body, refusing more than `limit` bytes and
    /// treating a pause longer than the idle-read timeout as a failure.
    pub async fn read_body(
        &self,
        url: &str,
        body: Incoming,
        limit: usize,
    ) -> Result<Bytes, UpstreamError> {
        let mut body = body;
        // An announced length over the limit is refused before reading.
        if hyper::body::Body::size_hint(&body).lower() > limit as u64 {
            return Err(UpstreamError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        let mut out = Vec::new();
        loop {
            let frame = tokio::time::timeout(self.timeouts.idle_read, body.frame()).await;
            match frame {
                Err(_) => {
                    return Err(UpstreamError::Timeout {
                        url: url.to_string(),
                        phase: "reading the body",
                    })
                }
                Ok(None) => return Ok(Bytes::from(out)),
                Ok(Some(Err(e))) => {
                    return Err(UpstreamError::Body {
                        url: url.to_string(),
                        cause: error_chain(&e),
                    })
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.stats.bytes.inc_by(data.len() as u64);
                        if out.len() + data.len() > limit {
                            return Err(UpstreamError::TooLarge {
                                url: url.to_string(),
                                limit,
                            });
                        }
                        out.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The absolute URL of `path` at the registry's first URL (for messages).
    pub fn url(&self, path: &str) -> Uri {
        join(&self.urls[0], path)
    }
}

/// `base` with `path`; a path that is no valid URI path (names from an
/// upstream's catalog are not validated by ferry's grammar) gives the base.
fn join(base: &Uri, path: &str) -> Uri {
    let mut parts = base.clone().into_parts();
    parts.path_and_query = path.parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

fn bearer(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// The token scope a registry path needs: `repository:<name>:pull`.
fn scope_for(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    let rest = rest.split('?').next()?;
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let keyword = *segs.get(n.checked_sub(2)?)?;
    let known = matches!(keyword, "blobs" | "manifests" | "referrers")
        || (keyword == "tags" && segs[n - 1] == "list");
    if n < 3 || !known {
        return None;
    }
    Some(format!("repository:{}:pull", segs[..n - 2].join("/")))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_redirect(s: StatusCode) -> bool {
    matches!(s.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Resolves a `Location` header against the URL that sent it.
fn resolve_location(base: &Uri, location: &str) -> Option<Uri> {
    let loc: Uri = location.parse().ok()?;
    if loc.scheme().is_some() {
        return matches!(loc.scheme_str(), Some("http" | "https")).then_some(loc);
    }
    if !location.starts_with('/') {
        return None;
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = loc.path_and_query().cloned();
    Uri::from_parts(parts).ok()
}

/// An error with its sources, the way people need to read it in a log.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_encoding() {
        assert_eq!(
            scope_for("/v2/library/alpine/manifests/latest").as_deref(),
            Some("repository:library/alpine:pull")
        );
        assert_eq!(
            scope_for("/v2/a/b/tags/list").as_deref(),
            Some("repository:a/b:pull")
        );
        assert_eq!(scope_for("/v2/"), None);
        assert_eq!(
            percent_encode("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }

    #[test]
    fn locations_resolve() {
        let base: Uri = "http://127.0.0.1:5000/v2/a/blobs/x".parse().unwrap();
        assert_eq!(
            resolve_location(&base, "/other?sig=1").unwrap().to_string(),
            "http://127.0.0.1:5000/other?sig=1"
        );
        assert_eq!(
            resolve_location(&base, "https://cdn.example/b")
                .unwrap()
                .to_string(),
            "https://cdn.example/b"
        );
        assert!(resolve_location(&base, "file:///etc/passwd").is_none());
        assert!(resolve_location(&base, "relative").is_none());
    }
}
