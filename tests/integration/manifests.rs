//! Manifests through ferry: by tag and by digest, media types and digest
//! headers, verification, and the stored fallback when the upstream is gone.

use crate::support;

use bytes::Bytes;
use http::{Method, StatusCode};
use support::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

fn manifest_json(layer: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{layer}","size":2}},"layers":[]}}"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_by_tag_and_digest_carry_type_and_digest() {
    let up = FakeRegistry::start().await;
    let body = manifest_json(&sha256(b"{}"));
    let digest = up.add_manifest("team/app", Some("v1"), OCI_MANIFEST, body.clone());
    let index = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[]}}"#
    ));
    let index_digest = up.add_manifest("team/app", Some("multi"), DOCKER_LIST, index.clone());
    let ferry = Ferry::start(&up.url()).await;

    let by_tag = within(get(&ferry.url("/v2/team/app/manifests/v1"))).await;
    assert_eq!(by_tag.status, StatusCode::OK);
    assert_eq!(by_tag.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(
        by_tag.header("docker-content-digest"),
        Some(digest.as_str())
    );
    assert_eq!(
        by_tag.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(by_tag.body, body);

    let url = ferry.url(&format!("/v2/team/app/manifests/{digest}"));
    let by_digest = within(get(&url)).await;
    assert_eq!(by_digest.body, body);
    assert_eq!(by_digest.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(
        up.hits("GET", &format!("/v2/team/app/manifests/{digest}")),
        0,
        "stored by the tag pull"
    );

    let head = within(request(Method::HEAD, &url, &[])).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(
        head.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert!(head.body.is_empty());

    let list = within(get(&ferry.url("/v2/team/app/manifests/multi"))).await;
    assert_eq!(list.header("content-type"), Some(DOCKER_LIST));
    assert_eq!(
        list.header("docker-content-digest"),
        Some(index_digest.as_str())
    );

    let head_tag = within(request(
        Method::HEAD,
        &ferry.url("/v2/team/app/manifests/v1"),
        &[],
    ))
    .await;
    assert_eq!(
        head_tag.header("docker-content-digest"),
        Some(digest.as_str())
    );
    assert_eq!(head_tag.header("content-type"), Some(OCI_MANIFEST));

    let missing = within(get(&ferry.url("/v2/team/app/manifests/nope"))).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error_code(), "MANIFEST_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_manifest_bytes_for_a_digest_are_refused_and_not_stored() {
    let up = FakeRegistry::start().await;
    let real = manifest_json(&sha256(b"a"));
    let digest = sha256(&real);
    up.add_raw_manifest("x/y", &digest, OCI_MANIFEST, manifest_json(&sha256(b"b")));
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url(&format!("/v2/x/y/manifests/{digest}"));
    let w = within(get(&url)).await;
    assert_eq!(w.status, StatusCode::BAD_GATEWAY);
    assert_eq!(w.error_code(), "MANIFEST_INVALID");
    // Nothing stored: with the upstream fixed, the right bytes arrive.
    up.add_raw_manifest("x/y", &digest, OCI_MANIFEST, real.clone());
    let ok = within(get(&url)).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body, real);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_tags_and_digests_are_served_when_the_upstream_is_down() {
    let up = FakeRegistry::start().await;
    let body = manifest_json(&sha256(b"c"));
    let digest = up.add_manifest("lib/tool", Some("stable"), OCI_MANIFEST, body.clone());
    let ferry = Ferry::start(&up.url()).await;
    assert_eq!(
        within(get(&ferry.url("/v2/lib/tool/manifests/stable")))
            .await
            .body,
        body
    );

    // Past the tag TTL, 503 from upstream: the stored tag is served,
    // marked with a Warning.
    ferry.advance(std::time::Duration::from_secs(301));
    up.set_status_override(Some(StatusCode::SERVICE_UNAVAILABLE));
    let stale = within(get(&ferry.url("/v2/lib/tool/manifests/stable"))).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.body, body);
    assert_eq!(stale.header("docker-content-digest"), Some(digest.as_str()));
    assert!(stale
        .header("warning")
        .is_some_and(|w| w.contains("upstream unavailable")));

    // Upstream gone entirely.
    drop(up);
    for path in [
        "/v2/lib/tool/manifests/stable".to_string(),
        format!("/v2/lib/tool/manifests/{digest}"),
    ] {
        let w = within(get(&ferry.url(&path))).await;
        assert_eq!(w.status, StatusCode::OK, "{path}");
        assert_eq!(w.body, body, "{path}");
        let h = within(request(Method::HEAD, &ferry.url(&path), &[])).await;
        assert_eq!(h.status, StatusCode::OK, "HEAD {path}");
        assert_eq!(h.header("docker-content-digest"), Some(digest.as_str()));
    }
    // What ferry never held is a clear upstream error, not a 500.
    let w = within(get(&ferry.url("/v2/lib/tool/manifests/other"))).await;
    assert_eq!(w.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(w.error_code(), "UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tag_upstream_is_not_served_from_the_store() {
    let up = FakeRegistry::start().await;
    let body = manifest_json(&sha256(b"d"));
    up.add_manifest("lib/gone", Some("old"), OCI_MANIFEST, body.clone());
    let ferry = Ferry::start(&up.url()).await;
    assert_eq!(
        within(get(&ferry.url("/v2/lib/gone/manifests/old")))
            .await
            .status,
        StatusCode::OK
    );
    // Replace with a fresh registry that does not have the tag at all.
    let addr = up.addr;
    up.stop().await;
    let _fresh = FakeRegistry::start_on(addr).await;
    ferry.advance(std::time::Duration::from_secs(301));
    let w = within(get(&ferry.url("/v2/lib/gone/manifests/old"))).await;
    assert_eq!(w.status, StatusCode::NOT_FOUND);
    assert_eq!(w.error_code(), "MANIFEST_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_manifests_are_refused() {
    let up = FakeRegistry::start().await;
    let big = Bytes::from(vec![b' '; 64 * 1024]);
    up.add_manifest("big/one", Some("t"), OCI_MANIFEST, big);
    let ferry = Ferry::start_with(&up.url(), |c| c.max_manifest_size = 1024).await;
    let w = within(get(&ferry.url("/v2/big/one/manifests/t"))).await;
    assert_eq!(w.status, StatusCode::BAD_GATEWAY);
    assert_eq!(w.error_code(), "SIZE_INVALID");
}
