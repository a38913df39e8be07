//! Which repositories a stored blob or manifest belongs to.
//!
//! The store is content-addressed and shared by every repository, so
//! without this a client allowed to read one repository could read a
//! private layer cached through another just by naming its digest. ferry
//! answers a digest under a repository only once it has seen the content
//! belong there: fetched from that repository upstream, referenced by a
//! manifest of that repository, or confirmed by the upstream with a `HEAD`
//! under that repository's name. Memberships are kept per upstream
//! repository (registry + upstream name) as empty marker files
//! (`repositories/<registry>/<name>/_blobs/<algo>-<hex>`), with a bounded
//! in-memory cache in front (quick_cache, [`MEMORY_LIMIT`] entries) so a
//! warm hit costs no system call. A lost marker costs one
//! upstream `HEAD`, never a wrong answer, so markers are not fsynced.
//! With a shared tier the markers are written there too (in the
//! background), and a replica that has no local marker asks the tier, so a
//! membership one replica learned holds for all of them.

use crate::oci::Digest;
use crate::routing::{Resolved, Target};
use crate::shared::tiered::{Repo, Tiered};

/// Memberships kept in memory at most (the markers on disk still answer
/// for the others).
pub const MEMORY_LIMIT: usize = 1 << 20;

/// The record kind under a repository's directory.
const KIND: &str = "_blobs";

#[derive(Debug)]
pub struct Membership {
    seen: quick_cache::sync::Cache<String, ()>,
    tiers: Tiered,
}

fn key(target: &Target, digest: &Digest) -> String {
    format!(
        "{}\0{}\0{digest}",
        target.registry.name, target.upstream_name
    )
}

fn marker(digest: &Digest) -> String {
    digest.to_string().replace(':', "-")
}

fn repo_of(target: &Target) -> Repo {
    (target.registry.name.clone(), target.upstream_name.clone())
}

impl Membership {
    pub fn new(tiers: Tiered) -> Membership {
        Membership {
            seen: quick_cache::sync::Cache::new(MEMORY_LIMIT),
            tiers,
        }
    }

    /// Records that `digests` belong to `target`'s repository.
    pub async fn record(&self, target: &Target, digests: Vec<Digest>) {
        let fresh: Vec<String> = digests
            .into_iter()
            .filter(|d| {
                let k = key(target, d);
                if self.seen.get(&k).is_some() {
                    return false;
                }
                self.seen.insert(k, ());
                true
            })
            .map(|d| marker(&d))
            .collect();
        if fresh.is_empty() {
            return;
        }
        if let Err(e) = self.tiers.mark(&repo_of(target), KIND, fresh).await {
            tracing::warn!(repo = %target.upstream_name, error = %e,
                "cannot record blob membership; it will be confirmed upstream again");
        }
    }

    /// The target of `repo` that `digest` is known to belong to.
    pub async fn find<'a>(&self, repo: &'a Resolved, digest: &Digest) -> Option<&'a Target> {
        if let Some(t) = repo
            .targets
            .iter()
            .find(|t| self.seen.get(&key(t, digest)).is_some())
        {
            return Some(t);
        }
        let candidates: Vec<Repo> = repo.targets.iter().map(repo_of).collect();
        let found = self
            .tiers
            .find_marked(&candidates, KIND, &marker(digest))
            .await?;
        let t = &repo.targets[found];
        self.seen.insert(key(t, digest), ());
        Some(t)
    }
}
