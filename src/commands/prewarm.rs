//! `ferry prewarm --server URL IMAGE...`: starts a prewarm job on a
//! running ferry (`POST /ferry/v1/prewarm`), shows its progress (a bar on
//! a terminal, a line every few seconds otherwise) and exits 0 only when
//! every blob of every image is stored; otherwise prints the failures and
//! exits 1 (2 when the job could not be started). The token comes from
//! `--token` or `FERRY_ADMIN_TOKEN` (an environment variable stays out of
//! `ps`).

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What `ferry prewarm` was asked.
#[derive(clap::Args)]
pub struct Args {
    /// The ferry to ask: http(s)://host:port (its main or metrics listener).
    #[arg(long)]
    pub server: String,
    /// A token of ferry.adminTokens [default: $FERRY_ADMIN_TOKEN].
    #[arg(long)]
    pub token: Option<String>,
    /// Only these platforms of a multi-platform image (os/arch[/variant]); repeatable.
    #[arg(long = "platform")]
    pub platforms: Vec<String>,
    /// In a cluster, have every replica take a copy (one ferry per node).
    #[arg(long)]
    pub every_replica: bool,
    /// Images: [registry-host/]name[:tag|@digest].
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub async fn run(args: Args) -> ExitCode {
    let Some(token) = args
        .token
        .or_else(|| std::env::var("FERRY_ADMIN_TOKEN").ok())
    else {
        eprintln!("ferry: prewarm needs an admin token: --token or FERRY_ADMIN_TOKEN");
        return ExitCode::from(2);
    };
    let server = args.server.trim_end_matches('/').to_string();
    let client = client();
    let body = serde_json::json!({
        "images": args.images,
        "platforms": args.platforms,
        "everyReplica": args.every_replica,
    });
    let started = send(
        &client,
        http::Method::POST,
        &format!("{server}/ferry/v1/prewarm"),
        &token,
        body.to_string(),
    )
    .await;
    let id = match started {
        Ok((http::StatusCode::ACCEPTED, v)) if v["id"].is_string() => {
            v["id"].as_str().unwrap_or_default().to_string()
        }
        Ok((status, v)) => {
            eprintln!(
                "ferry: {server} refused the prewarm ({status}): {}",
                message(&v)
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("ferry: {server}: {e}");
            return ExitCode::from(2);
        }
    };
    let url = format!("{server}/ferry/v1/prewarm/{id}");
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = indicatif::ProgressBar::new(0);
    if terminal {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes} of {total_bytes}  {msg}  {elapsed}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("prewarm {id}"));
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        eprintln!("prewarm {id} started on {server}");
    }
    let mut last_line = std::time::Instant::now();
    let mut misses = 0;
    let progress = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        match send(&client, http::Method::GET, &url, &token, String::new()).await {
            Ok((http::StatusCode::OK, v)) => {
                misses = 0;
                let n = |k: &str, f: &str| v[k][f].as_u64().unwrap_or(0);
                bar.set_length(n("bytes", "total"));
                bar.set_position(n("bytes", "done"));
                bar.set_message(format!(
                    "{} of {} blobs",
                    n("blobs", "done"),
                    n("blobs", "total")
                ));
                if !terminal && last_line.elapsed() > Duration::from_secs(5) {
                    eprintln!(
                        "prewarm {id}: {} of {} blobs, {} of {} bytes",
                        n("blobs", "done"),
                        n("blobs", "total"),
                        n("bytes", "done"),
                        n("bytes", "total")
                    );
                    last_line = std::time::Instant::now();
                }
                if v["state"] != "running" {
                    break v;
                }
            }
            Ok((status, v)) => {
                eprintln!("ferry: {url}: {status}: {}", message(&v));
                return ExitCode::FAILURE;
            }
            // A replica restarting, a balancer hiccup: a few misses in a row
            // are waited out; a server gone for good is not.
            Err(e) if misses < 20 => {
                misses += 1;
                tracing::debug!(error = %e, "prewarm: asking for progress failed");
            }
            Err(e) => {
                eprintln!("ferry: {url}: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    bar.finish_and_clear();
    let n = |k: &str, f: &str| progress[k][f].as_u64().unwrap_or(0);
    println!(
        "prewarm {id}: {}: {} of {} blobs, {} of {} bytes",
        progress["state"].as_str().unwrap_or("?"),
        n("blobs", "done"),
        n("blobs", "total"),
        n("bytes", "done"),
        n("bytes", "total")
    );
    for r in progress["replicas"].as_array().into_iter().flatten() {
        let n = |k: &str, f: &str| r[k][f].as_u64().unwrap_or(0);
        println!(
            "  replica {}: {}: {} of {} blobs, {} of {} bytes",
            r["peer"].as_str().unwrap_or("?"),
            r["state"].as_str().unwrap_or("?"),
            n("blobs", "done"),
            n("blobs", "total"),
            n("bytes", "done"),
            n("bytes", "total")
        );
    }
    let failures = progress["failures"].as_array().cloned().unwrap_or_default();
    for f in &failures {
        println!("  failed: {}", f.as_str().unwrap_or("?"));
    }
    if progress["state"] == "done" && failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

/// One request with the token; the status and the JSON answered.
async fn send(
    client: &HttpClient,
    method: http::Method,
    url: &str,
    token: &str,
    body: String,
) -> Result<(http::StatusCode, serde_json::Value), String> {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let asked = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, serde_json::from_slice(&bytes).unwrap_or_default()))
    };
    tokio::time::timeout(Duration::from_secs(30), asked)
        .await
        .map_err(|_| "no answer within 30 s".to_string())?
}

/// The message of an OCI error answer.
fn message(v: &serde_json::Value) -> String {
    v["errors"][0]["message"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| v.to_string())
}
