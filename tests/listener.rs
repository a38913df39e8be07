//! The HTTPS listener (zot's `http.tls`): ferry serves the registry API
//! over TLS with HTTP/2 and HTTP/1.1 by ALPN.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use support::tls::TestPki;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_http2_from_zot_http_tls() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(blob_bytes(100_000, 300));
    let pki = TestPki::new();
    let pair = pki.issue(&["127.0.0.1", "localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::write(&cert, &pair.cert_pem).unwrap();
    std::fs::write(&key, &pair.key_pem).unwrap();
    let json = serde_json::json!({
        "http": {"tls": {"cert": cert, "key": key}},
        "extensions": {"sync": {"registries": [{"urls": [up.url()]}]}}
    });
    let ferry = Ferry::start_json(&json.to_string(), |_| {}).await;

    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector({
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http
        });
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let url = format!("https://127.0.0.1:{}/v2/x/blobs/{d}", ferry.addr.port());
    let resp = within(client.get(url.parse().unwrap())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2, "ALPN chose HTTP/2");
    let body = within(resp.into_body().collect()).await.unwrap().to_bytes();
    assert_eq!(sha256(&body), d);

    // Plain HTTP on the TLS port gets no registry answer.
    let (status, _) = within(raw_get(ferry.addr, "/v2/")).await;
    assert_ne!(status, 200);
}
