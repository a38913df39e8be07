//! [`PeerRoute`]: how a replica names, to a cluster peer, the repository it
//! routed for its client — written and read here only, so the two sides
//! cannot drift apart. The registry is named by what identifies it, its
//! `host[:port]` (the name its store keys use), never by its position in
//! the config: replicas whose registry lists are ordered differently (a
//! rolling config change) served each other the wrong registry's image.
//! A replica that has no registry of that name answers so, and the asker
//! fetches from its own upstream.

use crate::oci::RepoName;

/// A registry (by its `host[:port]`) and a repository's name there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoute {
    pub registry: String,
    pub upstream_name: RepoName,
}

impl PeerRoute {
    /// The route of a repository at `registry`, as a peer request carries
    /// it.
    pub fn encode(registry: &str, upstream_name: &RepoName) -> String {
        format!("{registry} {upstream_name}")
    }

    /// A route a peer sent; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<PeerRoute, String> {
        let (registry, name) = text
            .split_once(' ')
            .ok_or("expected a registry and a name")?;
        let valid = !registry.is_empty()
            && registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:_[]".contains(&b));
        if !valid {
            return Err(format!("{registry:?} is not a registry's host[:port]"));
        }
        let upstream_name = RepoName::parse(name).map_err(|e| e.to_string())?;
        Ok(PeerRoute {
            registry: registry.to_string(),
            upstream_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_reads_back_as_written_and_nonsense_is_refused() {
        let name = RepoName::parse("library/alpine").unwrap();
        let text = PeerRoute::encode("registry.example:5000", &name);
        assert_eq!(
            PeerRoute::parse(&text).unwrap(),
            PeerRoute {
                registry: "registry.example:5000".into(),
                upstream_name: name
            }
        );
        for bad in ["", "r", "r/x library/alpine", "r ../etc", " a", "r\u{0} a"] {
            assert!(PeerRoute::parse(bad).is_err(), "{bad:?}");
        }
    }
}
