//! Who may read what: the one place that turns client credentials and a
//! routed repository into "yes" or an OCI refusal.
//!
//! With no `accessControl` configured everyone is anonymous and may read
//! everything. Otherwise a request is identified once ([`App::identify`]),
//! and each repository it names is narrowed to the registries the client
//! may read ([`App::authorize`]). Whether a *digest* may be served under
//! that repository is the coordinator's membership check, applied by
//! `Coordinator::open_blob` itself.

use http::StatusCode;

use super::App;
use crate::access::{Denied, Identity};
use crate::oci::{ErrorCode, RegistryError};
use crate::routing::Resolved;

impl App {
    /// Who sent the request (anonymous when access control is off).
    pub async fn identify(
        &self,
        headers: &http::HeaderMap,
        client: std::net::IpAddr,
    ) -> Result<Identity, RegistryError> {
        match &self.access {
            None => Ok(Identity::Anonymous),
            Some(a) => a.identify(headers, client).await.map_err(|d| {
                self.metrics.access_denied.inc();
                denied(d, "the credentials are not valid")
            }),
        }
    }

    /// The status page names repositories' digests and upstream errors:
    /// with access control on, only `adminPolicy` users see it.
    pub async fn may_see_status(
        &self,
        headers: &http::HeaderMap,
        client: std::net::IpAddr,
    ) -> Result<(), RegistryError> {
        let Some(a) = &self.access else {
            return Ok(());
        };
        let who = self.identify(headers, client).await?;
        let refusal = match who {
            Identity::User(u) if a.is_admin(&u) => return Ok(()),
            Identity::User(_) => Denied::Forbidden,
            Identity::Anonymous => Denied::Unauthenticated,
        };
        self.metrics.access_denied.inc();
        Err(denied(refusal, "the status page is for adminPolicy users"))
    }

    /// Like Docker Hub, the base endpoint challenges anonymous clients when
    /// access control is on, so those with credentials learn to send them
    /// (those without go on anonymously, and read what anonymous may).
    pub fn challenge_base(&self, who: &Identity) -> Result<(), RegistryError> {
        if self.access.is_some() && *who == Identity::Anonymous {
            self.metrics.access_denied.inc();
            return Err(denied(
                Denied::Unauthenticated,
                "this registry takes credentials",
            ));
        }
        Ok(())
    }

    /// May `who` see `name` in the catalog?
    pub fn may_list(&self, who: &Identity, name: &str) -> bool {
        self.access
            .as_ref()
            .is_none_or(|a| a.check_read(who, name).is_ok())
    }

    /// Narrows a routed repository to the registries `who` may read.
    /// Policies may name it as the client did (`team/app`) or by registry
    /// (`ghcr.io/team/app`: one of the registry's hosts, then its upstream
    /// name). For each candidate registry, a policy written for that
    /// registry that matches decides; otherwise the client's name does.
    /// Unreadable candidates are dropped; none left is a refusal.
    pub fn authorize(&self, who: &Identity, repo: &mut Resolved) -> Result<(), RegistryError> {
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
}

/// The OCI error for an access-control refusal.
fn denied(d: Denied, message: &str) -> RegistryError {
    match d {
        Denied::Unauthenticated => {
            RegistryError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
        }
        Denied::Forbidden => RegistryError::new(StatusCode::FORBIDDEN, ErrorCode::Denied, message),
        Denied::Busy => RegistryError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyRequests,
            "too many logins are being checked; try again shortly",
        )
        .retry_after(1),
    }
}
