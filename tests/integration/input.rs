//! Hostile and malformed requests: every one gets a 4xx with OCI error JSON,
//! nothing panics, and nothing reaches a path outside the store.

use crate::support;

use http::{Method, StatusCode};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_digests_tags_and_traversal_are_refused() {
    let up = FakeRegistry::start().await;
    let ferry = Ferry::start(&up.url()).await;
    let d = sha256(b"x");
    let long = "a".repeat(300);
    let cases: Vec<(String, u16, &str)> = vec![
        (format!("/v2/../../etc/blobs/{d}"), 400, "NAME_INVALID"),
        (
            format!("/v2/%2e%2e/%2e%2e/etc/blobs/{d}"),
            400,
            "NAME_INVALID",
        ),
        (format!("/v2/%2F..%2Fetc/blobs/{d}"), 400, "NAME_INVALID"),
        (format!("/v2//etc/passwd/blobs/{d}"), 400, "NAME_INVALID"),
        (format!("/v2/Upper/blobs/{d}"), 400, "NAME_INVALID"),
        (format!("/v2/{long}/manifests/latest"), 400, "NAME_INVALID"),
        (
            "/v2/ok/blobs/sha256:../../../../etc/passwd".into(),
            404,
            "UNSUPPORTED",
        ),
        (
            "/v2/ok/blobs/sha256:..%2F..%2Fetc%2Fpasswd".into(),
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/ok/blobs/sha256:abc".into(), 400, "DIGEST_INVALID"),
        (
            "/v2/ok/blobs/md5:d41d8cd98f00b204e9800998ecf8427e".into(),
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/ok/blobs/..".into(), 400, "DIGEST_INVALID"),
        ("/v2/ok/manifests/..".into(), 400, "MANIFEST_INVALID"),
        (
            format!("/v2/ok/manifests/{}", "t".repeat(129)),
            400,
            "MANIFEST_INVALID",
        ),
        ("/v2/ok/manifests/%2e%2e".into(), 400, "MANIFEST_INVALID"),
        ("/v2/ok/whatever/x".into(), 404, "UNSUPPORTED"),
        ("/etc/passwd".into(), 404, "UNSUPPORTED"),
        ("/v2/x".into(), 404, "UNSUPPORTED"),
    ];
    for (path, status, code) in cases {
        let (got, body) = within(raw_get(ferry.addr, &path)).await;
        assert_eq!(got, status, "{path}: {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert_eq!(v["errors"][0]["code"], code, "{path}");
    }
    assert_eq!(up.hits("GET", "/v2/"), 0);
    // Nothing was fetched or written for any of them.
    let blobs = ferry.store_root().join("blobs");
    assert_eq!(std::fs::read_dir(blobs).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_base_and_write_methods() {
    let up = FakeRegistry::start().await;
    let ferry = Ferry::start(&up.url()).await;
    let base = within(get(&ferry.url("/v2/"))).await;
    assert_eq!(base.status, StatusCode::OK);
    assert_eq!(
        base.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    let d = sha256(b"y");
    for (method, path) in [
        (Method::POST, "/v2/a/blobs/uploads/".to_string()),
        (Method::PUT, "/v2/a/manifests/latest".to_string()),
        (Method::PATCH, "/v2/a/blobs/uploads/123".to_string()),
        (Method::DELETE, format!("/v2/a/blobs/{d}")),
        (Method::DELETE, "/v2/a/manifests/latest".to_string()),
    ] {
        let w = within(request(method.clone(), &ferry.url(&path), &[])).await;
        assert_eq!(w.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(w.error_code(), "UNSUPPORTED");
        assert_eq!(w.header("allow"), Some("GET, HEAD"));
    }
}
