//! A prewarm with `"everyReplica": true` has every replica of the cluster
//! take a copy of every blob, each blob fetched upstream once (by its
//! owner); the other replicas are asked with the cluster's signature, not
//! an admin token, and a request that is neither is refused.

use super::*;
use crate::prewarm::{finished, post, two_platforms, TOKEN};

const BODY: &str = r#"{"images": ["team/app:v1"]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_takes_a_copy_and_the_upstream_sees_each_blob_once() {
    let up = FakeRegistry::start().await;
    let (amd, arm) = two_platforms(&up, "team/app", "v1");
    let tokens = ferry::config::AdminTokens::resolve(
        Some(vec![ferry::config::Secret::new(TOKEN)]),
        None,
        None,
    )
    .unwrap();
    // Only the first replica has a token: the others are asked as peers.
    let first = std::sync::atomic::AtomicBool::new(true);
    let replicas = cluster_with(&up.url(), 3, |c| {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            c.admin_tokens = tokens.clone();
        }
    })
    .await;
    let body = r#"{"images": ["team/app:v1"], "everyReplica": true}"#;
    let (status, headers, v) = post(&replicas[0].url("/ferry/v1/prewarm"), Some(TOKEN), body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let done = finished(&replicas[0].url(headers["location"].to_str().unwrap())).await;
    assert_eq!(done["state"], "done", "{done}");
    let shares = done["replicas"].as_array().unwrap();
    assert_eq!(shares.len(), 2, "{done}");
    for s in shares {
        assert_eq!(s["state"], "done", "{done}");
        assert_eq!(
            s["blobs"],
            serde_json::json!({"done": 4, "total": 4}),
            "{done}"
        );
    }
    for b in amd.iter().chain(&arm) {
        for (i, r) in replicas.iter().enumerate() {
            assert!(r.has_blob(b), "replica {i} has no copy of {b}");
        }
        assert_eq!(up.blob_gets(b), 1, "{b} fetched upstream once for all");
    }
    // Without it, the job stays on the replica asked (its owners fetch).
    let (status, headers, _) = post(&replicas[1].url("/ferry/v1/prewarm"), Some(TOKEN), body).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "replica 1 has no admin tokens"
    );
    assert!(!headers.contains_key("location"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prewarm_signed_for_another_body_or_with_another_secret_is_refused() {
    let up = FakeRegistry::start().await;
    two_platforms(&up, "team/app", "v1");
    let replicas = cluster(&up.url(), 2).await;
    let url = replicas[0].url("/ferry/v1/prewarm");
    // A POST of `body` signed with `secret` for the body `bound`.
    let send_signed = |secret: &'static str, bound: &'static [u8]| {
        let url = url.clone();
        async move {
            let repo = ferry::cluster::body_binding(bound);
            let r = ferry::cluster::signature::Request {
                from: "x:1",
                method: "POST",
                path: "/ferry/v1/prewarm",
                repo: &repo,
                client: "192.0.2.1",
            };
            let signed = ferry::cluster::signature::sign(secret.as_bytes(), &r);
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            let mut req = http::Request::post(&url);
            for (k, v) in &signed {
                req = req.header(k, v);
            }
            let body = http_body_util::Full::new(bytes::Bytes::from_static(BODY.as_bytes()));
            within(client.request(req.body(body).unwrap()))
                .await
                .unwrap()
        }
    };
    // Signed, but for another body: the signature does not cover it.
    let other = send_signed(SECRET, b"{}").await;
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);
    // Another secret: an anonymous client, and no admin tokens here.
    let forged = send_signed("another-secret-0123456789", BODY.as_bytes()).await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        up.hits("GET", "/v2/team/app/manifests/v1"),
        0,
        "nothing was started"
    );
    // Signed for this body: a replica's share of everyReplica, answered
    // 200 and signed.
    let ok = send_signed(SECRET, BODY.as_bytes()).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(ok.headers().contains_key(ferry::cluster::signature::ANSWER));
    assert!(ok.headers().contains_key("docker-content-digest"));
}
