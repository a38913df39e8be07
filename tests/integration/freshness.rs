//! Tags, freshness and offline: TTL (on a manual clock), HEAD-only
//! revalidation, serve-stale, maxStale, shared revalidations, Accept
//! negotiation, multi-platform images, tags list, referrers, catalog and
//! prefetch.

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use support::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const TTL: Duration = Duration::from_secs(300);

fn image_manifest(config: &str, layers: &[(&str, usize)]) -> Bytes {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, s)| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{s}}}"#))
        .collect();
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{}]}}"#,
        layers.join(",")
    ))
}

fn simple(n: u8) -> Bytes {
    image_manifest(&sha256(&[n]), &[])
}

fn get_path(up: &FakeRegistry, repo: &str, tag: &str) -> (usize, usize) {
    let p = format!("/v2/{repo}/manifests/{tag}");
    (up.hits("HEAD", &p), up.hits("GET", &p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_served_from_the_store_within_the_ttl_and_revalidated_with_head_after() {
    let up = FakeRegistry::start().await;
    let v1 = simple(1);
    let d1 = up.add_manifest("app", Some("latest"), OCI_MANIFEST, v1.clone());
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url("/v2/app/manifests/latest");

    assert_eq!(within(get(&url)).await.body, v1);
    assert_eq!(get_path(&up, "app", "latest"), (0, 1));

    // Within the TTL: no upstream call at all.
    ferry.advance(TTL - Duration::from_secs(1));
    for _ in 0..3 {
        let w = within(get(&url)).await;
        assert_eq!(w.header("docker-content-digest"), Some(d1.as_str()));
    }
    assert_eq!(get_path(&up, "app", "latest"), (0, 1));

    // After it, unchanged: one HEAD, no GET (Docker Hub does not count it).
    ferry.advance(Duration::from_secs(2));
    assert_eq!(within(get(&url)).await.body, v1);
    assert_eq!(get_path(&up, "app", "latest"), (1, 1), "HEAD only");
    // ...and the revalidation restarted the TTL.
    assert_eq!(within(get(&url)).await.body, v1);
    assert_eq!(get_path(&up, "app", "latest"), (1, 1));

    // The tag moves upstream: picked up after the TTL with HEAD then GET.
    let v2 = simple(2);
    let d2 = up.add_manifest("app", Some("latest"), OCI_MANIFEST, v2.clone());
    assert_eq!(
        within(get(&url)).await.body,
        v1,
        "still fresh: the old digest"
    );
    ferry.advance(TTL + Duration::from_secs(1));
    let w = within(get(&url)).await;
    assert_eq!(w.body, v2);
    assert_eq!(w.header("docker-content-digest"), Some(d2.as_str()));
    assert_eq!(get_path(&up, "app", "latest"), (2, 2));
    assert_eq!(revalidations(&ferry, "HEAD"), 2);
    assert_eq!(revalidations(&ferry, "GET"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_zero_always_revalidates() {
    let up = FakeRegistry::start().await;
    up.add_manifest("app", Some("edge"), OCI_MANIFEST, simple(3));
    let ferry = Ferry::start_with(&up.url(), |c| {
        c.registries[0].freshness.tag_ttl = Duration::ZERO
    })
    .await;
    for _ in 0..3 {
        within(get(&ferry.url("/v2/app/manifests/edge"))).await;
    }
    assert_eq!(get_path(&up, "app", "edge"), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_tags_are_served_on_5xx_429_and_outage_but_not_on_404() {
    let up = FakeRegistry::start().await;
    let body = simple(4);
    let d = up.add_manifest("app", Some("v1"), OCI_MANIFEST, body.clone());
    up.add_manifest("app", Some("gone"), OCI_MANIFEST, simple(5));
    let ferry = Ferry::start_with(&up.url(), |c| {
        c.registries[0].retry.max_retries = 0;
    })
    .await;
    let url = ferry.url("/v2/app/manifests/v1");
    within(get(&url)).await;
    within(get(&ferry.url("/v2/app/manifests/gone"))).await;
    ferry.advance(TTL * 2);

    let stale = |w: &Whole, why: &str| {
        assert_eq!(w.status, StatusCode::OK, "{why}");
        assert_eq!(w.body, body);
        assert!(
            w.header("warning").is_some_and(|h| h.starts_with("110 ")),
            "{why}: {:?}",
            w.headers
        );
    };
    up.set_status_override(Some(StatusCode::SERVICE_UNAVAILABLE));
    stale(&within(get(&url)).await, "503");
    let h = within(request(Method::HEAD, &url, &[])).await;
    assert_eq!(h.header("docker-content-digest"), Some(d.as_str()));
    up.set_status_override(None);

    // Deleted upstream: a 404, even though ferry holds the tag.
    let addr = up.addr;
    up.stop().await;
    let fresh = FakeRegistry::start_on(addr).await;
    let w = within(get(&ferry.url("/v2/app/manifests/gone"))).await;
    assert_eq!(w.status, StatusCode::NOT_FOUND);
    assert_eq!(w.error_code(), "MANIFEST_UNKNOWN");

    // 429 (the registry then cools down, so this comes last while it is
    // up): stale with a Warning too.
    fresh.set_status_override(Some(StatusCode::TOO_MANY_REQUESTS));
    stale(&within(get(&url)).await, "429");
    let h = within(request(Method::HEAD, &url, &[])).await;
    assert_eq!(h.header("docker-content-digest"), Some(d.as_str()));

    // Upstream gone entirely.
    drop(fresh);
    let w = within(get(&ferry.url("/v2/app/manifests/v1"))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert!(w.header("warning").is_some());
    assert!(ferry.app.metrics.stale_served.get() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stale_on_not_found_and_max_stale() {
    let up = FakeRegistry::start().await;
    up.add_manifest("app", Some("v1"), OCI_MANIFEST, simple(6));
    let ferry = Ferry::start_with(&up.url(), |c| {
        c.registries[0].freshness.serve_stale_on_not_found = true;
        c.registries[0].freshness.max_stale = Some(Duration::from_secs(3600));
        c.registries[0].retry.max_retries = 0;
    })
    .await;
    let url = ferry.url("/v2/app/manifests/v1");
    within(get(&url)).await;
    ferry.advance(TTL * 2);
    up.add_raw_manifest("other", "x", OCI_MANIFEST, simple(7));
    up.fail_next(1, StatusCode::NOT_FOUND, None);
    let w = within(get(&url)).await;
    assert_eq!(w.status, StatusCode::OK, "serveStaleOnNotFound");
    assert!(w
        .header("warning")
        .is_some_and(|h| h.contains("no longer has the tag")));

    // Older than maxStale: no longer served.
    ferry.advance(Duration::from_secs(3600));
    up.set_status_override(Some(StatusCode::BAD_GATEWAY));
    let w = within(get(&url)).await;
    assert_eq!(w.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_a_tag_share_one_revalidation() {
    let up = FakeRegistry::start().await;
    up.add_manifest("app", Some("v1"), OCI_MANIFEST, simple(8));
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url("/v2/app/manifests/v1");
    within(get(&url)).await;
    ferry.advance(TTL * 2);

    let gate = Gate::new();
    up.hold_manifests(Some(gate.clone()));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    gate.reached().await;
    within(async {
        while ferry.app.metrics.revalidations_joined.get() < 7 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    gate.open();
    for c in clients {
        assert_eq!(within(c).await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(
        get_path(&up, "app", "v1"),
        (1, 1),
        "one HEAD for eight clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_negotiation_revalidates_for_a_client_that_cannot_take_the_stored_type() {
    let up = FakeRegistry::start().await;
    let index = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#
    ));
    up.add_manifest("app", Some("v1"), OCI_INDEX, index.clone());
    let docker = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","layers":[]}}"#
    ));
    up.add_manifest_variant("app", "v1", DOCKER_MANIFEST, docker.clone());
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url("/v2/app/manifests/v1");
    let w = within(get(&url)).await;
    assert_eq!(w.header("content-type"), Some(OCI_INDEX));
    let old = within(request(Method::GET, &url, &[("accept", DOCKER_MANIFEST)])).await;
    assert_eq!(old.header("content-type"), Some(DOCKER_MANIFEST));
    assert_eq!(old.body, docker);
    assert_eq!(
        get_path(&up, "app", "v1").1,
        2,
        "the stored index did not suit; asked upstream"
    );

    // Several Accept lines (as Go clients send them) all count: a client
    // that takes both gets what the tag now names without a new fetch.
    let req = http::Request::get(&url)
        .header("accept", OCI_INDEX)
        .header("accept", DOCKER_MANIFEST)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let w = read_whole(within(client().request(req)).await.unwrap()).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(w.header("content-type"), Some(DOCKER_MANIFEST));
    assert_eq!(get_path(&up, "app", "v1").1, 2);
    // Only the index type: the stored Docker manifest does not suit.
    let idx = within(request(Method::GET, &url, &[("accept", OCI_INDEX)])).await;
    assert_eq!(idx.header("content-type"), Some(OCI_INDEX));
}

fn index_of(children: &[(&str, &str)]) -> Bytes {
    let m: Vec<String> = children
        .iter()
        .map(|(d, arch)| {
            format!(r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":1,"platform":{{"architecture":"{arch}","os":"linux"}}}}"#)
        })
        .collect();
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        m.join(",")
    ))
}

/// A two-platform image in `up`; returns every blob digest.
fn multi_platform(up: &FakeRegistry, repo: &str, tag: &str) -> Vec<String> {
    let mut blobs = Vec::new();
    let mut children = Vec::new();
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        let config = up.add_blob(Bytes::from(format!("{{\"arch\":\"{arch}\"}}")));
        let layer = up.add_blob(blob_bytes(300_000 + i, 50 + i as u64));
        let m = image_manifest(&config, &[(&layer, 300_000 + i)]);
        let d = up.add_manifest(repo, None, OCI_MANIFEST, m);
        blobs.extend([config, layer]);
        children.push((d, *arch));
    }
    let refs: Vec<(&str, &str)> = children.iter().map(|(d, a)| (d.as_str(), *a)).collect();
    up.add_manifest(repo, Some(tag), OCI_INDEX, index_of(&refs));
    blobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_and_children_are_cached_independently_and_prefetch_pulls_every_platform() {
    let up = FakeRegistry::start().await;
    let blobs = multi_platform(&up, "multi/app", "v1");
    let ferry = Ferry::start(&up.url()).await;

    let events = std::sync::Mutex::new(0usize);
    let report = ferry::prefetch::prefetch(&ferry.app, "multi/app:v1", &|_| {
        *events.lock().unwrap() += 1
    })
    .await
    .unwrap();
    assert_eq!(report.manifests, 3, "index + two platforms");
    assert_eq!(report.blobs, 4);
    assert_eq!(report.blobs_already_cached, 0);
    for b in &blobs {
        assert!(ferry.has_blob(b), "{b} prefetched");
    }
    let again = ferry::prefetch::prefetch(&ferry.app, "multi/app:v1", &|_| {})
        .await
        .unwrap();
    assert_eq!(again.blobs_already_cached, 4);

    // Upstream gone, tag past its TTL: the whole image is still served.
    let index_body = within(get(&ferry.url("/v2/multi/app/manifests/v1")))
        .await
        .body;
    drop(up);
    ferry.advance(TTL * 3);
    let w = within(get(&ferry.url("/v2/multi/app/manifests/v1"))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(w.header("content-type"), Some(OCI_INDEX));
    assert_eq!(w.body, index_body);
    let index: serde_json::Value = serde_json::from_slice(&w.body).unwrap();
    for child in index["manifests"].as_array().unwrap() {
        let d = child["digest"].as_str().unwrap();
        let m = within(get(&ferry.url(&format!("/v2/multi/app/manifests/{d}")))).await;
        assert_eq!(m.status, StatusCode::OK);
        assert_eq!(m.header("content-type"), Some(OCI_MANIFEST));
    }
    for b in &blobs {
        let w = within(get(&ferry.url(&format!("/v2/multi/app/blobs/{b}")))).await;
        assert_eq!(&sha256(&w.body), b);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_pages_and_falls_back_to_held_tags() {
    let up = FakeRegistry::start().await;
    for t in ["b", "a", "d", "c", "e"] {
        up.add_manifest("lib/x", Some(t), OCI_MANIFEST, simple(t.as_bytes()[0]));
    }
    let ferry = Ferry::start_with(&up.url(), |c| c.registries[0].retry.max_retries = 0).await;
    let page1 = within(get(&ferry.url("/v2/lib/x/tags/list?n=2"))).await;
    let v: serde_json::Value = serde_json::from_slice(&page1.body).unwrap();
    assert_eq!(v["name"], "lib/x");
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(
        page1.header("link"),
        Some("</v2/lib/x/tags/list?n=2&last=b>; rel=\"next\"")
    );
    let page2 = within(get(&ferry.url("/v2/lib/x/tags/list?n=2&last=b"))).await;
    let v: serde_json::Value = serde_json::from_slice(&page2.body).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["c", "d"]));
    let last = within(get(&ferry.url("/v2/lib/x/tags/list?n=2&last=d"))).await;
    assert_eq!(last.header("link"), None);

    // Pull two tags, then lose the upstream: the held tags are listed.
    within(get(&ferry.url("/v2/lib/x/manifests/e"))).await;
    within(get(&ferry.url("/v2/lib/x/manifests/a"))).await;
    up.set_status_override(Some(StatusCode::SERVICE_UNAVAILABLE));
    let held = within(get(&ferry.url("/v2/lib/x/tags/list"))).await;
    let v: serde_json::Value = serde_json::from_slice(&held.body).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["a", "e"]));

    // Catalog: the repositories ferry holds, paged.
    up.set_status_override(None);
    up.add_manifest("lib/y", Some("1"), OCI_MANIFEST, simple(9));
    up.add_manifest("alpha", Some("1"), OCI_MANIFEST, simple(10));
    within(get(&ferry.url("/v2/lib/y/manifests/1"))).await;
    within(get(&ferry.url("/v2/alpha/manifests/1"))).await;
    let c = within(get(&ferry.url("/v2/_catalog"))).await;
    let v: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(
        v["repositories"],
        serde_json::json!(["alpha", "lib/x", "lib/y"])
    );
    let c = within(get(&ferry.url("/v2/_catalog?n=1&last=alpha"))).await;
    let v: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["lib/x"]));
    assert_eq!(
        c.header("link"),
        Some("</v2/_catalog?n=1&last=lib/x>; rel=\"next\"")
    );
    // The listing is kept for the requests after it, but a repository
    // pulled since is in the next one at once.
    up.add_manifest("zeta", Some("1"), OCI_MANIFEST, simple(11));
    within(get(&ferry.url("/v2/zeta/manifests/1"))).await;
    let c = within(get(&ferry.url("/v2/_catalog"))).await;
    let v: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(
        v["repositories"],
        serde_json::json!(["alpha", "lib/x", "lib/y", "zeta"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_filtered_cached_and_empty_when_unsupported() {
    let up = FakeRegistry::start().await;
    let subject = sha256(b"subject");
    let sig = sha256(b"sig");
    let sbom = sha256(b"sbom");
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
        {{"mediaType":"{OCI_MANIFEST}","digest":"{sig}","size":1,"artifactType":"application/vnd.dev.cosign.simplesigning.v1+json"}},
        {{"mediaType":"{OCI_MANIFEST}","digest":"{sbom}","size":1,"artifactType":"application/spdx+json"}}]}}"#
    );
    up.set_referrers("app", &subject, &index);
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url(&format!("/v2/app/referrers/{subject}"));
    let all = within(get(&url)).await;
    assert_eq!(all.header("content-type"), Some(OCI_INDEX));
    let v: serde_json::Value = serde_json::from_slice(&all.body).unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2);

    let f = within(get(&format!(
        "{url}?artifactType=application%2Fspdx%2Bjson"
    )))
    .await;
    let v: serde_json::Value = serde_json::from_slice(&f.body).unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["digest"], sbom.as_str());
    assert_eq!(f.header("oci-filters-applied"), Some("artifactType"));
    let path = format!("/v2/app/referrers/{subject}");
    assert_eq!(up.hits("GET", &path), 1, "cached like a tag");

    // No referrers API (404): the empty index.
    let other = sha256(b"other");
    let e = within(get(&ferry.url(&format!("/v2/app/referrers/{other}")))).await;
    assert_eq!(e.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
    assert_eq!(v["manifests"], serde_json::json!([]));
    assert_eq!(v["mediaType"], OCI_INDEX);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_sync_pulls_what_content_names_at_start() {
    let up = FakeRegistry::start().await;
    let wanted = multi_platform(&up, "team/app", "1.2.0");
    // Same repository, a tag the semver filter refuses.
    up.add_manifest("team/app", Some("latest"), OCI_MANIFEST, simple(40));
    let other_layer = up.add_blob(blob_bytes(1000, 99));
    let other_config = up.add_blob(Bytes::from_static(b"{}"));
    up.add_manifest(
        "elsewhere/app",
        Some("1.0.0"),
        OCI_MANIFEST,
        image_manifest(&other_config, &[(&other_layer, 1000)]),
    );
    let json = serde_json::json!({"extensions": {"sync": {"enable": true, "registries": [{
        "urls": [up.url()], "pollInterval": "1h",
        "content": [{"prefix": "team/**", "tags": {"semver": true}}]}]}}});
    let ferry = Ferry::start_json(&json.to_string(), |_| {}).await;
    within(async {
        while !wanted.iter().all(|b| ferry.has_blob(b)) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(!ferry.has_blob(&other_layer), "outside the content prefix");
    assert_eq!(
        up.hits("GET", "/v2/team/app/manifests/latest"),
        0,
        "tag filter"
    );
    assert_eq!(up.hits("GET", "/v2/elsewhere/app/tags/list"), 0);
}

/// Tag revalidations upstream with `method`, as /metrics counts them.
fn revalidations(ferry: &Ferry, method: &'static str) -> u64 {
    ferry
        .app
        .metrics
        .revalidations
        .get_or_create(&ferry::metrics::MethodLabels { method })
        .get()
}
