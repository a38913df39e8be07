//! The HTTPS listener (zot's `http.tls`): ferry serves the registry API
//! over TLS with HTTP/2 and HTTP/1.1 by ALPN.

use crate::support;

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

    let tls = client_tls(&pki.ca_pem);
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

/// A TLS client configuration that trusts the test CA.
fn client_tls(ca_pem: &str) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The end-entity certificate a TLS handshake with ferry presents.
async fn served_certificate(ferry: &Ferry, ca_pem: &str) -> Vec<u8> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(ca_pem)));
    let tcp = tokio::net::TcpStream::connect(ferry.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = within(connector.connect(name, tcp)).await.unwrap();
    conn.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let pki = TestPki::new();
    let (first, second, third) = (
        pki.issue(&["127.0.0.1"]),
        pki.issue(&["127.0.0.1"]),
        pki.issue(&["127.0.0.1"]),
    );
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let json = serde_json::json!({
        "http": {"tls": {"cert": cert, "key": key}},
        "extensions": {"sync": {"registries": [{"urls": ["http://127.0.0.1:1"]}]}},
        "ferry": {"tlsReloadInterval": "50ms"}
    });
    let ferry = Ferry::start_json(&json.to_string(), |_| {}).await;
    assert_eq!(
        served_certificate(&ferry, &pki.ca_pem).await,
        first.cert_der.to_vec()
    );

    // Rotate: key first, then certificate (the half-rotated pair in between
    // is refused and the old certificate stays in use).
    std::fs::write(&key, &second.key_pem).unwrap();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    within(async {
        while served_certificate(&ferry, &pki.ca_pem).await != second.cert_der.to_vec() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;

    // A certificate that does not go with the key is not taken.
    let certs = ferry.certs.clone().unwrap();
    std::fs::write(&cert, &third.cert_pem).unwrap();
    let e = certs.reload_if_changed().unwrap_err();
    assert!(e.to_string().contains("do not go together"), "{e}");
    assert_eq!(
        certs.current_certificate().to_vec(),
        second.cert_der.to_vec()
    );
    assert_eq!(
        served_certificate(&ferry, &pki.ca_pem).await,
        second.cert_der.to_vec()
    );
}

/// Sends a raw request on a new connection and reads the status line (or
/// nothing, when ferry closes it at once).
async fn raw_status(stream: &mut tokio::net::TcpStream, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.write_all(request).await;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        let n = within(stream.read(&mut buf)).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_and_metrics_have_their_own_address() {
    let ferry = Ferry::start_with("http://127.0.0.1:1", |c| {
        c.listener.max_connections = 2;
        c.listener.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let req = b"GET /v2/ HTTP/1.1\r\nhost: ferry\r\n\r\n";
    let mut a = tokio::net::TcpStream::connect(ferry.addr).await.unwrap();
    let mut b = tokio::net::TcpStream::connect(ferry.addr).await.unwrap();
    assert_eq!(raw_status(&mut a, req).await, "HTTP/1.1 200 OK");
    assert_eq!(raw_status(&mut b, req).await, "HTTP/1.1 200 OK");
    let mut c = tokio::net::TcpStream::connect(ferry.addr).await.unwrap();
    assert_eq!(
        raw_status(&mut c, req).await,
        "HTTP/1.1 503 Service Unavailable"
    );

    let metrics_url = format!("http://{}/metrics", ferry.metrics_addr.unwrap());
    let text = String::from_utf8(within(get(&metrics_url)).await.body.to_vec()).unwrap();
    assert!(text.contains("\nferry_connections 2\n"), "{text}");
    assert!(
        text.contains("\nferry_connections_refused_total 1\n"),
        "{text}"
    );
    // The main listener no longer serves /metrics; the metrics one serves
    // nothing but operations.
    drop(a);
    let mut d = within(async {
        loop {
            let mut d = tokio::net::TcpStream::connect(ferry.addr).await.unwrap();
            let status = raw_status(&mut d, b"GET /metrics HTTP/1.1\r\nhost: ferry\r\n\r\n").await;
            if !status.contains("503") {
                assert_eq!(status, "HTTP/1.1 404 Not Found", "once a permit is free");
                return d;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(raw_status(&mut d, req).await, "HTTP/1.1 200 OK");
    let other = format!("http://{}/v2/", ferry.metrics_addr.unwrap());
    assert_eq!(within(get(&other)).await.status, StatusCode::NOT_FOUND);
}

/// ferry's connection handling over an in-memory pipe, on paused time.
mod slow_clients {
    use std::time::Duration;

    use ferry::config::{Config, Overrides};
    use ferry::http::Role;
    use ferry::listener::Door;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::time::Instant;

    const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

    /// A connection to a fresh app; the returned end is the client's.
    fn connect(dir: &tempfile::TempDir) -> DuplexStream {
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            storage: Some(dir.path().join("store")),
            upstream: Some("http://127.0.0.1:1".into()),
        };
        let mut config = Config::defaults(&overrides).unwrap();
        config.listener.header_timeout = HEADER_TIMEOUT;
        config.listener.max_header_bytes = 16 * 1024;
        let limits = config.listener.clone();
        let app = ferry::App::new(config).unwrap();
        let door = Door::new(&limits, app.metrics.clone());
        let (client, server) = tokio::io::duplex(1 << 20);
        let peer = "127.0.0.1:4000".parse().unwrap();
        tokio::spawn(door.serve(
            ferry::server::handler(app),
            TokioIo::new(server),
            peer,
            Role::Main,
            None,
        ));
        client
    }

    /// Everything the server sends until it closes the connection.
    /// Fails if the server keeps the connection open for a minute.
    async fn read_to_close(c: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), c.read_to_end(&mut out))
            .await
            .expect("the server closes the connection")
            .ok();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_nothing_is_closed_after_the_header_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = connect(&dir);
        let t = Instant::now();
        read_to_close(&mut c).await;
        assert!(t.elapsed() >= HEADER_TIMEOUT, "{:?}", t.elapsed());
        assert!(t.elapsed() < HEADER_TIMEOUT + Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn slowloris_headers_are_cut_off_at_the_header_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = connect(&dir);
        let t = Instant::now();
        c.write_all(b"GET /v2/ HTTP/1.1\r\nhost: ferry\r\n")
            .await
            .unwrap();
        // One more header line every few seconds, never the blank line.
        let drip = async {
            for i in 0..100 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                if c.write_all(format!("x-{i}: y\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(HEADER_TIMEOUT * 3, drip).await;
        let rest = read_to_close(&mut c).await;
        assert!(
            rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
            "no answer but a timeout: {rest:?}"
        );
        let closed_after = t.elapsed();
        assert!(closed_after < HEADER_TIMEOUT * 3, "{closed_after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn oversized_headers_get_431_and_a_prompt_request_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = connect(&dir);
        c.write_all(b"GET /v2/ HTTP/1.1\r\nhost: ferry\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));

        let mut c = connect(&dir);
        let big = format!(
            "GET /v2/ HTTP/1.1\r\nhost: ferry\r\nx-big: {}\r\n\r\n",
            "a".repeat(100 * 1024)
        );
        let _ = c.write_all(big.as_bytes()).await;
        let answer = read_to_close(&mut c).await;
        assert!(
            answer.starts_with("HTTP/1.1 431"),
            "headers over maxHeaderSize: {answer:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_told_the_stream_limit() {
    let up = FakeRegistry::start().await;
    let ferry = Ferry::start_with(&up.url(), |c| c.listener.max_streams = 7).await;
    let tcp = tokio::net::TcpStream::connect(ferry.addr).await.unwrap();
    let (mut send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    // One exchange, so the server's SETTINGS have arrived and been acked.
    let req = http::Request::get(ferry.url("/v2/")).body(()).unwrap();
    let (answer, _) = send.send_request(req, true).unwrap();
    let resp = tokio::select! {
        r = answer => r.unwrap(),
        c = &mut conn => panic!("the connection ended first: {c:?}"),
    };
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        conn.max_concurrent_send_streams(),
        7,
        "ferry.maxConcurrentStreams in the server's SETTINGS"
    );
}
