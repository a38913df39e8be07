//! A cluster behind `http.tls`: peers speak HTTPS to each other, check
//! each other's certificates against `certDir`'s CA, and show `certDir`'s
//! client certificate to a listener that demands one (`cacert`).

use super::*;

use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use support::tls::TestPki;

/// A TLS client that trusts `pki`'s CA and shows `client` if given.
fn https_client(
    pki: &TestPki,
    client: Option<&support::tls::Pair>,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let tls = match client {
        Some(pair) => {
            let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pair.key_der.clone().into());
            builder
                .with_client_auth_cert(vec![pair.cert_der.clone()], key)
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_behind_mutual_tls_fill_each_other_over_https() {
    let up = FakeRegistry::start().await;
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = pki.issue(&["127.0.0.1", "localhost"]);
    let (cert, key, ca) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    // certs.d for the peers: the CA, and the replica's client pair.
    let peer_dir = dir.path().join("peers");
    pki.write_cert_dir(&peer_dir, true);

    let addrs = free_addrs(2);
    let peers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let mut replicas = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let json = serde_json::json!({
            "http": {"tls": {"cert": cert, "key": key, "cacert": ca}},
            "extensions": {"sync": {"registries": [{"urls": [up.url()]}]}}
        });
        let mut c = cluster_config(&peers, &peers[i], Duration::from_millis(100));
        c.https = true;
        c.cert_dir = Some(peer_dir.clone());
        let addr = *addr;
        replicas.push(
            Ferry::start_json(&json.to_string(), move |cfg| {
                cfg.listen = addr;
                cfg.cluster = Some(c);
            })
            .await,
        );
    }
    // Each sees the other ready: the probes went over mutual TLS.
    all_live(&replicas, 1).await;

    let (d, _) = blob_owned_by(&up, 300_000, &peers, &peers[1]);
    let me = pki.issue(&["a client"]);
    let url = format!("https://{}/v2/x/blobs/{d}", peers[0]);
    let resp = within(https_client(&pki, Some(&me)).get(url.parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = within(resp.into_body().collect()).await.unwrap().to_bytes();
    assert_eq!(sha256(&body), d);
    assert_eq!(up.blob_gets(&d), 1, "one upstream fetch, by the owner");
    assert_eq!(
        replicas[0].app.metrics.cluster.peer_bytes.get(),
        300_000,
        "replica 0 filled from its peer over HTTPS"
    );
    // The listener demands a client certificate of everyone.
    let refused = within(https_client(&pki, None).get(url.parse().unwrap())).await;
    assert!(
        refused.is_err(),
        "a client without a certificate was served"
    );
}
