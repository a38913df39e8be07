//! The client side: requests to the upstream registry.
//!
//! One [`Upstream`] per registry holds a pooled hyper client (HTTP/1.1 and
//! HTTP/2 over rustls, or plain HTTP), the registry's base URL and its
//! timeouts. It follows redirects (registries send blobs to object storage
//! or CDNs) a bounded number of times, and turns every way a request can go
//! wrong into an [`UpstreamError`] that names the URL and the cause. Client
//! headers never pass through here: the front decides what to forward.

mod auth;
pub mod budget;
mod challenge;
mod counted;
mod error;
pub mod headers;
mod listing;
mod passed;
mod rate_floor;
pub mod retry;
mod send;
mod stats;
pub mod tls;

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::{Method, Response, Uri};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::{RequestLimits, RetryPolicy, Timeouts};
use crate::oci::{Digest, Reference, RepoName};

pub use auth::{parse_challenges, Challenge};
pub use counted::CountedBody;
pub use error::{is_absent, is_not_found, worse, UpstreamError};
pub use listing::paged_list;
pub use passed::{Bounded, Bounds, PassedBody};
pub(crate) use rate_floor::RateFloor;
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
    /// One per request running now (`ferry.maxRequestsPerRegistry`).
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    limits: RequestLimits,
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
        let limits = RequestLimits::default();
        Upstream::build(
            urls,
            timeouts,
            retry,
            retry_cap,
            tls,
            Access::default(),
            limits,
        )
    }

    /// The client for one configured registry: its URLs, retries, TLS
    /// options (`tlsVerify`, `certDir`) and credentials.
    pub fn for_registry(
        config: &crate::config::RegistryConfig,
        timeouts: Timeouts,
        retry_cap: Duration,
        limits: RequestLimits,
    ) -> Result<Upstream, crate::config::ConfigError> {
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
            limits,
        ))
    }

    fn build(
        urls: Vec<Uri>,
        timeouts: Timeouts,
        retry: RetryPolicy,
        retry_cap: Duration,
        tls: rustls::ClientConfig,
        access: Access,
        limits: RequestLimits,
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
        // The timer makes the idle timeout work: without one, an idle
        // connection is only found expired at the next checkout.
        // Idle connections kept are bounded like the requests that use
        // them (`ferry.maxRequestsPerRegistry`).
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(timeouts.pool_idle)
            .pool_max_idle_per_host(limits.max)
            .pool_timer(hyper_util::rt::TokioTimer::new())
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
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max)),
            limits,
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
        self.with_retries(method, path, headers, true).await
    }

    /// As [`Upstream::request`], without waiting for a request slot: for
    /// the resumes of a blob transfer, which holds a fetch slot already
    /// (a flood of other requests must not fail a download its clients are
    /// reading).
    pub async fn request_now(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.with_retries(method, path, headers, false).await
    }

    /// The retry loop of [`Upstream::request`]; with `slotted`, each round
    /// holds a request slot (its answer's headers included, the body and
    /// the backoff between rounds not): a request that waits too long for
    /// one is refused, never queued for ever.
    async fn with_retries(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        slotted: bool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let (method, headers) = (&method, &headers);
        let budget = &self.stats.budget;
        let limited = |wait| UpstreamError::RateLimited {
            url: join(&self.urls[0], path).to_string(),
            wait,
        };
        let (result, retries) = retry::with_retries(&self.retry, self.retry_cap, |_| async move {
            // A registry that answered 429 is not asked again before its
            // cool-down ends: that would spend its budget on a refusal.
            if let Some(wait) = budget.cooling() {
                return retry::Round::Done(Err(limited(wait)));
            }
            let _slot = if slotted {
                match tokio::time::timeout(self.limits.wait, self.slots.clone().acquire_owned())
                    .await
                {
                    Ok(Ok(p)) => Some(p),
                    _ => {
                        return retry::Round::Done(Err(UpstreamError::Busy {
                            url: join(&self.urls[0], path).to_string(),
                            limit: self.limits.max,
                        }))
                    }
                }
            } else {
                None
            };
            let mut last = None;
            let mut retry_after = None;
            for base in &self.urls {
                let asked = std::time::Instant::now();
                let answer = self.request_at(base, method.clone(), path, headers.clone()).await;
                if let Ok(resp) = &answer {
                    budget.read(base, resp.headers());
                    if resp.status() == http::StatusCode::TOO_MANY_REQUESTS {
                        let wait = retry::retry_after(resp.headers())
                            .unwrap_or(budget::DEFAULT_COOL_DOWN);
                        budget.cool_down(wait);
                    }
                }
                match &answer {
                    Ok(resp) if resp.status().is_server_error() => self
                        .stats
                        .failed(format!("{} answered {}", join(base, path), resp.status())),
                    Ok(_) => self.stats.answered(asked.elapsed()),
                    Err(e) => self.stats.failed(e.to_string()),
                }
                match answer {
                    // A 429 is retried only if its cool-down fits the wait a
                    // client can be made to bear (`maxRetryWait`).
                    Ok(resp) if resp.status() == http::StatusCode::TOO_MANY_REQUESTS => {
                        let wait = budget.cooling().unwrap_or_default();
                        retry_after = retry_after.max(Some(wait));
                        last = Some(Err(limited(wait)));
                        break;
                    }
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
    use super::challenge::{percent_encode, scope_for};
    use super::send::resolve_location;
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
    fn token_realms_by_host_port_scheme_and_domain() {
        let up = |u: &str| Upstream::new(u.parse().unwrap(), crate::config::Timeouts::default());
        let hub = up("https://registry-1.docker.io");
        assert!(hub.realm_allowed("https://auth.docker.io/token"));
        assert!(
            !hub.realm_allowed("http://auth.docker.io/token"),
            "downgrade"
        );
        assert!(!hub.realm_allowed("https://auth.docker.io:8443/token"));
        assert!(!hub.realm_allowed("https://evil.example/token"));
        let gitlab = up("https://registry.example.com:5050");
        assert!(gitlab.realm_allowed("https://gitlab.example.com/jwt/auth"));
        assert!(gitlab.realm_allowed("https://registry.example.com:5050/jwt/auth"));
        assert!(
            !gitlab.realm_allowed("https://registry.example.com:5051/jwt/auth"),
            "another port of the same host"
        );
        let ip = up("http://10.1.2.3:5000");
        assert!(ip.realm_allowed("http://10.1.2.3:5000/token"));
        assert!(
            !ip.realm_allowed("http://192.168.2.3:5000/token"),
            "IP addresses share no registrable domain"
        );
    }

    #[test]
    fn credentials_stay_with_one_origin() {
        use super::send::Origin;
        let o = |u: &str| Origin::of(&u.parse::<Uri>().unwrap());
        assert_eq!(o("https://h.example/a"), o("https://H.example:443/b"));
        assert_ne!(
            o("https://h.example/a"),
            o("http://h.example/a"),
            "same host, plain HTTP"
        );
        assert_ne!(o("http://h.example:5000/"), o("http://h.example:5001/"));
        assert_ne!(o("https://h.example/"), o("https://cdn.example/"));
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
