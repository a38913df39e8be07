//! `ferry.cluster`: the replicas that share one upstream fetch per blob.
//!
//! Peers are a static list of `host:port` (`peers`) or a DNS name resolved
//! again every `dnsInterval` (`dns`, each A/AAAA record a peer on `port`,
//! e.g. a Kubernetes headless Service). `self` is this replica as the
//! others reach it; without it, ferry finds itself among the peers by its
//! listen port and its own addresses. Peer requests are signed with a
//! shared secret (`secretFile`, or the `FERRY_CLUSTER_SECRET` environment
//! variable); a cluster without one is refused, since an unsigned peer path
//! would let anyone past client access control.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{parse_duration, ConfigError, Secret};

/// The default `peerTimeout`: with the default `probeInterval` (1 s), a
/// frozen owner costs its askers 3 s at most. (1.5 s made a busy replica on
/// a loaded 2-core machine miss its probe.)
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// The default `fanout`: how many peers one replica sends a blob to at a
/// time before it points further askers to one of them.
pub const FANOUT: usize = 4;

/// The environment variable that may hold the peer secret.
pub const SECRET_ENV: &str = "FERRY_CLUSTER_SECRET";

/// The `ferry.cluster` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSection {
    pub peers: Option<Vec<String>>,
    pub dns: Option<String>,
    /// The port of every peer found through `dns`.
    pub port: Option<u16>,
    #[serde(rename = "self")]
    pub self_addr: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// How often peers are asked whether they are ready ("1s").
    pub probe_interval: Option<String>,
    /// How often `dns` is resolved again ("5s").
    pub dns_interval: Option<String>,
    /// How long a peer may stay silent ("2s"): a readiness probe waits this
    /// long, and a transfer from a peer that left the ring ends once it has
    /// sent nothing for this long.
    pub peer_timeout: Option<String>,
    /// How many peers one replica sends a blob to at a time (4); further
    /// askers are pointed to one of those, which relays it.
    pub fanout: Option<usize>,
    /// This replica's zone (rack, availability zone): a blob's tree
    /// prefers relays in the asker's zone.
    pub zone: Option<String>,
    /// With `http.tls`: Docker's `certs.d` layout for talking to peers:
    /// `*.crt` CAs their certificates are checked against, a `*.cert`
    /// with its `*.key` shown to them (for a `cacert` listener).
    pub cert_dir: Option<PathBuf>,
}

/// Where the peers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSource {
    Static(Vec<String>),
    Dns { name: String, port: u16 },
}

/// The cluster as configured.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub peers: PeerSource,
    /// This replica's `host:port` as its peers reach it, when given.
    pub self_addr: Option<String>,
    pub secret: Secret,
    pub probe_interval: Duration,
    pub dns_interval: Duration,
    /// How long a peer may stay silent (`peerTimeout`): a frozen owner costs
    /// its askers at most `probeInterval` + this, before its answer or in
    /// the middle of its transfer.
    pub peer_timeout: Duration,
    /// How many peers one replica sends a blob to at a time (`fanout`).
    pub fanout: usize,
    /// This replica's zone (`zone`), sent to peers with its readiness.
    pub zone: Option<String>,
    /// Peers are asked over HTTPS (this replica's listener speaks TLS, and
    /// so do theirs).
    pub https: bool,
    /// CAs and client certificate for peers (`certDir`), with `https`.
    pub cert_dir: Option<PathBuf>,
}

impl ClusterSection {
    /// Resolves the section; `env_secret` is `FERRY_CLUSTER_SECRET`;
    /// `https`: the listener speaks TLS (`http.tls`), so peers do too.
    pub fn resolve(
        &self,
        env_secret: Option<String>,
        https: bool,
    ) -> Result<ClusterConfig, ConfigError> {
        let err = |m: String| ConfigError(format!("ferry.cluster: {m}"));
        let peers = match (&self.peers, &self.dns) {
            (Some(_), Some(_)) => return Err(err("give peers or dns, not both".into())),
            (None, None) => return Err(err("give peers (a list of host:port) or dns".into())),
            (Some(list), None) => {
                for p in list {
                    check_host_port(p).map_err(|m| err(format!("peer {p:?}: {m}")))?;
                }
                PeerSource::Static(list.clone())
            }
            (None, Some(name)) => PeerSource::Dns {
                name: name.clone(),
                port: self
                    .port
                    .ok_or_else(|| err("dns needs the peers' port (port)".into()))?,
            },
        };
        if let Some(me) = &self.self_addr {
            check_host_port(me).map_err(|m| err(format!("self {me:?}: {m}")))?;
            if let PeerSource::Static(list) = &peers {
                if !list.contains(me) {
                    return Err(err(format!(
                        "self {me:?} is not among peers {list:?}: the other replicas would never ask it for what it owns, and it would own what they think another owns; list every replica in peers, this one included"
                    )));
                }
            }
        }
        let secret = match (&self.secret_file, env_secret) {
            (Some(path), _) => std::fs::read_to_string(path)
                .map_err(|e| err(format!("cannot read secretFile {}: {e}", path.display())))?,
            (None, Some(s)) => s,
            (None, None) => {
                return Err(err(format!(
                    "peers must share a secret: set secretFile or {SECRET_ENV}"
                )))
            }
        };
        let secret = secret.trim().to_string();
        if secret.len() < 16 {
            return Err(err("the peer secret must be at least 16 characters".into()));
        }
        let dur = |key: &str, v: &Option<String>, default: Duration| match v {
            Some(s) => parse_duration(s).map_err(|e| err(format!("{key}: {e}"))),
            None => Ok(default),
        };
        if self.cert_dir.is_some() && !https {
            return Err(err(
                "certDir is for peers that speak HTTPS: set http.tls (every replica's listener) or drop certDir".into(),
            ));
        }
        Ok(ClusterConfig {
            https,
            cert_dir: self.cert_dir.clone(),
            peers,
            self_addr: self.self_addr.clone(),
            secret: Secret::new(secret),
            probe_interval: dur(
                "probeInterval",
                &self.probe_interval,
                Duration::from_secs(1),
            )?,
            dns_interval: dur("dnsInterval", &self.dns_interval, Duration::from_secs(5))?,
            peer_timeout: dur("peerTimeout", &self.peer_timeout, PEER_TIMEOUT)?,
            fanout: self.fanout.unwrap_or(FANOUT),
            zone: match &self.zone {
                Some(z) => Some(check_zone(z).map_err(|m| err(format!("zone {z:?}: {m}")))?),
                None => None,
            },
        })
    }
}

/// A zone name: 1 to 63 letters, digits, `.`, `_` and `-` (what
/// Kubernetes' topology labels hold).
fn check_zone(z: &str) -> Result<String, String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if z.is_empty() || z.len() > 63 || !z.chars().all(ok) {
        return Err("expected 1 to 63 letters, digits, '.', '_' or '-'".into());
    }
    Ok(z.to_string())
}

/// `host:port` with a port.
fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| "expected host:port".to_string())?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err("expected host:port".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(json: &str) -> ClusterSection {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_cluster_needs_peers_and_a_secret() {
        let s = section(r#"{"peers": ["10.0.0.1:5000", "10.0.0.2:5000"]}"#);
        let e = s.resolve(None, false).unwrap_err().0;
        assert!(e.contains("secretFile") && e.contains(SECRET_ENV), "{e}");
        let c = s.resolve(Some("0123456789abcdef".into()), false).unwrap();
        assert_eq!(
            c.peers,
            PeerSource::Static(vec!["10.0.0.1:5000".into(), "10.0.0.2:5000".into()])
        );
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
        let e = section("{}").resolve(Some("0123456789abcdef".into()), false);
        assert!(e.unwrap_err().0.contains("peers"));
        let e = section(r#"{"peers": ["nohost"]}"#).resolve(Some("0123456789abcdef".into()), false);
        assert!(e.unwrap_err().0.contains("host:port"));
        let e = section(r#"{"peers": ["a:1"]}"#).resolve(Some("short".into()), false);
        assert!(e.unwrap_err().0.contains("16"));
        let e =
            section(r#"{"dns": "ferry-peers"}"#).resolve(Some("0123456789abcdef".into()), false);
        assert!(e.unwrap_err().0.contains("port"));
    }

    #[test]
    fn self_must_be_among_the_peers() {
        let secret = || Some("0123456789abcdef".to_string());
        let ok = section(r#"{"peers": ["a:1", "b:1"], "self": "b:1"}"#);
        assert_eq!(
            ok.resolve(secret(), false).unwrap().self_addr.as_deref(),
            Some("b:1")
        );
        let e = section(r#"{"peers": ["a:1", "b:1"], "self": "c:1"}"#).resolve(secret(), false);
        let e = e.unwrap_err().0;
        assert!(e.contains(r#"self "c:1" is not among peers"#), "{e}");
        // With peers from DNS, where this replica is found at run time.
        let dns = section(r#"{"dns": "ferry-peers", "port": 5000, "self": "c:5000"}"#);
        assert!(dns.resolve(secret(), false).is_ok());
    }

    #[test]
    fn a_fanout_defaults_and_a_zone_is_a_label() {
        let secret = || Some("0123456789abcdef".to_string());
        let c = section(r#"{"peers": ["a:1"]}"#).resolve(secret(), false);
        let c = c.unwrap();
        assert_eq!((c.fanout, c.zone), (FANOUT, None));
        let c = section(r#"{"peers": ["a:1"], "fanout": 2, "zone": "eu-west-1a"}"#);
        let c = c.resolve(secret(), false).unwrap();
        assert_eq!((c.fanout, c.zone.as_deref()), (2, Some("eu-west-1a")));
        for bad in ["", "a b", "zone/1", &"z".repeat(64)] {
            let json = serde_json::json!({"peers": ["a:1"], "zone": bad}).to_string();
            let e = section(&json).resolve(secret(), false).unwrap_err().0;
            assert!(e.contains("zone"), "{bad:?}: {e}");
        }
    }
}
