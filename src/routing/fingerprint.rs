//! A registry's routing fingerprint: what decides which image a replica
//! answers when a peer names that registry (see [`super::PeerRoute`]).
//! Replicas exchange theirs in the readiness probe (the [`HEADER`] of
//! `/readyz`), and a replica leaves a peer out of the ring for the
//! registries they route differently (see `crate::cluster`): during a
//! rolling config change each client gets the image its own replica's
//! config routes to, never the other config's.
//!
//! The fingerprint covers the registry's URLs in order, `mirrorOf`, which
//! repositories it serves (`content` prefixes), TLS verification and its
//! CA directory, and the user it logs in as (not the password: the header
//! is readable by whoever reaches `/readyz`). It is the first 16 hex
//! digits of a SHA-256, the same on every build.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest as _, Sha256};

use crate::config::RegistryConfig;

/// The `/readyz` header that carries a replica's fingerprints:
/// `<registry>=<fingerprint>` pairs separated by spaces.
pub const HEADER: &str = "ferry-routing";

/// Registry name (`host[:port]`) → its fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprints(BTreeMap<String, String>);

/// The fingerprint of the registry `name` configured as `config`.
pub fn of(name: &str, config: &RegistryConfig) -> String {
    let mut h = Sha256::new();
    let mut line = |s: &str| {
        h.update(s.as_bytes());
        h.update(b"\n");
    };
    line(name);
    for url in &config.urls {
        line(&format!("url {url}"));
    }
    line(&format!("mirrorOf {:?}", config.mirror_of));
    for rule in &config.content {
        line(&format!("content {} {}", rule.prefix, rule.strip_prefix));
    }
    line(&format!("tlsVerify {}", config.tls_verify));
    line(&format!("certDir {:?}", config.cert_dir));
    let user = config.credentials.as_ref().map(|c| c.username.as_str());
    line(&format!("user {user:?}"));
    let sum = h.finalize();
    sum[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Fingerprints {
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Fingerprints {
        Fingerprints(pairs.into_iter().collect())
    }

    /// The [`HEADER`] value.
    pub fn encode(&self) -> String {
        let pairs: Vec<String> = self.0.iter().map(|(n, f)| format!("{n}={f}")).collect();
        pairs.join(" ")
    }

    /// A peer's [`HEADER`] value; `None` when it is not one.
    pub fn decode(value: &str) -> Option<Fingerprints> {
        value
            .split_ascii_whitespace()
            .map(|pair| {
                let (name, fp) = pair.split_once('=')?;
                let hex = fp.len() == 16 && fp.bytes().all(|b| b.is_ascii_hexdigit());
                (!name.is_empty() && hex).then(|| (name.to_string(), fp.to_string()))
            })
            .collect::<Option<BTreeMap<_, _>>>()
            .map(Fingerprints)
    }

    /// The registries `self` and `other` route differently: a fingerprint
    /// that differs, or a registry only one of them has.
    pub fn differing(&self, other: &Fingerprints) -> BTreeSet<String> {
        let names = self.0.keys().chain(other.0.keys());
        names
            .filter(|n| self.0.get(*n) != other.0.get(*n))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(urls: &[&str]) -> RegistryConfig {
        let json = serde_json::json!({"extensions": {"sync": {"registries": [
            {"urls": urls}
        ]}}});
        let file = crate::config::FileConfig::parse(&json.to_string()).unwrap();
        let overrides = crate::config::Overrides::default();
        let config = crate::config::Config::resolve(file, &overrides).unwrap();
        config.registries[0].clone()
    }

    #[test]
    fn a_fingerprint_changes_with_what_routes_and_nothing_else() {
        let a = registry(&["https://r1.example"]);
        let same = of("r1.example", &a);
        assert_eq!(same, of("r1.example", &registry(&["https://r1.example"])));
        assert_eq!(same.len(), 16);
        let mirrors = registry(&["https://r1.example", "https://r1-mirror.example"]);
        assert_ne!(same, of("r1.example", &mirrors), "another URL list");
        let mut other_user = a.clone();
        other_user.credentials = Some(crate::config::Credentials {
            username: "ci".into(),
            password: crate::config::Secret::new("x"),
        });
        assert_ne!(same, of("r1.example", &other_user), "another user");
        let mut unverified = a.clone();
        unverified.tls_verify = false;
        assert_ne!(same, of("r1.example", &unverified), "no TLS verification");
        let mut slower = a;
        slower.retry.max_retries += 1;
        assert_eq!(same, of("r1.example", &slower), "retries do not route");
    }

    #[test]
    fn fingerprints_cross_the_wire_and_tell_what_differs() {
        let mine = Fingerprints::new([
            ("r1".to_string(), "0123456789abcdef".to_string()),
            ("r2".to_string(), "fedcba9876543210".to_string()),
        ]);
        let back = Fingerprints::decode(&mine.encode()).unwrap();
        assert_eq!(back, mine);
        assert!(mine.differing(&back).is_empty());
        let theirs = Fingerprints::new([
            ("r1".to_string(), "0123456789abcdef".to_string()),
            ("r2".to_string(), "0000000000000000".to_string()),
            ("r3".to_string(), "1111111111111111".to_string()),
        ]);
        let differ: Vec<String> = mine.differing(&theirs).into_iter().collect();
        assert_eq!(differ, ["r2", "r3"]);
        assert_eq!(Fingerprints::decode("r1=zz"), None);
        assert_eq!(Fingerprints::decode("r1"), None);
        assert_eq!(Fingerprints::decode(""), Some(Fingerprints::default()));
    }
}
