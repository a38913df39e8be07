//! An owner that announces the wrong length: longer than any blob may be
//! (`maxBlobSize`), or longer than the blob it then sends. Either is a
//! peer failure: the owner is left out, no wrong bytes reach a client as
//! complete, and the blob comes from the upstream.

use super::*;

/// A scripted owner that announces `announce(len)` bytes for the blob and
/// sends the blob itself, signed.
async fn owner_announcing(
    announce: impl Fn(usize) -> u64 + Send + Sync + 'static,
) -> (RawUpstream, std::sync::Arc<std::sync::Mutex<Bytes>>) {
    let blob = std::sync::Arc::new(std::sync::Mutex::new(Bytes::new()));
    let b = blob.clone();
    let owner = RawUpstream::start(move |req| {
        if req.path == "/readyz" {
            let empty = RawBody::Bytes(Bytes::new());
            return RawReply::new("200 OK", &[("Content-Length", "0".into())], empty);
        }
        let data = b.lock().unwrap().clone();
        let mut headers = vec![("Content-Length", announce(data.len()).to_string())];
        headers.push(signed_answer(req, 200, &headers));
        RawReply::new("200 OK", &headers, RawBody::Bytes(data))
    })
    .await;
    (owner, blob)
}

fn failures(ferry: &Ferry, peer: &str, reason: &'static str) -> i64 {
    let labels = ferry::metrics::PeerReasonLabels {
        peer: peer.to_string(),
        reason,
    };
    ferry
        .app
        .metrics
        .cluster
        .peer_failures
        .get_or_create(&labels)
        .get() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_announcing_more_than_any_blob_is_left_out_at_once() {
    let up = FakeRegistry::start().await;
    let (owner, blob) = owner_announcing(|_| 1 << 50).await;
    let addr = owner.addr.to_string();
    let (ferry, peers) = replica_with_peer(&up.url(), &addr, Duration::from_secs(60)).await;
    let (d, data) = blob_owned_by(&up, 100_000, &peers, &addr);
    *blob.lock().unwrap() = data;
    // The client gets the blob, from the upstream, at once.
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), d);
    assert_eq!(up.blob_gets(&d), 1);
    assert_eq!(failures(&ferry, &addr, "length"), 1);
    assert!(!ferry.app.cluster.as_ref().unwrap().is_live(&addr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_announcing_more_than_it_sends_is_left_out() {
    let up = FakeRegistry::start().await;
    let (owner, blob) = owner_announcing(|len| len as u64 + 1000).await;
    let addr = owner.addr.to_string();
    let (ferry, peers) = replica_with_peer(&up.url(), &addr, Duration::from_secs(60)).await;
    let (d, data) = blob_owned_by(&up, 100_000, &peers, &addr);
    *blob.lock().unwrap() = data;
    let url = ferry.url(&format!("/v2/x/blobs/{d}"));
    // The first download cannot end well (the length it was promised is
    // not the blob's); nothing is served as complete, nothing stored.
    let first = within(try_get(&url)).await;
    let complete = matches!(&first, Ok(w) if w.body_error.is_none() && w.status == StatusCode::OK);
    assert!(!complete, "a download of the wrong length ended well");
    ferry.settle().await;
    assert!(!ferry.has_blob(&d));
    // The owner is out; every later request is served from the upstream.
    assert_eq!(failures(&ferry, &addr, "broken"), 1);
    for _ in 0..3 {
        let w = within(get(&url)).await;
        assert_eq!(w.status, StatusCode::OK);
        assert_eq!(sha256(&w.body), d);
    }
    assert_eq!(
        ferry.app.metrics.cluster.requests_out.get(),
        1,
        "the owner was asked again"
    );
}
