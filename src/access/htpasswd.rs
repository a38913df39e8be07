//! An htpasswd file of bcrypt users (`htpasswd -B`), as zot and CNCF
//! Distribution read it.
//!
//! Checking a bcrypt hash costs tens of milliseconds on purpose, so a
//! verified `user:password` pair is remembered (as its SHA-256, never the
//! password) and later requests of the same client cost a hash lookup; so
//! is a wrong pair, among the last [`REFUSED_KEPT`] (a client retrying a bad
//! password does not cost a bcrypt each time). How many checks run at once
//! is [`super::LoginChecks`]'s.
//! Entries in other formats (`$apr1$`, `{SHA}`, crypt) are refused at load
//! with the line that holds them: they are too weak to accept silently.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::AccessError;

use sha2::{Digest as _, Sha256};

/// Wrong `user:password` pairs remembered (quick_cache: the least used go).
pub const REFUSED_KEPT: usize = 4096;

/// Right pairs remembered. bcrypt reads only a password's first 72 bytes,
/// so a user who knows a long one can make many right pairs: bounded too.
pub const VERIFIED_KEPT: usize = 16_384;

/// Users and their bcrypt hashes.
#[derive(Debug)]
pub struct Htpasswd {
    users: HashMap<String, String>,
    /// Right pairs.
    verified: quick_cache::sync::Cache<[u8; 32], ()>,
    /// Wrong pairs, recently checked.
    refused: quick_cache::sync::Cache<[u8; 32], ()>,
    /// bcrypt checks run, and how many run now and ran at most at once.
    checks: AtomicU64,
    running: AtomicUsize,
    most_running: AtomicUsize,
    /// What unknown users are checked against ([`Htpasswd::verify`]).
    decoy: std::sync::OnceLock<String>,
}

impl Default for Htpasswd {
    fn default() -> Htpasswd {
        Htpasswd::with_users(HashMap::new())
    }
}

impl Htpasswd {
    pub fn load(path: &Path) -> Result<Htpasswd, AccessError> {
        let text = std::fs::read_to_string(path).map_err(|source| AccessError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Htpasswd::parse(&text).map_err(|problem| AccessError::Htpasswd {
            path: path.to_path_buf(),
            problem,
        })
    }

    /// Parses htpasswd lines; the error names the line and what is wrong.
    pub(crate) fn parse(text: &str) -> Result<Htpasswd, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("line {}: not user:hash", i + 1));
            };
            if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
                return Err(format!(
                    "line {} (user {user:?}): only bcrypt hashes are accepted (htpasswd -B)",
                    i + 1
                ));
            }
            users.insert(user.to_string(), hash.to_string());
        }
        Ok(Htpasswd::with_users(users))
    }

    fn with_users(users: HashMap<String, String>) -> Htpasswd {
        Htpasswd {
            users,
            verified: quick_cache::sync::Cache::new(VERIFIED_KEPT),
            refused: quick_cache::sync::Cache::new(REFUSED_KEPT),
            checks: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
            decoy: std::sync::OnceLock::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// True when `password` is `user`'s. Slow the first time for a pair
    /// (bcrypt; call it off the async workers, through
    /// [`super::LoginChecks`]), fast afterwards. A user that does not exist
    /// costs the same check against a decoy hash, so the time of a refusal
    /// does not tell which user names exist.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        if let Some(known) = self.remembered(user, password) {
            return known;
        }
        let hash = match self.users.get(user) {
            Some(hash) => hash.as_str(),
            None => self.decoy(),
        };
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        self.checks.fetch_add(1, Ordering::Relaxed);
        let ok = bcrypt::verify(password, hash).unwrap_or(false) && self.users.contains_key(user);
        self.running.fetch_sub(1, Ordering::SeqCst);
        let key = pair_key(user, password);
        if ok {
            self.verified.insert(key, ());
        } else {
            self.refused.insert(key, ());
        }
        ok
    }

    /// The answer for a pair without bcrypt, when there is one: a pair
    /// verified or refused before, or any pair when there are no users.
    pub fn remembered(&self, user: &str, password: &str) -> Option<bool> {
        if self.users.is_empty() {
            return Some(false);
        }
        let key = pair_key(user, password);
        if self.verified.get(&key).is_some() {
            Some(true)
        } else if self.refused.get(&key).is_some() {
            Some(false)
        } else {
            None
        }
    }

    /// A hash no password matches, at the cost most users' hashes have
    /// (made once, on the first unknown user).
    fn decoy(&self) -> &str {
        self.decoy.get_or_init(|| {
            let mut costs: HashMap<u32, usize> = HashMap::new();
            for hash in self.users.values() {
                if let Some(c) = hash.get(4..6).and_then(|c| c.parse().ok()) {
                    *costs.entry(c).or_default() += 1;
                }
            }
            let cost = costs
                .into_iter()
                .max_by_key(|&(c, n)| (n, c))
                .map_or(bcrypt::DEFAULT_COST, |(c, _)| c)
                .clamp(4, 31);
            // Its password need not be secret: a match for an unknown user
            // is still a refusal.
            bcrypt::hash("no user of ferry has this password", cost).expect("a cost in 4..=31")
        })
    }

    /// bcrypt checks run so far.
    pub fn checked(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// The most bcrypt checks that ran at the same time.
    pub fn most_at_once(&self) -> usize {
        self.most_running.load(Ordering::SeqCst)
    }
}

/// What a pair is remembered by: its SHA-256, never the password.
pub(super) fn pair_key(user: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update([0]);
    h.update(password.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_users_verify_and_other_formats_are_refused() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let h = Htpasswd::parse(&format!("# users\nalice:{hash}\n")).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h.remembered("alice", "s3cret"), None);
        assert!(h.verify("alice", "s3cret"));
        assert_eq!(h.remembered("alice", "s3cret"), Some(true));
        assert!(!h.verify("alice", "wrong"));
        assert_eq!(h.remembered("alice", "wrong"), Some(false));
        assert!(!h.verify("alice", "wrong"));
        assert_eq!(h.checked(), 2, "a remembered pair ran bcrypt again");
        // A user that does not exist costs a check too (against the decoy,
        // at the users' cost), and is then remembered like a wrong password.
        assert_eq!(h.remembered("bob", "s3cret"), None);
        assert!(!h.verify("bob", "s3cret"));
        assert!(!h.verify("bob", "no user of ferry has this password"));
        assert_eq!(h.checked(), 4);
        assert_eq!(h.remembered("bob", "s3cret"), Some(false));
        assert!(h.decoy().starts_with("$2b$04$"), "{}", h.decoy());
        // With no users at all there is nothing to check or to hide.
        let none = Htpasswd::default();
        assert!(!none.verify("bob", "s3cret"));
        assert_eq!(none.checked(), 0);
        let e = Htpasswd::parse("bob:$apr1$abc$def").unwrap_err();
        assert!(e.contains("line 1") && e.contains("bcrypt"), "{e}");
        assert!(Htpasswd::parse("nocolon").is_err());
    }
}
