//! A small HTTP client for tests: whole responses, streamed bodies, raw
//! requests for paths a URL parser would refuse.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub type TestClient = Client<HttpConnector, Empty<Bytes>>;

pub fn client() -> TestClient {
    // No pooling: every request its own connection, like separate clients.
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// A response whose body was read to its end (or to its error).
#[derive(Debug)]
pub struct Whole {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Set when the body ended with an error instead of cleanly.
    pub body_error: Option<String>,
}

impl Whole {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn error_code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not OCI error JSON ({e}): {:?}", self.body));
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

pub async fn request(method: Method, url: &str, headers: &[(&str, &str)]) -> Whole {
    let resp = send(method, url, headers).await;
    read_whole(resp).await
}

pub async fn get(url: &str) -> Whole {
    request(Method::GET, url, &[]).await
}

/// A GET whose connection may break before the response head (an aborted
/// fetch of a small blob can end the connection that fast): Err then.
pub async fn try_get(url: &str) -> Result<Whole, String> {
    let req = Request::builder().uri(url).body(Empty::new()).unwrap();
    match client().request(req).await {
        Ok(resp) => Ok(read_whole(resp).await),
        Err(e) => Err(format!("request to {url} failed: {e}")),
    }
}

pub async fn send(method: Method, url: &str, headers: &[(&str, &str)]) -> http::Response<Incoming> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    client()
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("request to {url} failed: {e}"))
}

pub async fn read_whole(resp: http::Response<Incoming>) -> Whole {
    let (parts, mut body) = resp.into_parts();
    let mut out = Vec::new();
    let mut body_error = None;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d);
                }
            }
            Some(Err(e)) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    Whole {
        status: parts.status,
        headers: parts.headers,
        body: out.into(),
        body_error,
    }
}

/// Reads body frames until at least `n` bytes arrived; returns them.
/// A client that gives up: starts a GET of `url`, reads its first bytes
/// and goes away.
pub async fn start_and_leave(url: &str) {
    let resp = super::within(send(Method::GET, url, &[])).await;
    let mut body = resp.into_body();
    super::within(read_at_least(&mut body, 1)).await;
}

pub async fn read_at_least(body: &mut Incoming, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < n {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d);
                }
            }
            other => panic!("body ended after {} bytes: {other:?}", out.len()),
        }
    }
    out
}

/// Sends a raw HTTP/1.1 request line (any path, unparsed) and returns the
/// status and body of the response.
pub async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}
