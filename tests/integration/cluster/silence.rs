//! An owner that goes silent while its probes still answer: asked how far
//! it is (a signed `HEAD`), one that holds back bytes it has is left out
//! after `peerTimeout` and the rest comes from elsewhere; one that waits
//! on its own slow upstream is waited for, and the blob still comes
//! upstream once.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_sends_half_then_nothing_is_left_after_the_peer_timeout() {
    let up = FakeRegistry::start().await;
    let blob = std::sync::Arc::new(std::sync::Mutex::new(Bytes::new()));
    let b = blob.clone();
    // Answers its probes; sends half the blob, then nothing, while it says
    // (signed) it has all of it.
    let owner = RawUpstream::start(move |req| {
        if req.path == "/readyz" {
            let empty = RawBody::Bytes(Bytes::new());
            return RawReply::new("200 OK", &[("Content-Length", "0".into())], empty);
        }
        let data = b.lock().unwrap().clone();
        let mut headers = vec![
            ("Content-Length", data.len().to_string()),
            (ferry::cluster::signature::HAVE, data.len().to_string()),
        ];
        headers.push(signed_answer(req, 200, &headers));
        match req.method.as_str() {
            "HEAD" => RawReply::new("200 OK", &headers, RawBody::Bytes(Bytes::new())),
            _ => RawReply::new(
                "200 OK",
                &headers,
                RawBody::ThenHang(data.slice(..data.len() / 2)),
            ),
        }
    })
    .await;
    let owner_addr = owner.addr.to_string();
    // Idle timeouts longer than any test step: only the silence check ends
    // the wait.
    let (ferry, peers) =
        replica_with_peer_and(&up.url(), &owner_addr, Duration::from_millis(100), |cfg| {
            cfg.timeouts.idle_read = Duration::from_secs(600);
            cfg.cluster.as_mut().unwrap().peer_timeout = Duration::from_millis(300);
        })
        .await;
    let size = 2 << 20;
    let (d, data) = blob_owned_by(&up, size, &peers, &owner_addr);
    *blob.lock().unwrap() = data;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), d);
    assert!(
        up.blob_bytes_sent(&d) <= size as u64 / 2 + (1 << 20),
        "only the rest from the upstream: {} bytes",
        up.blob_bytes_sent(&d)
    );
    let text = ferry.app.metrics.encode();
    let silent =
        format!(r#"ferry_cluster_peer_failures_total{{peer="{owner_addr}",reason="silent"}} 1"#);
    assert!(text.contains(&silent), "{text}");
    assert!(!ferry.app.cluster.as_ref().unwrap().is_live(&owner_addr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_waiting_on_its_slow_upstream_is_waited_for() {
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let replicas = cluster_with(&up.url(), 2, |cfg| {
        cfg.cluster.as_mut().unwrap().peer_timeout = Duration::from_millis(200);
    })
    .await;
    let peers: Vec<String> = replicas.iter().map(|r| r.addr.to_string()).collect();
    let size = 2 << 20;
    let data = (3000..)
        .map(|seed| blob_bytes(size, seed))
        .find(|data| owner_of(&peers, &sha256(data)) == peers[1])
        .unwrap();
    // The owner's upstream sends 1 MiB, then stalls.
    let d = up.add_blob_with(data, Fault::PauseAt(1 << 20, gate.clone()));
    let url = replicas[0].url(&format!("/v2/x/blobs/{d}"));
    let client = tokio::spawn(async move { get(&url).await });
    within(gate.reached()).await;
    // The asker has asked the owner how far it is twice (each time the
    // owner had no more than it sent) before the upstream goes on.
    let owner = &replicas[1];
    until(|| owner.app.metrics.cluster.requests_in.get() >= 3).await;
    gate.open();
    let w = within(client).await.unwrap();
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), d);
    assert_eq!(up.blob_gets(&d), 1, "the upstream was asked once");
    assert_eq!(up.blob_bytes_sent(&d), size as u64);
    assert_eq!(
        replicas[0].app.metrics.cluster.peer_bytes.get(),
        size as u64,
        "all of it from the owner"
    );
    let text = replicas[0].app.metrics.encode();
    assert!(
        !text.contains("ferry_cluster_peer_failures_total{"),
        "{text}"
    );
}
