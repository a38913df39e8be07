//! Sending one request upstream: following redirects a bounded number of
//! times (registries send blobs to object storage or CDNs), never taking
//! `Authorization` to another origin, within the connect and
//! response-header timeouts; and reading a small body whole, bounded in
//! size and in idle time.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, LOCATION};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;

use super::{error_chain, Upstream, UpstreamError, MAX_REDIRECTS};

impl Upstream {
    /// One request, following redirects. `Authorization` goes only to the
    /// origin first asked (scheme, host and port), never to a redirect
    /// target elsewhere, nor to the same host over plain HTTP.
    pub(super) async fn send(
        &self,
        method: Method,
        mut url: Uri,
        headers: &HeaderMap,
        auth: Option<&HeaderValue>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let origin = Origin::of(&url);
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
            if let Some(a) = auth.filter(|_| Origin::of(&url) == origin) {
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
}

fn is_redirect(s: StatusCode) -> bool {
    matches!(s.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Resolves a `Location` header against the URL that sent it.
/// Where a request goes, as far as credentials are concerned: scheme,
/// host (lower case) and port (the scheme's default when not written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    pub(super) fn of(url: &Uri) -> Option<Origin> {
        let scheme = url.scheme_str()?.to_ascii_lowercase();
        let port = url
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        Some(Origin {
            host: url.host()?.to_ascii_lowercase(),
            scheme,
            port,
        })
    }

    pub(super) fn host(&self) -> &str {
        &self.host
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }

    pub(super) fn is_https(&self) -> bool {
        self.scheme == "https"
    }

    /// On its scheme's default port (443 for HTTPS, 80 for HTTP).
    pub(super) fn is_default_port(&self) -> bool {
        self.port == if self.is_https() { 443 } else { 80 }
    }
}

pub(super) fn resolve_location(base: &Uri, location: &str) -> Option<Uri> {
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
