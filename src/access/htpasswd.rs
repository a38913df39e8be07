//! An htpasswd file of bcrypt users (`htpasswd -B`), as zot and CNCF
//! Distribution read it.
//!
//! Checking a bcrypt hash costs tens of milliseconds on purpose, so a
//! verified `user:password` pair is remembered (as its SHA-256, never the
//! password) and later requests of the same client cost a hash lookup.
//! Entries in other formats (`$apr1$`, `{SHA}`, crypt) are refused at load
//! with the line that holds them: they are too weak to accept silently.

use std::collections::HashMap;
use std::path::Path;

use super::AccessError;

use dashmap::DashMap;
use sha2::{Digest as _, Sha256};

/// Users and their bcrypt hashes.
#[derive(Debug, Default)]
pub struct Htpasswd {
    users: HashMap<String, String>,
    verified: DashMap<[u8; 32], ()>,
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
        Ok(Htpasswd {
            users,
            verified: DashMap::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// True when `password` is `user`'s. Slow the first time for a pair
    /// (bcrypt; call it off the async workers), fast afterwards.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        let key = pair_key(user, password);
        if self.verified.contains_key(&key) {
            return true;
        }
        let ok = bcrypt::verify(password, hash).unwrap_or(false);
        if ok {
            self.verified.insert(key, ());
        }
        ok
    }

    /// True when the pair was verified before (no bcrypt needed).
    pub fn known(&self, user: &str, password: &str) -> bool {
        self.verified.contains_key(&pair_key(user, password))
    }
}

fn pair_key(user: &str, password: &str) -> [u8; 32] {
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
        assert!(h.verify("alice", "s3cret"));
        assert!(h.known("alice", "s3cret"));
        assert!(!h.verify("alice", "wrong"));
        assert!(!h.verify("bob", "s3cret"));
        let e = Htpasswd::parse("bob:$apr1$abc$def").unwrap_err();
        assert!(e.contains("line 1") && e.contains("bcrypt"), "{e}");
        assert!(Htpasswd::parse("nocolon").is_err());
    }
}
