//! What can go wrong talking to an upstream, and how each failure is shown
//! to ferry's clients (a 502/503/504/404/429 with OCI error JSON, never a
//! 500).

use http::StatusCode;

use crate::oci::{ErrorCode, RegistryError};

/// A failed upstream exchange. Each variant names the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// Could not connect, or the connection failed before a response.
    Connect {
        url: String,
        cause: String,
    },
    Timeout {
        url: String,
        phase: &'static str,
    },
    /// The upstream answered with a status ferry cannot use.
    Status {
        url: String,
        status: StatusCode,
    },
    /// The body broke off or was malformed.
    Body {
        url: String,
        cause: String,
    },
    Protocol {
        url: String,
        cause: String,
    },
    TooManyRedirects {
        url: String,
        limit: usize,
    },
    TooLarge {
        url: String,
        limit: usize,
    },
    /// Too many requests to this registry at once: this one waited for a
    /// slot (`ferry.maxRequestsPerRegistry`) longer than it may.
    Busy {
        url: String,
        limit: usize,
    },
    /// A paged list that goes on past the pages ferry follows.
    TooManyPages {
        url: String,
        limit: usize,
    },
    /// A paged list with more names than `ferry.maxListEntries`.
    TooManyNames {
        url: String,
        limit: usize,
    },
    /// The registry's token server could not be used.
    Auth {
        url: String,
        cause: String,
    },
    /// The registry answered `429`, now or within its cool-down (see
    /// `budget.rs`): nothing is sent to it for `wait` more.
    RateLimited {
        url: String,
        wait: std::time::Duration,
    },
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect { url, cause } => {
                write!(f, "upstream {url} unreachable: {cause}")
            }
            UpstreamError::Timeout { url, phase } => write!(f, "upstream {url} timed out {phase}"),
            UpstreamError::Status { url, status } => write!(f, "upstream {url} answered {status}"),
            UpstreamError::Body { url, cause } => write!(f, "upstream {url} body failed: {cause}"),
            UpstreamError::Protocol { url, cause } => write!(f, "upstream {url}: {cause}"),
            UpstreamError::TooManyRedirects { url, limit } => {
                write!(f, "upstream {url}: more than {limit} redirects")
            }
            UpstreamError::TooLarge { url, limit } => {
                write!(f, "upstream {url}: body larger than {limit} bytes")
            }
            UpstreamError::Busy { url, limit } => write!(
                f,
                "upstream {url}: {limit} requests to this registry are running already (ferry.maxRequestsPerRegistry); try again shortly"
            ),
            UpstreamError::TooManyPages { url, limit } => {
                write!(f, "upstream {url}: more than {limit} pages")
            }
            UpstreamError::TooManyNames { url, limit } => write!(
                f,
                "upstream {url}: list longer than {limit} names (ferry.maxListEntries)"
            ),
            UpstreamError::Auth { url, cause } => {
                write!(f, "token server {url} failed: {cause}")
            }
            UpstreamError::RateLimited { url, wait } => write!(
                f,
                "upstream {url} answered 429 Too Many Requests; ferry asks it again in {} s",
                seconds(*wait)
            ),
        }
    }
}

impl std::error::Error for UpstreamError {}

/// Whole seconds, rounded up (at least 1): a `Retry-After`.
fn seconds(d: std::time::Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// Of two failures at different registries, the one to report: anything
/// says more than "not found here".
pub fn worse(a: Option<UpstreamError>, b: UpstreamError) -> UpstreamError {
    match a {
        Some(a) if is_absent(&b) => a,
        _ => b,
    }
}

/// 404, or 401/403 for an anonymous client: the registry does not have it
/// for us, so the next one is asked.
pub fn is_absent(e: &UpstreamError) -> bool {
    matches!(e, UpstreamError::Status { status, .. }
        if matches!(status.as_u16(), 401 | 403 | 404))
}

/// True when the upstream said plainly that it has no such thing (404),
/// as opposed to refusing ferry (401, 403) or failing.
pub fn is_not_found(e: &UpstreamError) -> bool {
    matches!(e, UpstreamError::Status { status, .. } if *status == http::StatusCode::NOT_FOUND)
}

/// Seconds a client is asked to wait after a `Busy` refusal.
pub const BUSY_RETRY_AFTER: u64 = 1;

impl UpstreamError {
    /// True when the upstream could not be used at all (as opposed to an
    /// answer such as 404): ferry then falls back to what it has stored.
    pub fn is_unavailable(&self) -> bool {
        match self {
            UpstreamError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            UpstreamError::TooLarge { .. }
            | UpstreamError::TooManyNames { .. }
            | UpstreamError::TooManyPages { .. } => false,
            _ => true,
        }
    }

    /// The error a client sees; `unknown` is the code for an upstream 404.
    pub fn to_registry_error(&self, unknown: ErrorCode) -> RegistryError {
        let msg = self.to_string();
        match self {
            UpstreamError::Status { status, .. } => match *status {
                StatusCode::NOT_FOUND => RegistryError::not_found(unknown, msg),
                StatusCode::TOO_MANY_REQUESTS => {
                    RegistryError::new(*status, ErrorCode::TooManyRequests, msg)
                }
                // ferry itself was refused: not the client's credentials to
                // fix, so no 401 (that would make it log in to the mirror).
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    RegistryError::new(StatusCode::BAD_GATEWAY, ErrorCode::Denied, msg)
                }
                _ => RegistryError::new(StatusCode::BAD_GATEWAY, ErrorCode::Unavailable, msg),
            },
            UpstreamError::Timeout { .. } => {
                RegistryError::new(StatusCode::GATEWAY_TIMEOUT, ErrorCode::Unavailable, msg)
            }
            UpstreamError::Connect { .. } => {
                RegistryError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, msg)
            }
            UpstreamError::TooLarge { .. }
            | UpstreamError::TooManyNames { .. }
            | UpstreamError::TooManyPages { .. } => {
                RegistryError::new(StatusCode::BAD_GATEWAY, ErrorCode::SizeInvalid, msg)
            }
            UpstreamError::Busy { .. } => {
                RegistryError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, msg)
                    .retry_after(BUSY_RETRY_AFTER)
            }
            UpstreamError::RateLimited { wait, .. } => RegistryError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyRequests,
                msg,
            )
            .retry_after(seconds(*wait)),
            _ => RegistryError::new(StatusCode::BAD_GATEWAY, ErrorCode::Unavailable, msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_for_clients() {
        let s = |status| UpstreamError::Status {
            url: "u".into(),
            status,
        };
        assert_eq!(
            s(StatusCode::NOT_FOUND)
                .to_registry_error(ErrorCode::BlobUnknown)
                .status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            s(StatusCode::INTERNAL_SERVER_ERROR)
                .to_registry_error(ErrorCode::BlobUnknown)
                .status,
            StatusCode::BAD_GATEWAY
        );
        let c = UpstreamError::Connect {
            url: "u".into(),
            cause: "refused".into(),
        };
        assert!(c.is_unavailable());
        assert_eq!(
            c.to_registry_error(ErrorCode::BlobUnknown).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(!s(StatusCode::NOT_FOUND).is_unavailable());
    }
}
