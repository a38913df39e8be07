//! `POST /ferry/v1/prewarm` warms images in the background and `GET
//! /ferry/v1/prewarm/<id>` tells how far it got; only with a bearer token
//! of `ferry.adminTokens`, on the main listener and the metrics listener.
//! Afterwards a client's pull is served from the store (the upstream saw
//! each blob once), and a platform filter leaves other platforms cold.

use crate::support;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const TOKEN: &str = "prewarm-token-0123456789";

/// A two-platform image of `repo:tag`: (amd64's blobs, arm64's blobs).
pub(crate) fn two_platforms(
    up: &FakeRegistry,
    repo: &str,
    tag: &str,
) -> (Vec<String>, Vec<String>) {
    let mut blobs = Vec::new();
    let mut children = Vec::new();
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        let config = Bytes::from(format!("{{\"architecture\":\"{arch}\"}}"));
        let config_len = config.len();
        let config = up.add_blob(config);
        let size = 200_000 + i;
        let layer = up.add_blob(blob_bytes(size, 700 + i as u64));
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_len}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":{size}}}]}}"#
        );
        let d = up.add_manifest(repo, None, OCI_MANIFEST, m.into());
        blobs.push(vec![config, layer]);
        children.push(format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":1,"platform":{{"architecture":"{arch}","os":"linux"}}}}"#
        ));
    }
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        children.join(",")
    );
    up.add_manifest(repo, Some(tag), OCI_INDEX, index.into());
    let arm = blobs.pop().unwrap();
    (blobs.pop().unwrap(), arm)
}

async fn with_tokens(up: &FakeRegistry) -> Ferry {
    Ferry::start_with(&up.url(), |c| {
        c.admin_tokens = ferry::config::AdminTokens::resolve(
            Some(vec![ferry::config::Secret::new(TOKEN)]),
            None,
            None,
        )
        .unwrap();
        c.listener.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

/// POSTs `body` to `url` with `token`: status, headers and the body.
pub(crate) async fn post(
    url: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, http::HeaderMap, serde_json::Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::builder().method(Method::POST).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = within(client.request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap()))
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = within(body.collect()).await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or_default(),
    )
}

/// Polls the job at `url` until it is no longer running.
pub(crate) async fn finished(url: &str) -> serde_json::Value {
    let auth = format!("Bearer {TOKEN}");
    within(async {
        loop {
            let w = request(Method::GET, url, &[("authorization", &auth)]).await;
            assert_eq!(w.status, StatusCode::OK, "{:?}", w.body);
            let v: serde_json::Value = serde_json::from_slice(&w.body).unwrap();
            if v["state"] != "running" {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prewarm_stores_the_platforms_asked_for_and_clients_then_pull_from_the_store() {
    let up = FakeRegistry::start().await;
    let (amd, arm) = two_platforms(&up, "team/app", "v1");
    let ferry = with_tokens(&up).await;
    let body = r#"{"images": ["team/app:v1"], "platforms": ["linux/amd64"]}"#;
    let (status, headers, v) = post(&ferry.url("/ferry/v1/prewarm"), Some(TOKEN), body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let location = headers["location"].to_str().unwrap().to_string();
    assert_eq!(location, format!("/ferry/v1/prewarm/{id}"));
    let done = finished(&ferry.url(&location)).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        done["blobs"],
        serde_json::json!({"done": 2, "total": 2}),
        "{done}"
    );
    assert_eq!(done["bytes"]["done"], done["bytes"]["total"], "{done}");
    assert!(done["bytes"]["total"].as_u64().unwrap() > 200_000, "{done}");
    assert_eq!(done["failures"], serde_json::json!([]));
    for b in &amd {
        assert!(ferry.has_blob(b), "amd64's {b} stored");
        assert_eq!(up.blob_gets(b), 1);
    }
    for b in &arm {
        assert!(!ferry.has_blob(b), "arm64 was not asked for");
    }
    // A client's pull of a warmed blob: from the store, no upstream GET.
    let w = within(get(&ferry.url(&format!("/v2/team/app/blobs/{}", amd[1])))).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(sha256(&w.body), amd[1]);
    assert_eq!(up.blob_gets(&amd[1]), 1, "served from the store");
    // The same API on the metrics listener; every platform without a filter.
    let metrics = format!("http://{}", ferry.metrics_addr.unwrap());
    let (status, headers, _) = post(
        &format!("{metrics}/ferry/v1/prewarm"),
        Some(TOKEN),
        r#"{"images": ["team/app:v1"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let all = finished(&format!(
        "{metrics}{}",
        headers["location"].to_str().unwrap()
    ))
    .await;
    assert_eq!(all["state"], "done", "{all}");
    assert_eq!(all["blobs"]["total"], 4, "{all}");
    for b in amd.iter().chain(&arm) {
        assert!(ferry.has_blob(b));
        assert_eq!(up.blob_gets(b), 1, "each blob fetched once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_needs_an_admin_token_and_says_what_is_wrong() {
    let up = FakeRegistry::start().await;
    two_platforms(&up, "team/app", "v1");
    let body = r#"{"images": ["team/app:v1"]}"#;
    // No tokens configured: off for everyone.
    let plain = Ferry::start(&up.url()).await;
    let (status, _, v) = post(&plain.url("/ferry/v1/prewarm"), Some(TOKEN), body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(v.to_string().contains("ferry.adminTokens"), "{v}");
    let ferry = with_tokens(&up).await;
    let url = ferry.url("/ferry/v1/prewarm");
    for token in [None, Some("prewarm-token-0123456788"), Some("")] {
        let (status, headers, _) = post(&url, token, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "token {token:?}");
        assert!(headers.contains_key("www-authenticate"));
    }
    let w = within(get(&ferry.url("/ferry/v1/prewarm/0123"))).await;
    assert_eq!(
        w.status,
        StatusCode::UNAUTHORIZED,
        "reading a job needs the token too"
    );
    assert_eq!(
        up.hits("GET", "/v2/team/app/manifests/v1"),
        0,
        "nothing was fetched"
    );
    // Bad requests are named.
    for (body, says) in [
        ("{", "images"),
        (r#"{"images": []}"#, "1 to 256"),
        (
            r#"{"images": ["team/app:v1"], "platforms": ["amd64"]}"#,
            "os/architecture",
        ),
        (r#"{"images": ["team/app:.bad"]}"#, ".bad"),
        (r#"{"images": ["a"], "extra": 1}"#, "extra"),
    ] {
        let (status, _, v) = post(&url, Some(TOKEN), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(v.to_string().contains(says), "{body}: {v}");
    }
    // An image that does not exist: the job fails and says which.
    let (status, headers, _) = post(&url, Some(TOKEN), r#"{"images": ["team/nope:v1"]}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let failed = finished(&ferry.url(headers["location"].to_str().unwrap())).await;
    assert_eq!(failed["state"], "failed");
    assert!(
        failed["failures"][0]
            .as_str()
            .unwrap()
            .starts_with("team/nope:v1: "),
        "{failed}"
    );
    let auth = format!("Bearer {TOKEN}");
    let unknown = within(request(
        Method::GET,
        &ferry.url("/ferry/v1/prewarm/0123"),
        &[("authorization", &auth)],
    ))
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}
