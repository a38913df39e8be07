//! Client access control: who is asking, and may they read this repository.
//!
//! Off unless configured. Clients identify with HTTP Basic (an htpasswd
//! user, or any user name with a static token as the password, the way
//! registries take personal access tokens) or with `Authorization: Bearer
//! <static token>`. Policies follow zot's `accessControl`: for a repository
//! the most specific matching glob decides; a listed user or group gets its
//! policy's actions, other users the `defaultPolicy`, clients without
//! credentials the `anonymousPolicy`; `adminPolicy` users read everything.
//! Without `accessControl`, any authenticated user reads everything.
//!
//! A refusal is [`Denied::Unauthenticated`] (401 with a Basic challenge, so
//! `docker login`, containerd and podman send credentials),
//! [`Denied::Forbidden`] (403: known user, not allowed), or [`Denied::Busy`]
//! (429: new credentials while too many are being checked; see
//! [`LoginChecks`]).

mod htpasswd;
mod logins;

use base64::Engine as _;
use http::{HeaderMap, HeaderValue};

use subtle::ConstantTimeEq;

use crate::config::{AccessConfig, AccessControlSection, Policy};
use crate::routing::prefix_matches;

pub use htpasswd::Htpasswd;
pub use logins::{Login, LoginChecks};

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    User(String),
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No credentials where some are needed, or wrong ones: 401.
    Unauthenticated,
    /// Authenticated, but the policy does not allow it: 403.
    Forbidden,
    /// New credentials, and too many logins are being checked to check
    /// them now: 429 with `Retry-After`.
    Busy,
}

/// The challenge sent with every 401.
pub const CHALLENGE: &str = "Basic realm=\"ferry\", charset=\"UTF-8\"";

/// Loaded access control.
#[derive(Debug)]
pub struct Access {
    htpasswd: std::sync::Arc<Htpasswd>,
    logins: LoginChecks,
    config: AccessConfig,
}

/// Why client access control could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("htpasswd file {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("htpasswd file {}: {problem}", path.display())]
    Htpasswd {
        path: std::path::PathBuf,
        problem: String,
    },
}

impl Access {
    pub fn load(config: &AccessConfig) -> Result<Access, AccessError> {
        let htpasswd = match &config.htpasswd {
            Some(p) => Htpasswd::load(p)?,
            None => Htpasswd::default(),
        };
        let htpasswd = std::sync::Arc::new(htpasswd);
        Ok(Access {
            htpasswd,
            logins: LoginChecks::for_this_machine(),
            config: config.clone(),
        })
    }

    /// Identifies the client from its `Authorization` header. Wrong
    /// credentials are refused (after `failDelay`), never downgraded to
    /// anonymous.
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        client: std::net::IpAddr,
    ) -> Result<Identity, Denied> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Ok(Identity::Anonymous);
        };
        let found = match parse_authorization(value) {
            Some(Credentials::Bearer(token)) => self.token_user(&token),
            Some(Credentials::Basic(user, password)) => match self.token_user(&password) {
                Some(u) => Some(u),
                None => match self
                    .logins
                    .check(&self.htpasswd, client, &user, &password)
                    .await
                {
                    Login::Valid => Some(user),
                    Login::Wrong => None,
                    Login::Busy => return Err(Denied::Busy),
                },
            },
            None => None,
        };
        match found {
            Some(u) => Ok(Identity::User(u)),
            None => {
                tokio::time::sleep(self.config.fail_delay).await;
                Err(Denied::Unauthenticated)
            }
        }
    }

    fn token_user(&self, presented: &str) -> Option<String> {
        self.config
            .tokens
            .iter()
            .find(|t| bool::from(t.token.expose().as_bytes().ct_eq(presented.as_bytes())))
            .map(|t| t.user.clone())
    }

    /// May `who` pull from `repo` (the name the client asked for)?
    pub fn check_read(&self, who: &Identity, repo: &str) -> Result<(), Denied> {
        let refuse = || match who {
            Identity::Anonymous => Err(Denied::Unauthenticated),
            Identity::User(_) => Err(Denied::Forbidden),
        };
        let Some(control) = &self.config.control else {
            return match who {
                Identity::Anonymous => Err(Denied::Unauthenticated),
                Identity::User(_) => Ok(()),
            };
        };
        if let Identity::User(u) = who {
            if control
                .admin_policy
                .as_ref()
                .is_some_and(|p| grants(control, p, u))
            {
                return Ok(());
            }
        }
        let Some(policy) = most_specific(control, repo) else {
            return refuse();
        };
        let allowed = match who {
            Identity::Anonymous => reads(&policy.anonymous_policy),
            Identity::User(u) => {
                policy.policies.iter().any(|p| grants(control, p, u))
                    || reads(&policy.default_policy)
            }
        };
        if allowed {
            Ok(())
        } else {
            refuse()
        }
    }
}

impl Access {
    /// True when `user` is in `adminPolicy`.
    pub fn is_admin(&self, user: &str) -> bool {
        self.config.control.as_ref().is_some_and(|c| {
            c.admin_policy
                .as_ref()
                .is_some_and(|p| names_user(c, p, user))
        })
    }

    /// True when a policy written for a registry (its first segment is
    /// one of the registry's hosts) matches `qualified`, the
    /// `host/upstream-name` form of a repository: such rules, not the name
    /// the client used, decide for it.
    pub fn governs(&self, host: &str, qualified: &str) -> bool {
        self.config.control.as_ref().is_some_and(|c| {
            c.repositories.keys().any(|p| {
                p.split('/')
                    .find(|s| !s.is_empty())
                    .is_some_and(|first| first.eq_ignore_ascii_case(host))
                    && glob_matches(p, qualified)
            })
        })
    }
}

fn reads(actions: &[String]) -> bool {
    actions.iter().any(|a| a == "read")
}

/// The policy `p` gives `user` read access (directly or by group).
fn grants(control: &AccessControlSection, p: &Policy, user: &str) -> bool {
    reads(&p.actions) && names_user(control, p, user)
}

/// The policy `p` lists `user`, by name or through one of its groups.
fn names_user(control: &AccessControlSection, p: &Policy, user: &str) -> bool {
    p.users.iter().any(|u| u == user)
        || p.groups.iter().any(|g| {
            control
                .groups
                .get(g)
                .is_some_and(|grp| grp.users.iter().any(|u| u == user))
        })
}

/// The matching repository policy with the longest pattern.
fn most_specific<'a>(
    control: &'a AccessControlSection,
    repo: &str,
) -> Option<&'a crate::config::RepositoryPolicy> {
    control
        .repositories
        .iter()
        .filter(|(pattern, _)| glob_matches(pattern, repo))
        .max_by_key(|(pattern, _)| pattern.len())
        .map(|(_, p)| p)
}

/// zot's repository globs match whole names: `private/**` matches
/// `private/a/b`, `app` matches only `app`.
fn glob_matches(pattern: &str, repo: &str) -> bool {
    prefix_matches(pattern, repo)
        && pattern.split('/').filter(|s| !s.is_empty()).count() <= repo.split('/').count()
        && (pattern.ends_with("**")
            || pattern.split('/').filter(|s| !s.is_empty()).count() == repo.split('/').count())
}

enum Credentials {
    Basic(String, String),
    Bearer(String),
}

fn parse_authorization(v: &HeaderValue) -> Option<Credentials> {
    let v = v.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (u, p) = text.split_once(':')?;
        Some(Credentials::Basic(u.to_string(), p.to_string()))
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Credentials::Bearer(rest.to_string()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(json: &str) -> AccessControlSection {
        serde_json::from_str(json).unwrap()
    }

    fn access(control_json: Option<&str>) -> Access {
        Access {
            htpasswd: Default::default(),
            logins: LoginChecks::new(1, 0),
            config: AccessConfig {
                htpasswd: None,
                tokens: vec![],
                control: control_json.map(control),
                fail_delay: std::time::Duration::ZERO,
            },
        }
    }

    #[test]
    fn the_most_specific_glob_decides() {
        let a = access(Some(
            r#"{"repositories": {
                "**": {"anonymousPolicy": ["read"], "defaultPolicy": ["read"]},
                "private/**": {"policies": [{"users": ["alice"], "actions": ["read"]},
                                            {"groups": ["ops"], "actions": ["read"]}]},
                "private/open": {"anonymousPolicy": ["read"]}
            },
            "groups": {"ops": {"users": ["carol"]}},
            "adminPolicy": {"users": ["root"], "actions": ["read"]}}"#,
        ));
        let alice = Identity::User("alice".into());
        let bob = Identity::User("bob".into());
        let carol = Identity::User("carol".into());
        let root = Identity::User("root".into());
        let anon = Identity::Anonymous;
        assert_eq!(a.check_read(&anon, "library/alpine"), Ok(()));
        assert_eq!(a.check_read(&bob, "library/alpine"), Ok(()));
        assert_eq!(a.check_read(&alice, "private/db"), Ok(()));
        assert_eq!(a.check_read(&carol, "private/db/x"), Ok(()));
        assert_eq!(a.check_read(&root, "private/db"), Ok(()));
        assert_eq!(a.check_read(&bob, "private/db"), Err(Denied::Forbidden));
        assert_eq!(
            a.check_read(&anon, "private/db"),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(a.check_read(&anon, "private/open"), Ok(()));
    }

    #[test]
    fn without_policies_users_read_and_anonymous_do_not() {
        let a = access(None);
        assert_eq!(a.check_read(&Identity::User("x".into()), "a/b"), Ok(()));
        assert_eq!(
            a.check_read(&Identity::Anonymous, "a/b"),
            Err(Denied::Unauthenticated)
        );
    }

    #[test]
    fn unlisted_repositories_are_refused() {
        let a = access(Some(
            r#"{"repositories": {"team/**": {"defaultPolicy": ["read"]}}}"#,
        ));
        let u = Identity::User("u".into());
        assert_eq!(a.check_read(&u, "team/app"), Ok(()));
        assert_eq!(a.check_read(&u, "other/app"), Err(Denied::Forbidden));
        assert!(glob_matches("app", "app"));
        assert!(!glob_matches("app", "app/sub"));
        assert!(glob_matches("**", "a/b/c"));
    }

    #[test]
    fn authorization_headers_parse() {
        let v = HeaderValue::from_static("Basic YWxpY2U6czNjcmV0"); // alice:s3cret
        assert!(
            matches!(parse_authorization(&v), Some(Credentials::Basic(u, p)) if u == "alice" && p == "s3cret")
        );
        let v = HeaderValue::from_static("bearer tok");
        assert!(matches!(parse_authorization(&v), Some(Credentials::Bearer(t)) if t == "tok"));
        assert!(parse_authorization(&HeaderValue::from_static("Basic !!")).is_none());
    }
}
