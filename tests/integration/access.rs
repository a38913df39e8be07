//! Client access control (zot's `http.auth.htpasswd` and `accessControl`,
//! plus static tokens) and repository-scoped content: a blob cached through
//! one repository is never served under another that it does not belong to.

use crate::support;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode};
use support::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// ferry with alice and bob in htpasswd, a `ci` token, and policies:
/// `library/**` anonymous, `private/**` alice and ci, `public/**` bob.
async fn guarded(up: &FakeRegistry) -> (Ferry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!(
            "alice:{}\nbob:{}\n",
            bcrypt::hash("s3cret", 4).unwrap(),
            bcrypt::hash("hunter2", 4).unwrap()
        ),
    )
    .unwrap();
    let json = serde_json::json!({
        "http": {
            "auth": {"htpasswd": {"path": htpasswd}},
            "accessControl": {"repositories": {
                "library/**": {"anonymousPolicy": ["read"]},
                "private/**": {"policies": [{"users": ["alice", "ci"], "actions": ["read"]}]},
                "public/**": {"policies": [{"users": ["bob"], "actions": ["read"]}]},
                format!("{}/other/**", up.url().trim_start_matches("http://")):
                    {"policies": [{"users": ["mirror-reader"], "actions": ["read"]}]}
            }}
        },
        "extensions": {"sync": {"registries": [{"urls": [up.url()]}]}},
        "ferry": {"accessTokens": [
            {"user": "ci", "token": "tok-123"},
            {"user": "mirror-reader", "token": "tok-reg"}
        ]}
    });
    (Ferry::start_json(&json.to_string(), |_| {}).await, dir)
}

async fn get_as(url: &str, authorization: Option<&str>) -> Whole {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    within(request(Method::GET, url, &headers)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_users_and_tokens_read_what_their_policy_allows() {
    let up = FakeRegistry::start().await;
    let public = up.add_blob(blob_bytes(20_000, 500));
    let (ferry, _dir) = guarded(&up).await;
    let url = |repo: &str| ferry.url(&format!("/v2/{repo}/blobs/{public}"));

    // Anonymous: the base endpoint challenges, so clients learn to log in.
    let r = get_as(&ferry.url("/v2/"), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate"),
        Some(ferry::access::CHALLENGE),
        "a 401 carries a Basic challenge"
    );
    assert_eq!(
        get_as(&ferry.url("/v2/"), Some(&basic("alice", "s3cret")))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get_as(&url("library/app"), None).await.status,
        StatusCode::OK
    );
    let r = get_as(&url("private/db"), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code(), "UNAUTHORIZED");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .starts_with("Basic realm=\"ferry\""));

    let alice = basic("alice", "s3cret");
    assert_eq!(
        get_as(&url("private/db"), Some(&alice)).await.status,
        StatusCode::OK
    );
    let r = get_as(&url("private/db"), Some(&basic("bob", "hunter2"))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.error_code(), "DENIED");
    let r = get_as(&url("private/db"), Some(&basic("alice", "wrong"))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code(), "UNAUTHORIZED");
    assert_eq!(
        get_as(&url("private/db"), Some("Bearer tok-123"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get_as(&url("private/db"), Some(&basic("any", "tok-123")))
            .await
            .status,
        StatusCode::OK,
        "a token works as a Basic password, as docker login sends it"
    );
    assert_eq!(
        get_as(&url("private/db"), Some("Bearer nope")).await.status,
        StatusCode::UNAUTHORIZED
    );
    // A policy written for the registry (its host, then the upstream
    // name) decides for what it matches, whatever name the client used;
    // elsewhere the client's name decides.
    assert_eq!(
        get_as(&url("other/x"), Some("Bearer tok-reg")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_as(&url("private/db"), Some("Bearer tok-reg"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // Nothing outside the policies, even for a known user.
    assert_eq!(
        get_as(&url("other/x"), Some(&alice)).await.status,
        StatusCode::FORBIDDEN
    );

    // The status page names digests and upstream errors: admins only.
    assert_eq!(
        get_as(&ferry.url("/"), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_as(&ferry.url("/"), Some(&alice)).await.status,
        StatusCode::FORBIDDEN
    );

    let text = String::from_utf8(get_as(&ferry.url("/metrics"), None).await.body.to_vec()).unwrap();
    let denied = text
        .lines()
        .find(|l| l.starts_with("ferry_access_denied_total "))
        .unwrap();
    // /v2/ anonymous, private anonymous, bob, wrong password, bad token,
    // the registry token on private/db, alice on other/x, the status page twice.
    assert_eq!(denied, "ferry_access_denied_total 9");
}

fn manifest_with_layer(config: &str, layer: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":1}}]}}"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_cached_for_one_repository_is_not_served_under_another() {
    let up = FakeRegistry::start().await;
    let secret = blob_bytes(300_000, 501);
    let layer = up.add_blob_in("private/secret", secret.clone());
    let config = up.add_blob_in("private/secret", Bytes::from_static(b"{}"));
    up.add_manifest(
        "private/secret",
        Some("latest"),
        OCI_MANIFEST,
        manifest_with_layer(&config, &layer),
    );
    let (ferry, _dir) = guarded(&up).await;
    let alice = basic("alice", "s3cret");
    let bob = basic("bob", "hunter2");

    // Alice pulls the image: manifest, then the layer.
    let m = get_as(
        &ferry.url("/v2/private/secret/manifests/latest"),
        Some(&alice),
    )
    .await;
    assert_eq!(m.status, StatusCode::OK);
    let r = get_as(
        &ferry.url(&format!("/v2/private/secret/blobs/{layer}")),
        Some(&alice),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(sha256(&r.body), layer);
    ferry.settle().await;
    assert!(ferry.has_blob(&layer));
    // Served again from the cache without asking upstream: the manifest
    // said the layer belongs to private/secret.
    let r = get_as(
        &ferry.url(&format!("/v2/private/secret/blobs/{layer}")),
        Some(&alice),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        up.hits("HEAD", &format!("/v2/private/secret/blobs/{layer}")),
        0
    );
    assert_eq!(up.blob_gets(&layer), 1);

    // Bob may read public/**, and names the private layer's digest there.
    let r = get_as(
        &ferry.url(&format!("/v2/public/app/blobs/{layer}")),
        Some(&bob),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    assert_eq!(r.error_code(), "BLOB_UNKNOWN");
    assert!(r.body.len() < 1000, "no layer bytes in the answer");
    let r = within(request(
        Method::HEAD,
        &ferry.url(&format!("/v2/public/app/blobs/{layer}")),
        &[("authorization", bob.as_str())],
    ))
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The upstream was asked under public/app, and said no.
    assert!(up.hits("HEAD", &format!("/v2/public/app/blobs/{layer}")) >= 1);
    // Same for the manifest by digest.
    let md = sha256(&manifest_with_layer(&config, &layer));
    let r = get_as(
        &ferry.url(&format!("/v2/public/app/manifests/{md}")),
        Some(&bob),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "MANIFEST_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_in_flight_is_not_joined_from_another_repository() {
    let up = FakeRegistry::start().await;
    let data = blob_bytes(2 << 20, 502);
    let layer = up.add_blob_in("private/secret", data.clone());
    let gate = Gate::new();
    up.set_fault(&layer, Fault::PauseAt(1 << 20, gate.clone()));
    let (ferry, _dir) = guarded(&up).await;
    let alice = basic("alice", "s3cret");
    let bob = basic("bob", "hunter2");

    let url = ferry.url(&format!("/v2/private/secret/blobs/{layer}"));
    let first = tokio::spawn({
        let alice = alice.clone();
        async move { get_as(&url, Some(&alice)).await }
    });
    gate.reached().await;
    assert!(ferry.app.coordinator.is_in_flight(&layer.parse().unwrap()));
    let r = get_as(
        &ferry.url(&format!("/v2/public/app/blobs/{layer}")),
        Some(&bob),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "BLOB_UNKNOWN");
    gate.open();
    let r = within(first).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(sha256(&r.body), layer);
    assert_eq!(up.blob_gets(&layer), 1);
}
