//! The cluster scenarios' parts: ferry children on loopback, with or
//! without `ferry.cluster` (and its `fanout`), and clients spread over them
//! as a round-robin balancer would spread them.

use std::time::Duration;

use super::harness::{free_addr, launch, Mirror};

/// `n` ferry replicas of `upstream`; with a `fanout`, one cluster of that
/// `ferry.cluster.fanout` whose members all see each other before this
/// returns.
pub async fn start_replicas(upstream: &str, n: usize, fanout: Option<usize>) -> Vec<Mirror> {
    let clustered = fanout.is_some();
    let addrs: Vec<String> = (0..n).map(|_| free_addr()).collect();
    let mut replicas = Vec::new();
    for addr in &addrs {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("cluster.secret");
        std::fs::write(&secret, "the bench cluster's shared secret").unwrap();
        let (host, port) = addr.rsplit_once(':').unwrap();
        let mut config = serde_json::json!({
            "http": {"address": host, "port": port},
            "storage": {"rootDirectory": dir.path().join("store")},
            "extensions": {"sync": {"registries": [{"urls": [upstream]}]}},
        });
        if clustered {
            config["ferry"] = serde_json::json!({"cluster": {
                "peers": addrs, "self": addr, "secretFile": secret, "probeInterval": "200ms",
                "fanout": fanout
            }});
        }
        let file = dir.path().join("ferry.json");
        std::fs::write(&file, config.to_string()).unwrap();
        let file = file.to_str().unwrap().to_string();
        replicas.push(launch(addr, &["serve", "--config", &file], dir).await);
    }
    if clustered {
        for r in &replicas {
            for _ in 0..800 {
                if metric(r, "ferry_cluster_peers_live").await == (n - 1) as u64 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    replicas
}

/// The sum of a metric's lines at `m`'s `/metrics` (0 when absent).
pub async fn metric(m: &Mirror, name: &str) -> u64 {
    let url = format!("{}/metrics", m.base);
    let Ok(text) = tokio::time::timeout(Duration::from_secs(5), async {
        let w = super::support::try_get(&url).await.ok()?;
        String::from_utf8(w.body.to_vec()).ok()
    })
    .await
    else {
        return 0;
    };
    text.unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
