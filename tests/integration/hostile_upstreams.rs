//! Hostile upstreams, written byte by byte by [`RawUpstream`]: bodies
//! longer and shorter than announced, bodies without end, a 100 MiB
//! manifest, a redirect loop and a one-byte drip. In every case ferry
//! publishes nothing wrong, ends the client's response instead of hanging
//! it, and bounds what it reads.
//!
//! The other hostile-upstream cases live beside the feature they guard:
//! wrong bytes (`blobs.rs`, `wrong_upstream_bytes_are_never_published`), a
//! transfer that breaks off (`blobs.rs`), a token realm on a foreign host
//! (`auth.rs`), redirects that would carry the token elsewhere
//! (`routing.rs`), wrong manifest bytes for a digest (`manifests.rs`).

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use ferry::config::Config;
use http::StatusCode;
use support::raw_upstream::{endless_tags, RawBody, RawReply, RawUpstream};
use support::*;

const MIB: usize = 1024 * 1024;

/// Short timeouts and one retry: these upstreams never get better, and the
/// tests are about what ferry does, not how long it waits.
fn impatient(cfg: &mut Config) {
    cfg.timeouts.idle_read = Duration::from_secs(1);
    for r in &mut cfg.registries {
        r.retry.max_retries = 1;
    }
}

fn blob_reply(len: usize, body: RawBody) -> RawReply {
    RawReply::new(
        "200 OK",
        &[
            ("Content-Length", len.to_string()),
            ("Content-Type", "application/octet-stream".into()),
        ],
        body,
    )
}

/// Nothing for `digest` at its final path and no temp file left.
async fn assert_nothing_published(ferry: &Ferry, digest: &str) {
    ferry.settle().await;
    assert!(!ferry.has_blob(digest), "a bad blob was published");
    let temps = std::fs::read_dir(ferry.store_root().join("tmp"))
        .unwrap()
        .count();
    assert_eq!(temps, 0, "temp file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_longer_than_its_content_length_is_read_only_to_the_length() {
    // The first `len` bytes are the blob; 1 MiB of garbage follows.
    let data = blob_bytes(3 * MIB, 700);
    let digest = sha256(&data);
    let mut sent = data.to_vec();
    sent.extend_from_slice(&blob_bytes(MIB, 701));
    let (len, sent) = (data.len(), Bytes::from(sent));
    let up = RawUpstream::start(move |_| blob_reply(len, RawBody::Bytes(sent.clone()))).await;
    let ferry = Ferry::start_with(&up.url(), impatient).await;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{digest}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(w.body.len(), len);
    assert_eq!(sha256(&w.body), digest);
    ferry.settle().await;
    assert!(ferry.has_blob(&digest));

    // Announcing less than the blob: what arrives hashes wrong.
    let other = blob_bytes(2 * MIB, 702);
    let short = sha256(&other);
    let up = RawUpstream::start(move |_| blob_reply(MIB, RawBody::Bytes(other.clone()))).await;
    let ferry = Ferry::start_with(&up.url(), impatient).await;
    // The whole announced MiB may arrive, and fail its digest check,
    // before the client's body is first polled: the connection then ends
    // before the response head, which is as much a refusal as a cut body.
    let w = within(try_get(&ferry.url(&format!("/v2/x/blobs/{short}")))).await;
    match w {
        Ok(w) => assert!(
            w.status != StatusCode::OK || w.body_error.is_some(),
            "a truncated blob was served as complete"
        ),
        // Only a connection ended before the head; ferry still serves.
        Err(e) => {
            assert!(e.contains("SendRequest"), "{e}");
            let health = within(get(&ferry.url("/healthz"))).await;
            assert_eq!(health.status, StatusCode::OK);
        }
    }
    assert_nothing_published(&ferry, &short).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_shorter_than_its_content_length_ends_the_response_in_an_error() {
    let data = blob_bytes(2 * MIB, 703);
    let digest = sha256(&data);
    let claimed = data.len() + 1000;
    // Closes early: a broken transfer, resumed once, then given up.
    let d = data.clone();
    let up = RawUpstream::start(move |_| blob_reply(claimed, RawBody::Bytes(d.clone()))).await;
    let ferry = Ferry::start_with(&up.url(), impatient).await;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{digest}")))).await;
    assert!(w.status != StatusCode::OK || w.body_error.is_some());
    assert!(w.body.len() <= data.len());
    assert_nothing_published(&ferry, &digest).await;
    assert!(up.requests() <= 2, "{} upstream requests", up.requests());

    // Stays open and silent instead: the idle timeout ends it.
    let up =
        RawUpstream::start(move |_| blob_reply(claimed, RawBody::ThenHang(data.clone()))).await;
    let ferry = Ferry::start_with(&up.url(), impatient).await;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{digest}")))).await;
    assert!(w.status != StatusCode::OK || w.body_error.is_some());
    assert_nothing_published(&ferry, &digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_is_cut_at_max_blob_size() {
    // No Content-Length, no end: close-delimited bytes forever.
    let up = RawUpstream::start(|_| {
        RawReply::new(
            "200 OK",
            &[("Content-Type", "application/octet-stream".into())],
            RawBody::Endless,
        )
    })
    .await;
    let ferry = Ferry::start_with(&up.url(), |cfg| {
        impatient(cfg);
        cfg.max_blob_size = 8 * MIB as u64;
    })
    .await;
    let digest = sha256(b"whatever the upstream claims this is");
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{digest}")))).await;
    assert!(w.status != StatusCode::OK || w.body_error.is_some());
    assert!(w.body.len() <= 8 * MIB, "served {} bytes", w.body.len());
    assert_nothing_published(&ferry, &digest).await;
    let failures = ferry.app.metrics.encode();
    assert_eq!(
        fetch_failures_in(&failures, "blob", "length_mismatch"),
        1,
        "{failures}"
    );
    // What the upstream managed to push before ferry hung up: the limit
    // plus what the socket buffers hold.
    let sent = up.body_bytes_sent();
    eprintln!("endless body: upstream wrote {sent} bytes before ferry closed");
    assert!(sent < 24 * MIB as u64, "ferry read {sent} bytes");

    // Announcing more than maxBlobSize is refused before any body byte.
    let up = RawUpstream::start(|_| blob_reply(64 * MIB, RawBody::Endless)).await;
    let ferry = Ferry::start_with(&up.url(), |cfg| cfg.max_blob_size = 8 * MIB as u64).await;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{digest}")))).await;
    assert_eq!(w.status, StatusCode::BAD_GATEWAY);
    assert_nothing_published(&ferry, &digest).await;
    assert_eq!(ferry.upstream_bytes(), 0, "body bytes were read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_byte_drip_is_given_up_instead_of_holding_the_client_forever() {
    let data = blob_bytes(64 * 1024, 704);
    let digest = sha256(&data);
    let up = RawUpstream::start(move |_| {
        blob_reply(
            data.len(),
            RawBody::Drip {
                bytes: data.clone(),
                every: Duration::from_millis(100),
            },
        )
    })
    .await;
    // 10 bytes/s against a floor of 1 KiB/s over each 1 s window.
    let ferry = Ferry::start_with(&up.url(), impatient).await;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{digest}")))).await;
    assert!(w.status != StatusCode::OK || w.body_error.is_some());
    assert_nothing_published(&ferry, &digest).await;
    assert!(
        up.requests() <= 2,
        "a drip earned {} attempts",
        up.requests()
    );
    assert!(up.body_bytes_sent() < 100, "{} bytes", up.body_bytes_sent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drip_fed_far_range_is_given_up_at_the_rate_floor() {
    // The whole-blob download stalls after 64 KiB, so a range near the end
    // is far and goes to the upstream on its own; that range comes a byte
    // every 100 ms: never idle for `idleReadTimeout`, but 10 bytes/s
    // against a floor of 1 KiB/s.
    let size = 2 * MIB;
    let data = blob_bytes(size, 705);
    let digest = sha256(&data);
    let start = size - 4096;
    let (d, ranges) = (
        data.clone(),
        std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    );
    let seen = ranges.clone();
    let up = RawUpstream::start(move |req| {
        if !req
            .head
            .to_ascii_lowercase()
            .contains(&format!("range: bytes={start}-"))
        {
            return blob_reply(size, RawBody::ThenHang(d.slice(..64 * 1024)));
        }
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        RawReply::new(
            "206 Partial Content",
            &[
                ("Content-Length", "4096".into()),
                (
                    "Content-Range",
                    format!("bytes {start}-{}/{size}", size - 1),
                ),
            ],
            RawBody::Drip {
                bytes: d.slice(start..),
                every: Duration::from_millis(100),
            },
        )
    })
    .await;
    let ferry = Ferry::start_with(&up.url(), |c| {
        impatient(c);
        c.far_range_distance = MIB as u64;
    })
    .await;
    let range = format!("bytes={start}-");
    let url = ferry.url(&format!("/v2/x/blobs/{digest}"));
    let w = within(request(http::Method::GET, &url, &[("range", &range)])).await;
    assert_eq!(w.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        ranges.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "passed through"
    );
    assert!(w.body_error.is_some(), "the drip ended cleanly");
    assert!(
        w.body.len() < 100,
        "{} bytes came before the floor",
        w.body.len()
    );
    assert_eq!(w.body[..], data[start..start + w.body.len()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_served_uncached_is_cut_at_max_blob_size() {
    // The store has no room, so the client is served straight from upstream.
    // The transfer's request is told 4 MiB (too big for the store); the
    // request that serves the client gets close-delimited bytes forever.
    let first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let up = RawUpstream::start(move |_| {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            blob_reply(4 * MIB, RawBody::Endless)
        } else {
            RawReply::new("200 OK", &[], RawBody::Endless)
        }
    })
    .await;
    let no_room = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ferry = Ferry::start_with_space(&up.url(), no_room, |c| {
        impatient(c);
        c.lifecycle.min_free_space = 0;
        c.max_blob_size = 8 * MIB as u64;
    })
    .await;
    let digest = sha256(b"whatever the upstream claims this is");
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{digest}")))).await;
    assert_eq!(ferry.app.metrics.uncached.get(), 1, "served uncached");
    assert!(w.body_error.is_some(), "an endless body ended cleanly");
    assert!(w.body.len() <= 8 * MIB, "served {} bytes", w.body.len());
    let sent = up.body_bytes_sent();
    assert!(sent < 24 * MIB as u64, "ferry read {sent} bytes");
    assert_nothing_published(&ferry, &digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_manifest_is_refused_after_reading_at_most_the_cap() {
    let manifest = |announce: bool| {
        move |_: &support::raw_upstream::RawRequest| {
            let mut headers = vec![(
                "Content-Type",
                "application/vnd.oci.image.manifest.v1+json".to_string(),
            )];
            if announce {
                headers.push(("Content-Length", (100 * MIB).to_string()));
            }
            RawReply::new("200 OK", &headers, RawBody::Endless)
        }
    };
    for announce in [true, false] {
        let up = RawUpstream::start(manifest(announce)).await;
        let ferry = Ferry::start(&up.url()).await;
        let w = within(get(&ferry.url("/v2/big/manifests/latest"))).await;
        assert_eq!(w.status, StatusCode::BAD_GATEWAY, "announce={announce}");
        assert_eq!(w.error_code(), "SIZE_INVALID");
        let sent = up.body_bytes_sent();
        eprintln!("100 MiB manifest (length announced: {announce}): upstream wrote {sent} bytes into the socket");
        // The 4 MiB cap plus socket buffers, far from 100 MiB; nothing
        // read at all when the length was announced.
        assert!(sent < 16 * MIB as u64, "ferry read {sent} bytes");
        if announce {
            assert_eq!(ferry.upstream_bytes(), 0, "body bytes were read");
        }
        let again = within(get(&ferry.url("/v2/big/manifests/latest"))).await;
        assert_eq!(again.status, StatusCode::BAD_GATEWAY, "nothing was cached");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_loop_is_followed_a_bounded_number_of_times() {
    let up = RawUpstream::start(|r| {
        RawReply::new(
            "307 Temporary Redirect",
            &[("Location", r.path.clone()), ("Content-Length", "0".into())],
            RawBody::Bytes(Bytes::new()),
        )
    })
    .await;
    let ferry = Ferry::start_with(&up.url(), impatient).await;
    let digest = sha256(b"loop");
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{digest}")))).await;
    assert_eq!(w.status, StatusCode::BAD_GATEWAY);
    let limit = ferry::upstream::MAX_REDIRECTS + 1;
    let tries = ferry.app.config.registries[0].retry.max_retries as usize + 1;
    assert!(
        up.requests() <= limit * tries,
        "{} requests for a redirect loop (limit {limit} per try, {tries} tries)",
        up.requests()
    );
    assert_nothing_published(&ferry, &digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_listing_is_refused_before_its_body_is_read() {
    // A tags list announcing 100 MiB (the listing limit is 16 MiB).
    let up = RawUpstream::start(|_| {
        RawReply::new(
            "200 OK",
            &[
                ("Content-Type", "application/json".into()),
                ("Content-Length", (100 * MIB).to_string()),
            ],
            RawBody::Endless,
        )
    })
    .await;
    let ferry = Ferry::start_with(&up.url(), impatient).await;
    let w = within(get(&ferry.url("/v2/x/tags/list"))).await;
    assert_ne!(w.status, StatusCode::OK);
    assert_eq!(ferry.upstream_bytes(), 0, "body bytes were read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_tag_list_is_cut_off_at_its_byte_budget_with_a_502() {
    // 1 MiB pages without end, against the default budget of 16 MiB for
    // the whole list (and far fewer names than the default cap).
    let up = RawUpstream::start(endless_tags(5_000, 200)).await;
    let ferry = Ferry::start_with(&up.url(), impatient).await;
    let w = within(get(&ferry.url("/v2/x/tags/list"))).await;
    let shown = String::from_utf8_lossy(&w.body[..w.body.len().min(300)]).to_string();
    assert_eq!(w.status, StatusCode::BAD_GATEWAY, "{shown}");
    assert_eq!(w.error_code(), "SIZE_INVALID");
    let body = String::from_utf8_lossy(&w.body).to_string();
    assert!(body.contains("maxListSize"), "{body}");
    assert!(
        up.requests() <= 17,
        "{} pages read for a 16 MiB budget",
        up.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_list_with_too_many_names_is_refused_with_a_502() {
    // 60,000 short names a page, against the default cap of 100,000.
    let up = RawUpstream::start(endless_tags(60_000, 4)).await;
    let ferry = Ferry::start_with(&up.url(), impatient).await;
    let w = within(get(&ferry.url("/v2/x/tags/list"))).await;
    let shown = String::from_utf8_lossy(&w.body[..w.body.len().min(300)]).to_string();
    assert_eq!(w.status, StatusCode::BAD_GATEWAY, "{shown}");
    assert_eq!(w.error_code(), "SIZE_INVALID");
    assert!(String::from_utf8_lossy(&w.body).contains("maxListEntries"));
    assert_eq!(up.requests(), 2, "the second page passed the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_list_that_never_ends_is_refused_not_truncated() {
    // One tag per page, each page linking to the next, without end.
    let up = RawUpstream::start(endless_tags(1, 4)).await;
    let ferry = Ferry::start_with(&up.url(), impatient).await;
    let w = within(get(&ferry.url("/v2/x/tags/list"))).await;
    let shown = String::from_utf8_lossy(&w.body[..w.body.len().min(300)]).to_string();
    assert_eq!(w.status, StatusCode::BAD_GATEWAY, "{shown}");
    assert!(shown.contains("more than 50 pages"), "{shown}");
}
