//! Asking the other replicas to prewarm too (`"everyReplica": true`): a
//! signed `POST /ferry/v1/prewarm` to each live peer starts the same job
//! there (without `everyReplica`), and signed `GET`s follow it. The
//! request body is bound to the signature ([`body_binding`] is what the
//! signature's repository field carries), and every answer is signed by
//! the peer for this very request with the digest of its JSON body
//! (`Docker-Content-Digest`), so a forger can neither start a job on a
//! replica nor report one done.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Limited};

use super::asking::PeerError;
use super::state::Cluster;
use crate::oci::Digest;
use crate::routing::Origin;

/// Where the operations API takes prewarm jobs.
pub const PREWARM_PATH: &str = "/ferry/v1/prewarm";
/// The largest answer read from a peer.
const MAX_ANSWER: usize = 1 << 20;

/// What the signature of a peer's prewarm request names as its
/// repository: the digest of its body.
pub fn body_binding(body: &[u8]) -> String {
    format!("prewarm {}", Digest::sha256_of(body))
}

impl Cluster {
    /// Starts a prewarm of `body` (a prewarm request's JSON) on `peer`;
    /// returns the job's id there.
    pub async fn start_prewarm(&self, peer: &str, body: Bytes) -> Result<String, PeerError> {
        let repo = body_binding(&body);
        let v = self
            .ask_json(peer, Method::POST, PREWARM_PATH, &repo, body)
            .await?;
        v["id"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| PeerError::Unreachable {
                peer: peer.into(),
                cause: format!("its prewarm answer has no id: {v}"),
            })
    }

    /// The progress of job `id` on `peer`, as its operations API answers it.
    pub async fn prewarm_progress(
        &self,
        peer: &str,
        id: &str,
    ) -> Result<serde_json::Value, PeerError> {
        let path = format!("{PREWARM_PATH}/{id}");
        let repo = body_binding(b"");
        self.ask_json(peer, Method::GET, &path, &repo, Bytes::new())
            .await
    }

    /// A signed request whose answer must be a signed 200 carrying the
    /// digest of its JSON body.
    async fn ask_json(
        &self,
        peer: &str,
        method: Method,
        path: &str,
        repo: &str,
        body: Bytes,
    ) -> Result<serde_json::Value, PeerError> {
        let client = Origin::background().addr();
        let wait = self.answer_timeout;
        let resp = self
            .send(
                method,
                peer,
                path,
                repo,
                client,
                (HeaderMap::new(), body),
                wait,
            )
            .await?;
        let failed = |cause: String| PeerError::Unreachable {
            peer: peer.into(),
            cause,
        };
        // `send` checked the signature of a 200 (and of a 404).
        if resp.status() != StatusCode::OK {
            return Err(failed(format!("{path} answered {}", resp.status())));
        }
        let claimed = resp
            .headers()
            .get(http::header::HeaderName::from_static(
                "docker-content-digest",
            ))
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let read = Limited::new(resp.into_body(), MAX_ANSWER).collect();
        let bytes = match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => return Err(failed(format!("{path}: {e}"))),
            Err(_) => return Err(failed(format!("{path}: its answer stalled"))),
        };
        if claimed.as_deref() != Some(Digest::sha256_of(&bytes).to_string().as_str()) {
            self.fail(peer, "lied");
            return Err(failed(format!(
                "{path}: the answer is not the one it signed"
            )));
        }
        serde_json::from_slice(&bytes).map_err(|e| failed(format!("{path}: {e}")))
    }
}
