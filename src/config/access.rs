//! Client access control and listener limits as configured.
//!
//! Access control takes zot's keys as they are: `http.auth.htpasswd.path`
//! (bcrypt users), `http.auth.failDelay`, and `http.accessControl` with
//! `repositories` (glob → `policies`, `defaultPolicy`, `anonymousPolicy`),
//! `groups` and `adminPolicy`. ferry adds static bearer tokens
//! (`ferry.accessTokens`), each acting as a named user. Only the `read`
//! action means anything to a pull-through cache; others are accepted and
//! ignored. The listener's limits (`ferry.maxConnections`, header size and
//! time, trusted proxies, a separate metrics address) live here too because
//! they guard the same door.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Secret};

/// Admin tokens from the environment, beside `ferry.adminTokens`.
pub const ADMIN_TOKENS_ENV: &str = "FERRY_ADMIN_TOKENS";

/// Bearer tokens that may use the operations API (`ferry.adminTokens`,
/// `ferry.adminTokensFile`); compared in constant time. None configured:
/// the API is refused to everyone.
#[derive(Clone, Debug, Default)]
pub struct AdminTokens(Vec<Secret>);

impl AdminTokens {
    /// The tokens of the list, of the file (one per line, `#` comments)
    /// and of `env` (the value of [`ADMIN_TOKENS_ENV`]: tokens separated by
    /// commas or newlines, e.g. from a Kubernetes Secret).
    pub fn resolve(
        list: Option<Vec<Secret>>,
        file: Option<&std::path::Path>,
        env: Option<String>,
    ) -> Result<AdminTokens, ConfigError> {
        // Spaces around a token are no part of it.
        let mut tokens: Vec<Secret> = list
            .unwrap_or_default()
            .iter()
            .map(|t| Secret::new(t.expose().trim()))
            .collect();
        if let Some(env) = env {
            tokens.extend(
                env.split([',', '\n'])
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(Secret::new),
            );
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "cannot read ferry.adminTokensFile {}: {e}",
                    path.display()
                ))
            })?;
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(Secret::new),
            );
        }
        if let Some(short) = tokens.iter().position(|t| t.expose().len() < 16) {
            return Err(ConfigError(format!(
                "ferry.adminTokens: token {} is shorter than 16 characters (it guards prewarm, which spends upstream budget and disk)",
                short + 1
            )));
        }
        Ok(AdminTokens(tokens))
    }

    /// True when `presented` is one of the tokens. Digests are compared,
    /// each in constant time and every one of them, so the time says
    /// neither which token matched nor how long they are.
    pub fn allows(&self, presented: &str) -> bool {
        use sha2::{Digest as _, Sha256};
        use subtle::ConstantTimeEq;
        let presented = Sha256::digest(presented.as_bytes());
        self.0.iter().fold(false, |hit, t| {
            hit | bool::from(Sha256::digest(t.expose().as_bytes()).ct_eq(&presented))
        })
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// zot's `http.auth`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthSection {
    pub htpasswd: Option<HtpasswdSection>,
    /// Seconds to wait before answering a failed login.
    pub fail_delay: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HtpasswdSection {
    pub path: PathBuf,
}

/// zot's `http.accessControl`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessControlSection {
    #[serde(default)]
    pub repositories: BTreeMap<String, RepositoryPolicy>,
    #[serde(default)]
    pub groups: BTreeMap<String, GroupSection>,
    pub admin_policy: Option<Policy>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RepositoryPolicy {
    #[serde(default)]
    pub policies: Vec<Policy>,
    #[serde(default)]
    pub default_policy: Vec<String>,
    #[serde(default)]
    pub anonymous_policy: Vec<String>,
}

/// Users and groups granted some actions.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub actions: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GroupSection {
    #[serde(default)]
    pub users: Vec<String>,
}

/// One static bearer token (`ferry.accessTokens`): whoever presents it is
/// `user` for the policies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessToken {
    pub user: String,
    pub token: Secret,
}

/// Resolved client access control; `None` in [`Config`](super::Config)
/// when the file configures none (every request is allowed).
#[derive(Debug, Clone)]
pub struct AccessConfig {
    pub htpasswd: Option<PathBuf>,
    pub tokens: Vec<AccessToken>,
    /// `None`: any authenticated user may read everything.
    pub control: Option<AccessControlSection>,
    pub fail_delay: Duration,
}

/// Limits and trust of the client-facing listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Connections beyond this many are closed at once.
    pub max_connections: usize,
    /// Requests at once on one HTTP/2 connection (its concurrent streams).
    pub max_streams: u32,
    /// Request line plus headers, in bytes (431 beyond it).
    pub max_header_bytes: usize,
    /// A client must finish sending its request headers within this.
    pub header_timeout: Duration,
    /// Peers whose `Forwarded` / `X-Forwarded-For` are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Serve `/metrics` (and health) here instead of on the main listener.
    pub metrics_listen: Option<SocketAddr>,
    /// How often the TLS certificate and key files are checked for change.
    pub tls_reload_interval: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            max_connections: 10_000,
            max_streams: 100,
            max_header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            metrics_listen: None,
            tls_reload_interval: Duration::from_secs(10),
        }
    }
}

/// Parses `ferry.trustedProxies` entries: an address or a CIDR block.
pub fn parse_proxies(list: &[String]) -> Result<Vec<ipnet::IpNet>, super::ConfigError> {
    list.iter()
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    super::ConfigError(format!(
                        "ferry.trustedProxies: {s:?} is not an IP address or CIDR block"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_tokens_from_the_list_a_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# ops\nfile-token-0123456789\n\n").unwrap();
        let t = AdminTokens::resolve(
            Some(vec![Secret::new(" list-token-0123456789 ")]),
            Some(&file),
            Some("env-token-0123456789, env-token-9876543210\n".into()),
        )
        .unwrap();
        assert_eq!(t.len(), 4);
        for ok in [
            "list-token-0123456789",
            "file-token-0123456789",
            "env-token-9876543210",
        ] {
            assert!(t.allows(ok), "{ok}");
        }
        for no in [
            "",
            "list-token-012345678",
            "# ops",
            "list-token-0123456789x",
        ] {
            assert!(!t.allows(no), "{no:?}");
        }
        let short = AdminTokens::resolve(Some(vec![Secret::new("short")]), None, None);
        assert!(short.unwrap_err().0.contains("shorter than 16"));
        assert!(AdminTokens::resolve(None, None, None).unwrap().is_empty());
    }
}
