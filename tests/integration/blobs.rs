//! The request coordinator seen from clients: streaming a cold blob,
//! one upstream fetch for many clients, late joiners, stalled and vanished
//! clients, bad upstream bytes, broken transfers, Range and HEAD.

use crate::support;

use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use support::*;
use tokio::io::AsyncWriteExt;

const MIB: usize = 1 << 20;

fn blob_path(digest: &str) -> String {
    format!("/v2/library/app/blobs/{digest}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_blob_reaches_the_client_before_the_upstream_finished() {
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let data = blob_bytes(8 * MIB, 1);
    let total = data.len() as u64;
    let digest = up.add_blob_with(data.clone(), Fault::PauseAt(2 * MIB as u64, gate.clone()));
    let ferry = Ferry::start(&up.url()).await;

    let resp = within(send(Method::GET, &ferry.url(&blob_path(&digest)), &[])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-length"], total.to_string().as_str());
    assert_eq!(resp.headers()["docker-content-digest"], digest.as_str());
    let mut body = resp.into_body();
    let first = within(read_at_least(&mut body, 1)).await;
    let upstream_progress = up.body_bytes();
    assert!(
        upstream_progress < total / 2,
        "first chunk arrived only after the upstream sent {upstream_progress} of {total} bytes"
    );
    assert_eq!(&first[..], &data[..first.len()]);
    gate.open();
    let rest = within(body.collect()).await.unwrap().to_bytes();
    let mut all = first;
    all.extend_from_slice(&rest);
    assert_eq!(sha256(&all), digest);
    ferry.settle().await;
    assert!(ferry.has_blob(&digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_clients_cause_one_upstream_fetch() {
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let data = blob_bytes(4 * MIB, 2);
    let digest = up.add_blob_with(data.clone(), Fault::PauseAt(MIB as u64, gate.clone()));
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url(&blob_path(&digest));

    // All eight have their response headers while the fetch is held at 1 MiB.
    let mut responses = Vec::new();
    for _ in 0..8 {
        responses.push(within(send(Method::GET, &url, &[])).await);
    }
    gate.reached().await;
    assert_eq!(ferry.app.coordinator.in_flight(), 1);
    gate.open();
    let bodies = futures::future::join_all(responses.into_iter().map(read_whole)).await;
    for (i, b) in bodies.iter().enumerate() {
        assert_eq!(b.status, StatusCode::OK, "client {i}");
        assert_eq!(b.body_error, None, "client {i}");
        assert_eq!(sha256(&b.body), digest, "client {i}");
    }
    assert_eq!(up.blob_gets(&digest), 1, "upstream GETs of the blob");
    assert_eq!(up.body_bytes(), data.len() as u64, "upstream bytes sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_gets_the_whole_blob_from_disk_and_its_first_byte_at_once() {
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let data = blob_bytes(6 * MIB, 3);
    let half = 3 * MIB;
    let digest = up.add_blob_with(data.clone(), Fault::PauseAt(half as u64, gate.clone()));
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url(&blob_path(&digest));

    let first = within(send(Method::GET, &url, &[])).await;
    let mut first_body = first.into_body();
    let mut first_bytes = within(read_at_least(&mut first_body, half)).await;
    gate.reached().await;

    // Upstream is held at half: whatever the joiner gets now came from disk.
    let late = within(send(Method::GET, &url, &[])).await;
    assert_eq!(
        late.headers()["content-length"],
        data.len().to_string().as_str()
    );
    let mut late_body = late.into_body();
    let late_bytes = within(read_at_least(&mut late_body, half)).await;
    assert_eq!(&late_bytes[..half], &data[..half]);
    assert_eq!(
        up.body_bytes(),
        half as u64,
        "the joiner's bytes did not come from upstream"
    );

    gate.open();
    let late_rest = within(late_body.collect()).await.unwrap().to_bytes();
    let first_rest = within(first_body.collect()).await.unwrap().to_bytes();
    let mut late_all = late_bytes;
    late_all.extend_from_slice(&late_rest);
    first_bytes.extend_from_slice(&first_rest);
    assert_eq!(sha256(&late_all), digest);
    assert_eq!(sha256(&first_bytes), digest);
    assert_eq!(up.blob_gets(&digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_delays_neither_the_fetch_nor_other_clients() {
    let up = FakeRegistry::start().await;
    // Larger than the socket buffers, so the stalled client really stalls.
    let data = blob_bytes(32 * MIB, 4);
    let digest = up.add_blob(data.clone());
    let ferry = Ferry::start(&up.url()).await;

    let mut stalled = tokio::net::TcpStream::connect(ferry.addr).await.unwrap();
    let req = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", blob_path(&digest));
    stalled.write_all(req.as_bytes()).await.unwrap();

    let other = within(get(&ferry.url(&blob_path(&digest)))).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(sha256(&other.body), digest);
    ferry.settle().await;
    assert!(
        ferry.has_blob(&digest),
        "the fetch finished while a client read nothing"
    );
    assert_eq!(up.blob_gets(&digest), 1);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_does_not_stop_the_fetch() {
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let data = blob_bytes(4 * MIB, 5);
    let digest = up.add_blob_with(data.clone(), Fault::PauseAt(MIB as u64, gate.clone()));
    let ferry = Ferry::start(&up.url()).await;

    let resp = within(send(Method::GET, &ferry.url(&blob_path(&digest)), &[])).await;
    let mut body = resp.into_body();
    within(read_at_least(&mut body, 1)).await;
    drop(body); // the only client goes away mid-blob
    gate.reached().await;
    gate.open();
    ferry.settle().await;
    assert!(ferry.has_blob(&digest));

    let again = within(get(&ferry.url(&blob_path(&digest)))).await;
    assert_eq!(sha256(&again.body), digest);
    assert_eq!(
        up.blob_gets(&digest),
        1,
        "the second request was a cache hit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_upstream_bytes_are_never_published() {
    let up = FakeRegistry::start().await;
    let data = blob_bytes(3 * MIB, 6);
    let digest = up.add_blob_with(data.clone(), Fault::WrongBytes);
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url(&blob_path(&digest));

    let a = within(send(Method::GET, &url, &[]));
    let b = within(send(Method::GET, &url, &[]));
    let (a, b) = tokio::join!(a, b);
    for resp in [a, b] {
        let w = within(read_whole(resp)).await;
        if w.status == StatusCode::OK {
            assert!(
                w.body_error.is_some(),
                "a corrupt blob must end in an error, got a clean end"
            );
        } else {
            // The digest failed before any byte reached this client: the
            // fetch's failure is its answer.
            assert_eq!(w.status, StatusCode::BAD_GATEWAY);
            assert_eq!(w.error_code(), "DIGEST_INVALID");
        }
    }
    ferry.settle().await;
    assert!(!ferry.has_blob(&digest));
    assert_eq!(
        std::fs::read_dir(ferry.store_root().join("tmp"))
            .unwrap()
            .count(),
        0,
        "temp file left"
    );

    // Fixed upstream: the next request fetches again and succeeds.
    up.set_fault(&digest, Fault::None);
    let fixed = within(get(&url)).await;
    assert_eq!(sha256(&fixed.body), digest);
    assert!(up.blob_gets(&digest) >= 2);
    ferry.settle().await;
    assert!(ferry.has_blob(&digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upstream_transfer_aborts_readers_and_publishes_nothing() {
    let up = FakeRegistry::start().await;
    let data = blob_bytes(4 * MIB, 7);
    let digest = up.add_blob_with(data.clone(), Fault::DropAfter(MIB as u64 + 123));
    let ferry = Ferry::start(&up.url()).await;

    let w = within(get(&ferry.url(&blob_path(&digest)))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert!(
        w.body_error.is_some(),
        "truncated body ended cleanly after {} bytes",
        w.body.len()
    );
    assert!(w.body.len() < data.len());
    ferry.settle().await;
    assert!(!ferry.has_blob(&digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_and_head_on_cached_and_in_flight_blobs() {
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let data = blob_bytes(4 * MIB, 8);
    let size = data.len();
    let digest = up.add_blob_with(data.clone(), Fault::PauseAt(MIB as u64, gate.clone()));
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url(&blob_path(&digest));

    // HEAD of a blob that is not cached asks upstream with HEAD only.
    let h = within(request(Method::HEAD, &url, &[])).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.header("content-length"), Some(size.to_string().as_str()));
    assert_eq!(h.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(up.hits("HEAD", &blob_path(&digest)), 1);
    assert_eq!(up.blob_gets(&digest), 0, "HEAD must not start a download");

    // A range on a blob that is not cached starts the fetch and is served
    // from the file as soon as those bytes are there (upstream held at 1 MiB).
    let early = within(request(Method::GET, &url, &[("range", "bytes=100-199")])).await;
    assert_eq!(early.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        early.header("content-range"),
        Some(format!("bytes 100-199/{size}").as_str())
    );
    assert_eq!(&early.body[..], &data[100..200]);

    // A range past the held offset waits for the download.
    let tail_url = url.clone();
    let tail =
        tokio::spawn(
            async move { request(Method::GET, &tail_url, &[("range", "bytes=-1000")]).await },
        );
    gate.reached().await;
    let d: ferry::oci::Digest = digest.parse().unwrap();
    within(async {
        // Wait until the tail request follows the fetch.
        while ferry
            .app
            .coordinator
            .flight(&d)
            .is_none_or(|f| f.readers() == 0)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    gate.open();
    let tail = within(tail).await.unwrap();
    assert_eq!(tail.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&tail.body[..], &data[size - 1000..]);
    ferry.settle().await;
    assert_eq!(up.blob_gets(&digest), 1);

    // Cached: Range, HEAD, 416.
    let mid = within(request(
        Method::GET,
        &url,
        &[("range", "bytes=1048570-1048579")],
    ))
    .await;
    assert_eq!(mid.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&mid.body[..], &data[1048570..1048580]);
    assert_eq!(mid.header("content-length"), Some("10"));
    let open_ended = within(request(
        Method::GET,
        &url,
        &[("range", &format!("bytes={}-", size - 5))],
    ))
    .await;
    assert_eq!(&open_ended.body[..], &data[size - 5..]);
    let h = within(request(Method::HEAD, &url, &[])).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.header("content-length"), Some(size.to_string().as_str()));
    assert!(h.body.is_empty());
    let bad = within(request(
        Method::GET,
        &url,
        &[("range", &format!("bytes={size}-"))],
    ))
    .await;
    assert_eq!(bad.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        bad.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );
    let whole = within(get(&url)).await;
    assert_eq!(whole.body, data);
    assert_eq!(up.blob_gets(&digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_blob_is_404_and_unreachable_upstream_is_503_without_hanging() {
    let up = FakeRegistry::start().await;
    let ferry = Ferry::start(&up.url()).await;
    let missing = sha256(b"not there");
    let w = within(get(&ferry.url(&blob_path(&missing)))).await;
    assert_eq!(w.status, StatusCode::NOT_FOUND);
    assert_eq!(w.error_code(), "BLOB_UNKNOWN");

    // A cached blob survives the upstream going away; an uncached one is a
    // clear 503.
    let data = blob_bytes(100_000, 9);
    let digest = up.add_blob(data.clone());
    assert_eq!(
        sha256(&within(get(&ferry.url(&blob_path(&digest)))).await.body),
        digest
    );
    ferry.settle().await;
    up.stop().await;
    let cached = within(get(&ferry.url(&blob_path(&digest)))).await;
    assert_eq!(sha256(&cached.body), digest);
    let other = sha256(b"other");
    let w = within(get(&ferry.url(&blob_path(&other)))).await;
    assert_eq!(w.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", w.body);
    assert_eq!(w.error_code(), "UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_bearer_tokens_are_fetched_once_and_reused() {
    let up = FakeRegistry::start().await;
    up.require_bearer("anon-123");
    let data = blob_bytes(300_000, 10);
    let digest = up.add_blob(data.clone());
    let other = up.add_blob(blob_bytes(1000, 11));
    let ferry = Ferry::start(&up.url()).await;

    let w = within(get(&ferry.url(&blob_path(&digest)))).await;
    assert_eq!(w.status, StatusCode::OK, "{:?}", w.body);
    assert_eq!(sha256(&w.body), digest);
    let h = within(request(Method::HEAD, &ferry.url(&blob_path(&other)), &[])).await;
    assert_eq!(h.status, StatusCode::OK);
    let w = within(get(&ferry.url(&blob_path(&other)))).await;
    assert_eq!(sha256(&w.body), other);
    assert_eq!(
        up.hits("GET", "/token"),
        1,
        "one token for the repository, reused"
    );
    // Each request without a token was challenged once, the rest carried it.
    assert_eq!(up.blob_gets(&digest), 2);
    assert_eq!(up.blob_gets(&other), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_a_blob_in_flight_asserts_no_digest_it_has_not_checked() {
    let up = FakeRegistry::start().await;
    // An upstream that sends another blob's bytes, slowly: it pauses after
    // 1 MiB until the test lets it go on.
    let gate = Gate::new();
    let wrong = blob_bytes(2 * MIB, 30);
    let digest = sha256(&blob_bytes(2 * MIB, 31));
    up.add_blob_as(
        &digest,
        wrong.clone(),
        Fault::PauseAt(MIB as u64, gate.clone()),
    );
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url(&blob_path(&digest));

    // Default: served as it arrives (as a ranged pull from the upstream
    // would be), without a Docker-Content-Digest that claims a check.
    let w = within(request(Method::GET, &url, &[("range", "bytes=0-65535")])).await;
    gate.reached().await;
    assert_eq!(w.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(w.body, wrong.slice(..65536));
    assert_eq!(
        w.header("docker-content-digest"),
        None,
        "a digest header on bytes nobody checked"
    );
    gate.open();
    ferry.settle().await;
    assert!(!ferry.has_blob(&digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_verified_ranges_a_range_of_a_lying_blob_ends_in_an_error() {
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let wrong = blob_bytes(2 * MIB, 32);
    let digest = sha256(&blob_bytes(2 * MIB, 33));
    up.add_blob_as(&digest, wrong, Fault::PauseAt(MIB as u64, gate.clone()));
    let ferry = Ferry::start_with(&up.url(), |c| c.verified_ranges = true).await;
    let url = ferry.url(&blob_path(&digest));

    let resp = within(send(Method::GET, &url, &[("range", "bytes=0-65535")])).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    gate.reached().await;
    gate.open();
    let w = within(read_whole(resp)).await;
    assert!(
        w.body_error.is_some(),
        "a range of bytes that failed their digest ended cleanly"
    );

    // A blob that verifies: the same range completes (once verified).
    let good = blob_bytes(2 * MIB, 34);
    let d = up.add_blob(good.clone());
    let w = within(request(
        Method::GET,
        &ferry.url(&blob_path(&d)),
        &[("range", "bytes=100-199")],
    ))
    .await;
    assert_eq!(w.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(w.body_error, None);
    assert_eq!(w.body, good.slice(100..200));
    assert_eq!(w.header("docker-content-digest"), Some(d.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_range_with_another_validator_and_several_ranges_get_the_whole_blob() {
    let up = FakeRegistry::start().await;
    let data = blob_bytes(100_000, 35);
    let digest = up.add_blob(data.clone());
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url(&blob_path(&digest));
    within(get(&url)).await;
    ferry.settle().await;

    let tag = format!("\"{digest}\"");
    let w = within(request(
        Method::GET,
        &url,
        &[("range", "bytes=0-9"), ("if-range", &tag)],
    ))
    .await;
    assert_eq!(w.status, StatusCode::PARTIAL_CONTENT, "the blob's own tag");
    assert_eq!(w.body, data.slice(..10));
    assert_eq!(w.header("etag"), Some(tag.as_str()));

    let stale = format!("\"{}\"", sha256(b"an older blob"));
    for validator in [stale.as_str(), "Wed, 21 Oct 2015 07:28:00 GMT"] {
        let w = within(request(
            Method::GET,
            &url,
            &[("range", "bytes=0-9"), ("if-range", validator)],
        ))
        .await;
        assert_eq!(w.status, StatusCode::OK, "If-Range {validator}");
        assert_eq!(w.body, data);
    }
    let w = within(request(
        Method::GET,
        &url,
        &[("range", "bytes=0-9"), ("range", "bytes=20-29")],
    ))
    .await;
    assert_eq!(w.status, StatusCode::OK, "two Range headers are ignored");
    assert_eq!(w.body, data);
}
