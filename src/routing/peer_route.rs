//! [`PeerRoute`]: how a replica names, to a cluster peer, the repository it
//! routed for its client — written and read here only, so the two sides
//! cannot drift apart. Today the registry is named by its position in the
//! config (`<index> <upstream name>`), which holds while the replicas share
//! one config.

use crate::oci::RepoName;

/// A registry (by its place in the config) and a repository's name there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoute {
    pub registry: usize,
    pub upstream_name: RepoName,
}

impl PeerRoute {
    /// The route of `target`, as a peer request carries it.
    pub fn encode(registry: usize, upstream_name: &RepoName) -> String {
        format!("{registry} {upstream_name}")
    }

    /// A route a peer sent; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<PeerRoute, String> {
        let (index, name) = text
            .split_once(' ')
            .ok_or("expected a registry index and a name")?;
        let registry = index
            .parse::<usize>()
            .map_err(|_| format!("{index:?} is not a registry index"))?;
        let upstream_name = RepoName::parse(name).map_err(|e| e.to_string())?;
        Ok(PeerRoute {
            registry,
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
        let text = PeerRoute::encode(2, &name);
        assert_eq!(
            PeerRoute::parse(&text).unwrap(),
            PeerRoute {
                registry: 2,
                upstream_name: name
            }
        );
        for bad in ["", "2", "x library/alpine", "2 ../etc", "-1 a"] {
            assert!(PeerRoute::parse(bad).is_err(), "{bad:?}");
        }
    }
}
