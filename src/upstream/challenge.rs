//! Answering a registry's authentication challenge, as containerd and
//! Docker do: on a 401 with `WWW-Authenticate: Bearer realm=...`, ask the
//! realm for a token for the repository's scope (anonymously, or with the
//! registry's credentials as Basic auth), cache it per scope, and retry
//! once; on `Basic`, answer with the credentials and send them up front
//! from then on. A realm outside the registry's domain is refused unless
//! `tokenRealms` lists it.

use std::time::Duration;

use http::header::{HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Uri};
use hyper::body::Incoming;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::auth::{self, parse_challenges, Challenge};
use super::send::Origin;
use super::{join, retry, Upstream, UpstreamError};

/// Everything but RFC 3986's unreserved characters is encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl Upstream {
    /// One try at one of the registry's URLs, following redirects and
    /// answering one authentication challenge (Bearer or Basic).
    pub(super) async fn request_at(
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
                    if let Some(unlogged) = self.stats().may_log_auth() {
                        tracing::warn!(registry = %base, realm, not_logged = unlogged,
                            "token realm is on a host outside the registry's domain; refused (allow it with tokenRealms)");
                    }
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

    /// A token realm may be the registry's own host on the registry's port;
    /// or a host under the same registrable domain (`auth.docker.io` for
    /// `registry-1.docker.io`) on the registry's port or its scheme's
    /// default port (GitLab: registry on :5050, realm on :443); never plain
    /// HTTP under an HTTPS registry, and an IP address only as itself. Or
    /// a host (`host`, any port) or `host:port` listed in `tokenRealms`.
    /// Anything else could be an upstream trying to collect credentials.
    pub(super) fn realm_allowed(&self, realm: &str) -> bool {
        let Some(realm) = realm.parse::<Uri>().ok().as_ref().and_then(Origin::of) else {
            return false;
        };
        let (host, port) = (realm.host(), realm.port());
        let listed = |t: &String| *t == host || *t == format!("{host}:{port}");
        if self.access.token_realms.iter().any(listed) {
            return true;
        }
        let is_ip = |h: &str| {
            h.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok()
        };
        let domain = |h: &str| {
            if is_ip(h) {
                None
            } else {
                psl::domain_str(h).map(str::to_owned)
            }
        };
        self.urls.iter().filter_map(Origin::of).any(|own| {
            let downgrade = own.is_https() && !realm.is_https();
            if own.host() == host {
                return own.port() == port && !downgrade;
            }
            let same_domain = domain(own.host()).is_some() && domain(own.host()) == domain(host);
            same_domain && (own.port() == port || realm.is_default_port()) && !downgrade
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
            if let Some(unlogged) = self.stats().may_log_auth() {
                tracing::warn!(
                    realm,
                    not_logged = unlogged,
                    "token realm is not an http(s) URL; not asking it"
                );
            }
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
                if let Some(unlogged) = self.stats().may_log_auth() {
                    tracing::warn!(error = %e, not_logged = unlogged, "token request failed");
                }
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
            if let Some(unlogged) = self.stats().may_log_auth() {
                tracing::warn!(
                    realm,
                    status = resp.status().as_u16(),
                    with_credentials = basic.is_some(),
                    not_logged = unlogged,
                    "token realm refused"
                );
            }
            return None;
        }
        let body = self
            .read_body(&url.to_string(), resp.into_body(), 64 * 1024)
            .await
            .ok()?;
        let parsed = auth::parse_token_response(&body);
        if parsed.is_none() {
            if let Some(unlogged) = self.stats().may_log_auth() {
                tracing::warn!(
                    realm,
                    not_logged = unlogged,
                    "token realm answered without a token"
                );
            }
        }
        parsed
    }
}

fn bearer(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// The token scope a registry path needs: `repository:<name>:pull`.
pub(super) fn scope_for(path: &str) -> Option<String> {
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
pub(super) fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, QUERY_VALUE).to_string()
}
