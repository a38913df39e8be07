//! Upstream authentication and TLS: bearer tokens (anonymous and with
//! credentials, refresh, per-repository scope), Basic, trusted realms,
//! private CAs and client certificates from a certDir, tlsVerify: false,
//! HTTP/2, and no credential ever crossing to the wrong side.

use crate::support;

use http::{Method, StatusCode};
use support::tls::TestPki;
use support::*;

fn registry_json(url: &str, extra: serde_json::Value, sync_extra: serde_json::Value) -> String {
    let mut reg = serde_json::json!({"urls": [url], "maxRetries": 0});
    for (k, v) in extra.as_object().unwrap() {
        reg[k] = v.clone();
    }
    let mut sync = serde_json::json!({"enable": true, "registries": [reg]});
    for (k, v) in sync_extra.as_object().unwrap() {
        sync[k] = v.clone();
    }
    serde_json::json!({"extensions": {"sync": sync}}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_with_credentials_from_a_credentials_file_scoped_per_repository_and_refreshed() {
    let up = FakeRegistry::start().await;
    up.require_bearer("t1");
    up.require_token_credentials("alice", "s3cret");
    let a = up.add_blob(blob_bytes(10_000, 60));
    let b = up.add_blob(blob_bytes(10_000, 61));
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials.json");
    std::fs::write(
        &creds,
        format!(
            r#"{{"{}": {{"username": "alice", "password": "s3cret"}}}}"#,
            up.addr
        ),
    )
    .unwrap();
    let json = registry_json(
        &up.url(),
        serde_json::json!({}),
        serde_json::json!({"credentialsFile": creds}),
    );
    let ferry = Ferry::start_json(&json, |_| {}).await;

    let w = within(get(&ferry.url(&format!("/v2/team/one/blobs/{a}")))).await;
    assert_eq!(w.status, StatusCode::OK, "{:?}", w.body);
    let w = within(get(&ferry.url(&format!("/v2/team/two/blobs/{b}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    let scopes = up.token_queries();
    assert_eq!(
        scopes.len(),
        2,
        "one token per repository scope: {scopes:?}"
    );
    assert!(
        scopes[0].contains("scope=repository%3Ateam%2Fone%3Apull"),
        "{scopes:?}"
    );
    assert!(
        scopes[1].contains("scope=repository%3Ateam%2Ftwo%3Apull"),
        "{scopes:?}"
    );
    assert!(scopes[0].contains("service=fake"));

    // The registry stops accepting t1: ferry fetches a new token once.
    up.require_bearer("t2");
    let c = up.add_blob(blob_bytes(10_000, 62));
    let w = within(get(&ferry.url(&format!("/v2/team/one/blobs/{c}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(up.token_queries().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_credentials_fail_cleanly() {
    let up = FakeRegistry::start().await;
    up.require_bearer("t1");
    up.require_token_credentials("alice", "s3cret");
    let a = up.add_blob(blob_bytes(1000, 63));
    let json = registry_json(
        &up.url(),
        serde_json::json!({"credentials": {"username": "alice", "password": "wrong"}}),
        serde_json::json!({}),
    );
    let ferry = Ferry::start_json(&json, |_| {}).await;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{a}")))).await;
    assert_ne!(w.status, StatusCode::OK);
    assert!(!w.error_code().is_empty());
    assert!(
        !String::from_utf8_lossy(&w.body).contains("wrong"),
        "no secret in the error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_upstreams_get_credentials_and_clients_never_pass_theirs() {
    let up = FakeRegistry::start().await;
    up.require_basic("bob", "pw");
    let a = up.add_blob(blob_bytes(1000, 64));
    let b = up.add_blob(blob_bytes(1000, 65));
    let json = registry_json(
        &up.url(),
        serde_json::json!({"credentials": {"username": "bob", "password": "pw"}}),
        serde_json::json!({}),
    );
    let ferry = Ferry::start_json(&json, |_| {}).await;
    let w = within(request(
        Method::GET,
        &ferry.url(&format!("/v2/x/blobs/{a}")),
        &[("authorization", "Bearer client-secret")],
    ))
    .await;
    assert_eq!(w.status, StatusCode::OK);
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{b}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    let auths = up.authorizations();
    // First request challenged, then Basic, then sent up front.
    assert_eq!(auths.len(), 3, "{auths:?}");
    assert_eq!(auths[0], "");
    assert!(auths[1].starts_with("Basic ") && auths[2] == auths[1]);
    assert!(
        auths.iter().all(|a| !a.contains("client-secret")),
        "a client's Authorization reached the upstream"
    );
    // The upstream's credentials never reach the client.
    assert!(w.headers.get("authorization").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_realm_on_a_foreign_host_is_refused_unless_trusted() {
    let up = FakeRegistry::start().await;
    up.require_bearer("t1");
    up.require_token_credentials("alice", "s3cret");
    // Same server, other host name: stands for an attacker's realm.
    up.set_realm(&format!("http://localhost:{}/token", up.addr.port()));
    let a = up.add_blob(blob_bytes(1000, 66));
    let creds = serde_json::json!({"credentials": {"username": "alice", "password": "s3cret"}});
    let ferry = Ferry::start_json(
        &registry_json(&up.url(), creds.clone(), serde_json::json!({})),
        |_| {},
    )
    .await;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{a}")))).await;
    assert_ne!(w.status, StatusCode::OK);
    assert!(
        up.token_queries().is_empty(),
        "credentials were sent to a foreign realm"
    );

    let mut trusted = creds;
    trusted["tokenRealms"] = serde_json::json!(["localhost"]);
    let ferry = Ferry::start_json(
        &registry_json(&up.url(), trusted, serde_json::json!({})),
        |_| {},
    )
    .await;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{a}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(up.token_queries().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_realm_on_another_port_of_the_same_host_is_another_host() {
    let up = FakeRegistry::start().await;
    up.require_bearer("t1");
    up.require_token_credentials("alice", "s3cret");
    // Another server on the same host: it issues the same token, and
    // stands for whatever else listens on that machine.
    let other = FakeRegistry::start().await;
    other.require_bearer("t1");
    other.require_token_credentials("alice", "s3cret");
    up.set_realm(&format!("http://127.0.0.1:{}/token", other.addr.port()));
    let a = up.add_blob(blob_bytes(1000, 68));
    let creds = serde_json::json!({"credentials": {"username": "alice", "password": "s3cret"}});
    let ferry = Ferry::start_json(
        &registry_json(&up.url(), creds.clone(), serde_json::json!({})),
        |_| {},
    )
    .await;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{a}")))).await;
    assert_ne!(w.status, StatusCode::OK);
    assert!(
        other.token_queries().is_empty(),
        "credentials were sent to a realm on another port"
    );

    let mut trusted = creds;
    trusted["tokenRealms"] = serde_json::json!([format!("127.0.0.1:{}", other.addr.port())]);
    let ferry = Ferry::start_json(
        &registry_json(&up.url(), trusted, serde_json::json!({})),
        |_| {},
    )
    .await;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{a}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(other.token_queries().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_ca_from_cert_dir_http2_and_tls_verify_false() {
    let pki = TestPki::new();
    let up = FakeRegistry::start_tls(pki.server_config(false)).await;
    let a = up.add_blob(blob_bytes(200_000, 67));
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.d");
    pki.write_cert_dir(&certs, false);

    // Unknown CA: refused.
    let plain = Ferry::start_json(
        &registry_json(&up.url(), serde_json::json!({}), serde_json::json!({})),
        |_| {},
    )
    .await;
    let w = within(get(&plain.url(&format!("/v2/x/blobs/{a}")))).await;
    assert_eq!(w.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", w.body);
    assert_eq!(up.total_hits(), 0);

    // The CA from certDir: served, over HTTP/2 (ALPN).
    let with_ca = Ferry::start_json(
        &registry_json(
            &up.url(),
            serde_json::json!({"certDir": certs}),
            serde_json::json!({}),
        ),
        |_| {},
    )
    .await;
    let w = within(get(&with_ca.url(&format!("/v2/x/blobs/{a}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), a);
    assert!(
        up.versions().iter().all(|v| *v == http::Version::HTTP_2),
        "{:?}",
        up.versions()
    );

    // tlsVerify: false accepts the unknown CA.
    let b = up.add_blob(blob_bytes(1000, 68));
    let insecure = Ferry::start_json(
        &registry_json(
            &up.url(),
            serde_json::json!({"tlsVerify": false}),
            serde_json::json!({}),
        ),
        |_| {},
    )
    .await;
    let w = within(get(&insecure.url(&format!("/v2/x/blobs/{b}")))).await;
    assert_eq!(w.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_from_cert_dir_for_mutual_tls() {
    let pki = TestPki::new();
    let up = FakeRegistry::start_tls(pki.server_config(true)).await;
    let a = up.add_blob(blob_bytes(1000, 69));
    let dir = tempfile::tempdir().unwrap();
    let ca_only = dir.path().join("ca-only");
    let with_client = dir.path().join("with-client");
    pki.write_cert_dir(&ca_only, false);
    pki.write_cert_dir(&with_client, true);

    let no_cert = Ferry::start_json(
        &registry_json(
            &up.url(),
            serde_json::json!({"certDir": ca_only}),
            serde_json::json!({}),
        ),
        |_| {},
    )
    .await;
    let w = within(get(&no_cert.url(&format!("/v2/x/blobs/{a}")))).await;
    assert_ne!(
        w.status,
        StatusCode::OK,
        "the upstream wants a client certificate"
    );

    let mtls = Ferry::start_json(
        &registry_json(
            &up.url(),
            serde_json::json!({"certDir": with_client}),
            serde_json::json!({}),
        ),
        |_| {},
    )
    .await;
    let w = within(get(&mtls.url(&format!("/v2/x/blobs/{a}")))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_follow_a_redirect_from_https_to_plain_http_on_the_same_host() {
    let pki = TestPki::new();
    let up = FakeRegistry::start_tls(pki.server_config(false)).await;
    up.require_basic("bob", "pw");
    let d = up.add_blob(blob_bytes(1000, 70));
    // The blob is "moved" to the same host and port, without TLS.
    up.redirect_blobs_to(&up.url().replacen("https://", "http://", 1));
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.d");
    pki.write_cert_dir(&certs, false);
    let json = registry_json(
        &up.url(),
        serde_json::json!({"certDir": certs, "credentials": {"username": "bob", "password": "pw"}}),
        serde_json::json!({}),
    );
    let ferry = Ferry::start_json(&json, |_| {}).await;
    let w = within(get(&ferry.url(&format!("/v2/x/blobs/{d}")))).await;
    assert_ne!(w.status, StatusCode::OK, "the plain copy demands Basic too");
    assert!(
        up.authorizations().iter().any(|a| a.starts_with("Basic ")),
        "the TLS side got the credentials"
    );
    let plain = up.plain_requests();
    assert!(!plain.is_empty(), "the redirect to plain HTTP was followed");
    assert!(
        plain.iter().all(|(_, auth)| auth.is_empty()),
        "credentials went out unencrypted: {plain:?}"
    );
}
