//! A blob the upstream does not have, asked on a replica that does not
//! own it: the owner's signed 404 is the upstream's answer, so the
//! upstream is asked once for the whole cluster, not once per replica.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_made_up_digest_costs_the_upstream_one_404_for_the_cluster() {
    let up = FakeRegistry::start().await;
    let replicas = cluster(&up.url(), 2).await;
    let peers: Vec<String> = replicas.iter().map(|r| r.addr.to_string()).collect();
    // Digests that no registry has, owned by replica 1.
    let made_up: Vec<String> = (0u64..)
        .map(|i| sha256(format!("nobody has this {i}").as_bytes()))
        .filter(|d| owner_of(&peers, d) == peers[1])
        .take(3)
        .collect();
    for d in &made_up {
        let w = within(get(&replicas[0].url(&format!("/v2/x/blobs/{d}")))).await;
        assert_eq!(w.status, StatusCode::NOT_FOUND);
        assert!(
            String::from_utf8_lossy(&w.body).contains("BLOB_UNKNOWN"),
            "{:?}",
            w.body
        );
        assert_eq!(up.blob_gets(d), 1, "{d}: the owner's 404 is the upstream's");
        // And it is remembered as absent here too: asked again, nobody is
        // asked.
        let again = within(get(&replicas[0].url(&format!("/v2/x/blobs/{d}")))).await;
        assert_eq!(again.status, StatusCode::NOT_FOUND);
        assert_eq!(up.blob_gets(d), 1, "{d}: asked again");
    }
}
