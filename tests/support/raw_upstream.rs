//! A scripted upstream that writes raw HTTP/1.1 bytes, for the faults a
//! well-behaved server library refuses to produce: bodies longer or
//! shorter than their `Content-Length`, bodies without end, a byte at a
//! time, redirects to itself. Every connection gets one answer from the
//! script and is closed (or held open, for a hang).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What follows the head.
#[derive(Clone)]
pub enum RawBody {
    /// These bytes, then close.
    Bytes(Bytes),
    /// These bytes, then the connection stays open and silent.
    ThenHang(Bytes),
    /// Pseudo-random bytes until the peer goes away.
    Endless,
    /// One byte of `bytes` every `every`.
    Drip { bytes: Bytes, every: Duration },
    /// Nothing at all, not even the head: a process that froze.
    Frozen,
}

/// One scripted answer: the status line and headers (no blank line), and
/// the body.
pub struct RawReply {
    pub head: String,
    pub body: RawBody,
}

impl RawReply {
    pub fn new(status: &str, headers: &[(&str, String)], body: RawBody) -> RawReply {
        let mut head = format!("HTTP/1.1 {status}\r\nConnection: close");
        for (k, v) in headers {
            head.push_str(&format!("\r\n{k}: {v}"));
        }
        RawReply { head, body }
    }
}

/// The request as the script sees it.
pub struct RawRequest {
    pub method: String,
    pub path: String,
    pub head: String,
}

type Script = dyn Fn(&RawRequest) -> RawReply + Send + Sync;

pub struct RawUpstream {
    pub addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start(
        script: impl Fn(&RawRequest) -> RawReply + Send + Sync + 'static,
    ) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let script: Arc<Script> = Arc::new(script);
        let (r, s) = (requests.clone(), sent.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (script, r, s) = (script.clone(), r.clone(), s.clone());
                tokio::spawn(async move {
                    let _ = answer(conn, &*script, &r, &s).await;
                });
            }
        });
        RawUpstream {
            addr,
            requests,
            sent,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Body bytes written so far (that the kernel accepted).
    pub fn body_bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

/// An endless tag list: every page holds `per_page` tags of `len`
/// characters and links to a next page.
pub fn endless_tags(per_page: usize, len: usize) -> impl Fn(&RawRequest) -> RawReply {
    move |req| {
        let page: usize = req
            .path
            .split("last=p")
            .nth(1)
            .and_then(|n| n.split('-').next()?.parse().ok())
            .unwrap_or(0);
        let tags: Vec<String> = (0..per_page)
            .map(|i| format!("p{:06}-{i:0>len$}", page + 1))
            .collect();
        let body = serde_json::json!({"name": "x", "tags": tags}).to_string();
        RawReply::new(
            "200 OK",
            &[
                ("Content-Length", body.len().to_string()),
                ("Content-Type", "application/json".into()),
                (
                    "Link",
                    format!(
                        "</v2/x/tags/list?n={per_page}&last=p{:06}-x>; rel=\"next\"",
                        page + 1
                    ),
                ),
            ],
            RawBody::Bytes(Bytes::from(body)),
        )
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    mut conn: tokio::net::TcpStream,
    script: &Script,
    requests: &AtomicUsize,
    sent: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut words = head.split_whitespace();
    let request = RawRequest {
        method: words.next().unwrap_or_default().to_string(),
        path: words.next().unwrap_or_default().to_string(),
        head: head.clone(),
    };
    requests.fetch_add(1, Ordering::SeqCst);
    let reply = script(&request);
    if let RawBody::Frozen = reply.body {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return Ok(());
    }
    conn.write_all(format!("{}\r\n\r\n", reply.head).as_bytes())
        .await?;
    if request.method == "HEAD" {
        return Ok(());
    }
    match reply.body {
        RawBody::Bytes(b) => {
            conn.write_all(&b).await?;
            sent.fetch_add(b.len() as u64, Ordering::SeqCst);
        }
        RawBody::ThenHang(b) => {
            conn.write_all(&b).await?;
            sent.fetch_add(b.len() as u64, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        RawBody::Endless => {
            let block = super::blob_bytes(64 * 1024, 99);
            loop {
                conn.write_all(&block).await?;
                sent.fetch_add(block.len() as u64, Ordering::SeqCst);
            }
        }
        RawBody::Drip { bytes, every } => {
            for b in bytes.iter() {
                conn.write_all(&[*b]).await?;
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(every).await;
            }
        }
        RawBody::Frozen => unreachable!("answered above"),
    }
    conn.shutdown().await
}
