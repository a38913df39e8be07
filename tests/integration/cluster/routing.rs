//! Replicas whose configs route a registry differently (a rolling config
//! change): they exchange routing fingerprints in the readiness probe, and
//! each leaves the other out for the registries that differ, so nothing of
//! those is asked of a peer that would answer with another config's image.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_routes_a_registry_otherwise_is_not_asked_for_it() {
    let (r1, r2) = (FakeRegistry::start().await, FakeRegistry::start().await);
    let addrs = free_addrs(2);
    let peers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    // Both send one/** to r1. Replica 0 sends everything else to r2;
    // replica 1 only two/** (its new config).
    let r2_content = [
        serde_json::json!([{"prefix": "**"}]),
        serde_json::json!([{"prefix": "two/**"}]),
    ];
    let mut replicas = Vec::new();
    for (i, content) in r2_content.iter().enumerate() {
        let json = serde_json::json!({"extensions": {"sync": {"enable": true, "registries": [
            {"urls": [r1.url()], "content": [{"prefix": "one/**"}]},
            {"urls": [r2.url()], "content": content}
        ]}}});
        let c = cluster_config(&peers, &peers[i], Duration::from_millis(100));
        let addr = addrs[i];
        replicas.push(
            Ferry::start_json(&json.to_string(), move |cfg| {
                cfg.listen = addr;
                cfg.cluster = Some(c);
            })
            .await,
        );
    }
    all_live(&replicas, 1).await;
    let (a, b) = (&replicas[0], &replicas[1]);
    // Each has probed the other and found r2 routed otherwise.
    let differs = |f: &Ferry, peer: &str| {
        let labels = ferry::metrics::PeerLabels {
            peer: peer.to_string(),
        };
        f.app
            .metrics
            .cluster
            .routing_differs
            .get_or_create(&labels)
            .get()
    };
    until(|| differs(a, &peers[1]) == 1 && differs(b, &peers[0]) == 1).await;
    let page = String::from_utf8(within(get(&a.url("/"))).await.body.to_vec()).unwrap();
    let r2_name = r2.url().trim_start_matches("http://").to_string();
    assert!(
        page.contains(&format!("routes otherwise (left out for): {r2_name}")),
        "{page}"
    );

    // Blobs that replica 1 owns: one of r1 (routed alike), one of r2.
    let owned_by_b = |up: &FakeRegistry, repo: &str, seeds: u64| {
        (seeds..)
            .map(|seed| blob_bytes(20_000, seed))
            .find(|data| owner_of(&peers, &sha256(data)) == peers[1])
            .map(|data| up.add_blob_in(repo, data))
            .unwrap()
    };
    let d2 = owned_by_b(&r2, "x", 1000);
    let w = within(get(&a.url(&format!("/v2/x/blobs/{d2}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), d2);
    assert_eq!(
        b.app.metrics.cluster.requests_in.get(),
        0,
        "replica 1 was asked for a blob of a registry it routes otherwise"
    );
    assert_eq!(r2.blob_gets(&d2), 1);

    let d1 = owned_by_b(&r1, "one/x", 2000);
    let w = within(get(&a.url(&format!("/v2/one/x/blobs/{d1}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), d1);
    assert_eq!(
        b.app.metrics.cluster.requests_in.get(),
        1,
        "replica 1 routes r1 alike: it owns the blob and is asked"
    );
}
