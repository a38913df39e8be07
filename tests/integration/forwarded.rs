//! `X-Forwarded-For` / `Forwarded` are believed only from trusted proxies:
//! the access log names the client behind a trusted load balancer, and the
//! real peer when an untrusted one sends the same headers.
//!
//! One test in its own binary: it installs a global log subscriber that
//! writes JSON lines into memory.

use crate::support;

use std::sync::{Arc, Mutex};

use http::Method;
use support::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The `client` field of the access-log line for `path`.
    fn client_of(&self, path: &str) -> Option<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["fields"]["message"] == "request" && v["fields"]["path"] == path)
            .and_then(|v| v["fields"]["client"].as_str().map(str::to_owned))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .init();

    let trusting = Ferry::start_with("http://127.0.0.1:1", |c| {
        c.listener.trusted_proxies = ferry::config::parse_proxies(&["127.0.0.0/8".into()]).unwrap();
    })
    .await;
    let untrusting = Ferry::start("http://127.0.0.1:1").await;
    let xff = [("x-forwarded-for", "198.51.100.9, 203.0.113.7")];
    within(request(Method::GET, &trusting.url("/v2/?a"), &xff)).await;
    within(request(
        Method::GET,
        &trusting.url("/v2/_catalog"),
        &[("forwarded", "for=\"[2001:db8::5]:1234\";proto=https")],
    ))
    .await;
    within(request(Method::GET, &untrusting.url("/v2/"), &xff)).await;

    assert_eq!(
        logs.client_of("/v2/_catalog").as_deref(),
        Some("2001:db8::5")
    );
    let clients: Vec<String> = {
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "request" && v["fields"]["path"] == "/v2/")
            .filter_map(|v| v["fields"]["client"].as_str().map(str::to_owned))
            .collect()
    };
    // Trusted: the nearest untrusted hop. Untrusted: the peer itself.
    assert_eq!(
        clients,
        vec!["203.0.113.7".to_string(), "127.0.0.1".to_string()]
    );
}
