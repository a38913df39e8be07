//! Several upstreams in one ferry: zot-style prefix routing (the seed
//! config), containerd's `ns=`, path style, failover across URLs,
//! fall-through on 404/401, retries, resume of broken transfers, upstreams
//! that ignore Range or stall, redirects, and far ranges passed through.

use crate::support;

use std::time::Duration;

use http::{Method, StatusCode};
use support::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn manifest(n: u8) -> bytes::Bytes {
    bytes::Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{n}}},"layers":[]}}"#,
        sha256(&[n])
    ))
}

/// The seed config's shape (tests/fixtures/seed-config.json) with the
/// three registries replaced by local fakes, and fast retries.
fn seed_like(urls: [&str; 3]) -> String {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/seed-config.json")).unwrap();
    let mut v = fixture.clone();
    let regs = v["extensions"]["sync"]["registries"]
        .as_array_mut()
        .unwrap();
    for (r, url) in regs.iter_mut().zip(urls) {
        r["urls"] = serde_json::json!([url]);
        r["retryDelay"] = serde_json::json!("5ms");
        r["maxRetryDelay"] = serde_json::json!("20ms");
    }
    v.to_string()
}

fn fast_retries(url_lists: &[&[&str]]) -> String {
    let regs: Vec<serde_json::Value> = url_lists
        .iter()
        .map(|urls| serde_json::json!({"urls": urls, "retryDelay": "5ms", "maxRetryDelay": "20ms", "maxRetries": 3}))
        .collect();
    serde_json::json!({"extensions": {"sync": {"enable": true, "registries": regs}}}).to_string()
}

/// A URL nothing listens on: port 1 needs root to bind and is never used
/// (a port freed by a test could be reused by a parallel test).
async fn dead_url() -> String {
    "http://127.0.0.1:1".to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_config_prefix_routing_fall_through_and_memory() {
    let (gcr, k8s, reg) = (
        FakeRegistry::start().await,
        FakeRegistry::start().await,
        FakeRegistry::start().await,
    );
    let ferry = Ferry::start_json(&seed_like([&gcr.url(), &k8s.url(), &reg.url()]), |_| {}).await;

    // lank8s/<repo> goes to the registry whose content prefix is /lank8s.
    let m = manifest(1);
    let d = gcr.add_manifest("lank8s/pause", Some("3.9"), OCI_MANIFEST, m.clone());
    let w = within(get(&ferry.url("/v2/lank8s/pause/manifests/3.9"))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(w.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(
        k8s.total_hits() + reg.total_hits(),
        0,
        "only the /lank8s registry was asked"
    );

    // Other repositories: not the /lank8s registry; k8s answers 404, so the
    // next one in config order serves it.
    let m2 = manifest(2);
    let blob = blob_bytes(50_000, 30);
    let bd = reg.add_blob(blob.clone());
    reg.add_manifest("coredns/coredns", Some("v1"), OCI_MANIFEST, m2.clone());
    let w = within(get(&ferry.url("/v2/coredns/coredns/manifests/v1"))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(w.body, m2);
    assert_eq!(k8s.hits("GET", "/v2/coredns/coredns/manifests/v1"), 1);
    let gcr_before = gcr.total_hits();

    // The choice is remembered for the repository's blobs.
    let b = within(get(&ferry.url(&format!("/v2/coredns/coredns/blobs/{bd}")))).await;
    assert_eq!(sha256(&b.body), bd);
    assert_eq!(
        k8s.blob_gets(&bd),
        0,
        "blob went straight to the registry that served the manifest"
    );
    assert_eq!(gcr.total_hits(), gcr_before);

    // A 401 (anonymous, no challenge) passes to the next registry too.
    k8s.fail_next(1, StatusCode::UNAUTHORIZED, None);
    reg.add_manifest("private/app", Some("v2"), OCI_MANIFEST, manifest(3));
    let w = within(get(&ferry.url("/v2/private/app/manifests/v2"))).await;
    assert_eq!(w.status, StatusCode::OK);

    // Nobody has it: 404 MANIFEST_UNKNOWN.
    let w = within(get(&ferry.url("/v2/nobody/has/manifests/v1"))).await;
    assert_eq!(w.status, StatusCode::NOT_FOUND);
    assert_eq!(w.error_code(), "MANIFEST_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_parameter_and_path_style_select_a_registry() {
    let (a, b) = (FakeRegistry::start().await, FakeRegistry::start().await);
    let ferry = Ferry::start_json(&fast_retries(&[&[&a.url()], &[&b.url()]]), |_| {}).await;
    let mb = manifest(4);
    b.add_manifest("team/app", Some("v1"), OCI_MANIFEST, mb.clone());
    a.add_manifest("team/app", Some("v1"), OCI_MANIFEST, manifest(5));

    let ns = b.addr.to_string().replace(':', "%3A");
    let w = within(get(
        &ferry.url(&format!("/v2/team/app/manifests/v1?ns={ns}"))
    ))
    .await;
    assert_eq!(w.body, mb, "ns= chose the second registry");
    assert_eq!(a.total_hits(), 0);

    let w = within(get(
        &ferry.url(&format!("/v2/{}/team/app/manifests/v1", b.addr))
    ))
    .await;
    assert_eq!(w.body, mb, "path style chose the second registry");
    assert_eq!(a.total_hits(), 0);

    // An ns that names no configured registry: refused, nothing fetched.
    let w = within(get(
        &ferry.url("/v2/team/app/manifests/v1?ns=evil.example.com")
    ))
    .await;
    assert_eq!(w.status, StatusCode::NOT_FOUND);
    assert_eq!(w.error_code(), "NAME_UNKNOWN");
    assert_eq!(a.total_hits(), 0);
    assert_eq!(
        b.hits("GET", "/v2/team/app/manifests/v1"),
        1,
        "path style hit the stored tag"
    );

    // Tags are kept per registry: both upstreams go down, each ns still
    // gets its own registry's tag.
    let w = within(get(&ferry.url("/v2/team/app/manifests/v1"))).await;
    assert_eq!(w.status, StatusCode::OK);
    a.stop().await;
    b.stop().await;
    ferry.advance(Duration::from_secs(301)); // past the tag TTL
    let w = within(get(
        &ferry.url(&format!("/v2/team/app/manifests/v1?ns={ns}"))
    ))
    .await;
    assert_eq!(w.body, mb);
    assert!(w.header("warning").is_some());
}

/// containerd names Docker Hub `docker.io` in `ns=` even when ferry's
/// upstream for it is a mirror (mirror.gcr.io, a company's proxy): with
/// `mirrorOf` that registry answers to Docker Hub's names and gets
/// Docker Hub's `library/` rule. Found by containerd in
/// tests/e2e/runtimes.sh: without it, `ns=docker.io` was a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_of_docker_hub_answers_to_docker_hubs_names() {
    let (other, hub) = (FakeRegistry::start().await, FakeRegistry::start().await);
    let config = serde_json::json!({"extensions": {"sync": {"enable": true, "registries": [
        {"urls": [other.url()], "content": [{"prefix": "**", "destination": "/local"}]},
        {"urls": [hub.url()], "mirrorOf": "docker.io"}
    ]}}});
    let ferry = Ferry::start_json(&config.to_string(), |_| {}).await;
    let m = manifest(6);
    hub.add_manifest("library/alpine", Some("3"), OCI_MANIFEST, m.clone());

    for path in [
        "/v2/library/alpine/manifests/3?ns=docker.io",
        "/v2/library/alpine/manifests/3?ns=registry-1.docker.io",
        "/v2/docker.io/library/alpine/manifests/3",
        "/v2/docker.io/alpine/manifests/3",
        "/v2/alpine/manifests/3",
    ] {
        let w = within(get(&ferry.url(path))).await;
        assert_eq!(w.status, StatusCode::OK, "{path}");
        assert_eq!(w.body, m, "{path}");
    }
    assert_eq!(other.total_hits(), 0, "the other registry was never asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_across_urls_and_retry_of_5xx() {
    let up = FakeRegistry::start().await;
    let data = blob_bytes(100_000, 31);
    let d = up.add_blob(data.clone());
    let dead = dead_url().await;
    let ferry = Ferry::start_json(&fast_retries(&[&[&dead, &up.url()]]), |_| {}).await;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await;
    assert_eq!(sha256(&w.body), d, "the second URL served it");

    // Two 503s, then the blob: retried with backoff, the client sees 200.
    let d2 = up.add_blob(blob_bytes(1000, 32));
    up.fail_next(2, StatusCode::SERVICE_UNAVAILABLE, None);
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{d2}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), d2);

    // A 404 is never retried.
    let before = up.total_hits();
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{}", sha256(b"none"))))).await;
    assert_eq!(w.status, StatusCode::NOT_FOUND);
    assert_eq!(up.total_hits() - before, 1);

    // 429 with a Retry-After the client cannot wait for: no retry, 429
    // with the upstream's Retry-After. (Last: the registry then cools
    // down; see tests/integration/hostile_upstreams.rs for the budget.)
    up.fail_next(1, StatusCode::TOO_MANY_REQUESTS, Some(3600));
    let d3 = up.add_blob(blob_bytes(1000, 33));
    let before = up.total_hits();
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{d3}")))).await;
    assert_eq!(w.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(w.error_code(), "TOOMANYREQUESTS");
    assert_eq!(w.header("retry-after"), Some("3600"));
    assert_eq!(
        up.total_hits() - before,
        1,
        "no retry against Retry-After: 3600"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_broken_at_twenty_offsets_resume_to_a_whole_blob() {
    let up = FakeRegistry::start().await;
    let size = 8 << 20;
    let data = blob_bytes(size, 34);
    let offsets: Vec<u64> = (1..=20).map(|i| (i * size / 21) as u64 + 777).collect();
    let d = up.add_blob_with(data.clone(), Fault::drop_at_each(offsets));
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url(&format!("/v2/x/blobs/{d}"));
    let clients = (0..3).map(|_| get(&url));
    for w in within(futures::future::join_all(clients)).await {
        assert_eq!(w.status, StatusCode::OK);
        assert_eq!(w.body_error, None, "readers see a pause, not an error");
        assert_eq!(sha256(&w.body), d);
    }
    ferry.settle().await;
    assert!(ferry.has_blob(&d));
    assert_eq!(
        up.blob_gets(&d),
        21,
        "one request plus one resume per break"
    );
    let ratio = up.body_bytes() as f64 / size as f64;
    eprintln!("20 breaks: upstream bytes / blob size = {ratio:.3}");
    assert!(ratio < 1.1, "upstream sent {ratio:.3} x the blob");
    assert!(
        up.ranges().iter().all(|r| r.starts_with("bytes=")),
        "{:?}",
        up.ranges()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_ignores_range_is_restarted_and_skipped() {
    let up = FakeRegistry::start().await;
    let size = 3 << 20;
    let data = blob_bytes(size, 35);
    let d = up.add_blob_with(data.clone(), Fault::drop_at_each(vec![1 << 20]));
    up.set_ignore_range(&d);
    let ferry = Ferry::start(&up.url()).await;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await;
    assert_eq!(w.body_error, None);
    assert_eq!(sha256(&w.body), d);
    assert_eq!(up.blob_gets(&d), 2);
    assert_eq!(up.ranges().len(), 1, "the resume asked for a range");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_counts_as_broken_and_is_resumed() {
    let up = FakeRegistry::start().await;
    let data = blob_bytes(2 << 20, 36);
    let d = up.add_blob_with(data.clone(), Fault::stall_once(1 << 20));
    let ferry = Ferry::start_with(&up.url(), |c| {
        c.timeouts.idle_read = Duration::from_millis(300)
    })
    .await;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await;
    assert_eq!(w.body_error, None);
    assert_eq!(sha256(&w.body), d);
    assert_eq!(up.ranges(), vec![format!("bytes={}-", 1 << 20)]);
}

/// A far range is passed through, not stored, so the transfer's idle
/// timeout never watched it: a stalled upstream held the client forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_far_range_ends_in_an_error_after_the_idle_timeout() {
    let up = FakeRegistry::start().await;
    let size = 2 << 20;
    let data = blob_bytes(size, 39);
    // The footer's request sends 2 KiB and hangs; the whole-blob download
    // (from 0) is not touched.
    let d = up.add_blob_with(data.clone(), Fault::StallRangesFrom(1 << 20));
    let ferry = Ferry::start_with(&up.url(), |c| {
        c.far_range_distance = 1 << 20;
        c.timeouts.idle_read = Duration::from_millis(300);
    })
    .await;
    let url = ferry.url(&format!("/v2/x/blobs/{d}"));
    let footer = within(request(
        Method::GET,
        &url,
        &[("range", &format!("bytes={}-", size - 4096))],
    ))
    .await;
    assert_eq!(footer.status, StatusCode::PARTIAL_CONTENT);
    assert!(
        footer.body.len() == 2048 && footer.body[..] == data[size - 4096..size - 2048],
        "the range got {} bytes before it stopped",
        footer.body.len()
    );
    assert!(
        footer.body_error.is_some(),
        "the stalled range ended cleanly"
    );
    // The whole-blob download was not held up by it.
    ferry.settle().await;
    assert!(ferry.has_blob(&d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_never_carry_the_registry_token_to_another_host() {
    let registry = FakeRegistry::start().await;
    let cdn = FakeRegistry::start().await;
    registry.require_bearer("secret-token");
    registry.redirect_blobs_to(&cdn.url());
    let data = blob_bytes(200_000, 37);
    let d = cdn.add_blob(data.clone());
    let ferry = Ferry::start(&registry.url()).await;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), d);
    assert!(
        registry
            .authorizations()
            .iter()
            .any(|a| a == "Bearer secret-token"),
        "the registry got its token"
    );
    assert!(!cdn.authorizations().is_empty());
    assert!(
        cdn.authorizations().iter().all(|a| a.is_empty()),
        "the CDN host got an Authorization header: {:?}",
        cdn.authorizations()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_range_is_passed_through_while_the_download_goes_on() {
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let size = 6 << 20;
    let data = blob_bytes(size, 38);
    let d = up.add_blob_with(data.clone(), Fault::PauseAt(1 << 20, gate.clone()));
    let ferry = Ferry::start_with(&up.url(), |c| c.far_range_distance = 1 << 20).await;
    let url = ferry.url(&format!("/v2/x/blobs/{d}"));

    // The footer, while the main download is held at 1 MiB.
    let footer = within(request(
        Method::GET,
        &url,
        &[("range", &format!("bytes={}-", size - 4096))],
    ))
    .await;
    assert_eq!(footer.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&footer.body[..], &data[size - 4096..]);
    assert_eq!(
        footer.header("content-range"),
        Some(format!("bytes {}-{}/{size}", size - 4096, size - 1).as_str())
    );
    assert!(!ferry.has_blob(&d));

    // A near range waits for the main download (which was started once).
    let near = tokio::spawn({
        let url = url.clone();
        async move { request(Method::GET, &url, &[("range", "bytes=1048576-1048675")]).await }
    });
    gate.reached().await;
    gate.open();
    let near = within(near).await.unwrap();
    assert_eq!(&near.body[..], &data[1048576..1048676]);
    ferry.settle().await;
    assert!(ferry.has_blob(&d));
    assert_eq!(
        up.blob_gets(&d),
        2,
        "one main download plus one passthrough range"
    );
    // Both are counted as upstream bytes: the passed-through footer too
    // (tests/e2e/runtimes.sh's stargz figure missed it before).
    assert_eq!(ferry.upstream_bytes(), size as u64 + 4096);
    let whole = within(get(&url)).await;
    assert_eq!(sha256(&whole.body), d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_resume_of_most_of_a_blob_waits_for_the_download() {
    // A client resuming far ahead of this replica's download (its replica
    // died mid-pull, the balancer sent it here): the rest is longer than
    // farRangeDistance, so it follows the one download instead of fetching
    // the rest of the blob a second time.
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let size = 8 << 20;
    let data = blob_bytes(size, 39);
    let d = up.add_blob_with(data.clone(), Fault::PauseAt(1 << 20, gate.clone()));
    let ferry = Ferry::start_with(&up.url(), |c| c.far_range_distance = 1 << 20).await;
    let url = ferry.url(&format!("/v2/x/blobs/{d}"));
    let first = tokio::spawn({
        let url = url.clone();
        async move { get(&url).await }
    });
    gate.reached().await;
    let from = 4 << 20;
    let resume = tokio::spawn({
        let url = url.clone();
        async move { request(Method::GET, &url, &[("range", &format!("bytes={from}-"))]).await }
    });
    // It waits on the download held at 1 MiB: nothing else reached the
    // upstream meanwhile.
    until(|| {
        ferry
            .app
            .coordinator
            .flight(&d.parse().unwrap())
            .is_some_and(|f| f.readers() >= 2)
    })
    .await;
    assert_eq!(up.blob_gets(&d), 1);
    gate.open();
    let resume = within(resume).await.unwrap();
    assert_eq!(resume.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&resume.body[..], &data[from..]);
    assert_eq!(sha256(&within(first).await.unwrap().body), d);
    assert_eq!(up.blob_gets(&d), 1, "the rest was not fetched twice");
    assert_eq!(ferry.upstream_bytes(), size as u64);
}
