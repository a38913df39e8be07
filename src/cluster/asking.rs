//! Asking a peer: signed `GET`s of a blob or a tag, and the progress of a
//! blob the peer is receiving itself, each answer taken only with the
//! owner's signature for this very request.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use super::signature;
use super::state::Cluster;
use crate::oci::{Digest, RepoName, Tag};
use crate::routing::{Hops, Origin, Target};

/// A signed `GET <LIED_PATH><digest>?peer=<host:port>`: the sender caught
/// that peer sending bytes that are not the blob.
pub const LIED_PATH: &str = "/ferry/peer/lied/";

/// A blob asked of a peer: `digest` as `local` names it, routed to
/// `target`.
#[derive(Debug, Clone, Copy)]
pub struct BlobAsk<'a> {
    pub local: &'a RepoName,
    pub target: &'a Target,
    pub digest: &'a Digest,
}

/// Why a peer request failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No connection: the peer is down or unreachable.
    #[error("peer {peer}: cannot connect: {cause}")]
    Connect { peer: String, cause: String },
    /// Connected, but the exchange failed.
    #[error("peer {peer}: {cause}")]
    Unreachable { peer: String, cause: String },
    #[error("peer {peer} did not answer within {after:?}")]
    Timeout { peer: String, after: Duration },
    /// The answer does not carry the owner's signature for this request.
    #[error("peer {peer} answered without a valid signature; ignored")]
    Unsigned { peer: String },
    /// Left out of the ring while this replica waited for its answer (its
    /// readiness probe failed: frozen, or gone).
    #[error("peer {peer} left the ring while it was asked")]
    LeftOut { peer: String },
}

impl Cluster {
    /// Asks `peer` for the blob `digest` of `local` (routed to `target`)
    /// on behalf of `client`, from byte `from` on (a `Range` when not 0),
    /// standing at `hops` in the blob's fan-out tree; returns its answer's
    /// head.
    pub async fn get_blob(
        &self,
        peer: &str,
        blob: BlobAsk<'_>,
        client: IpAddr,
        from: u64,
        hops: Hops,
    ) -> Result<Response<Incoming>, PeerError> {
        self.get_blob_part(peer, blob, client, (from, None), hops)
            .await
    }

    /// [`Cluster::get_blob`], bytes `from..=last` only when `last` is given.
    pub async fn get_blob_part(
        &self,
        peer: &str,
        blob: BlobAsk<'_>,
        client: IpAddr,
        (from, last): (u64, Option<u64>),
        hops: Hops,
    ) -> Result<Response<Incoming>, PeerError> {
        let BlobAsk {
            local,
            target,
            digest,
        } = blob;
        let path = format!("/v2/{local}/blobs/{digest}");
        let route = target.peer_route();
        let mut headers = HeaderMap::new();
        if from > 0 || last.is_some() {
            let last = last.map(|l| l.to_string()).unwrap_or_default();
            let range = http::HeaderValue::from_str(&format!("bytes={from}-{last}"))
                .expect("a range is a header value");
            headers.insert(http::header::RANGE, range);
        }
        if let Some(h) = super::tree::encode(hops) {
            headers.insert(super::tree::HOPS, h);
        }
        self.get(peer, &path, &route, client, headers).await
    }

    /// Asks `peer` for `tag` of `local` (routed to `target`) as `accept`
    /// lists, on ferry's own behalf (a revalidation is shared by every
    /// client waiting for it); returns its answer's head.
    pub async fn get_tag(
        &self,
        peer: &str,
        local: &RepoName,
        target: &Target,
        tag: &Tag,
        accept: &str,
    ) -> Result<Response<Incoming>, PeerError> {
        let path = format!("/v2/{local}/manifests/{tag}");
        let mut headers = HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(accept) {
            headers.insert(http::header::ACCEPT, v);
        }
        let client = Origin::background().addr();
        self.get(peer, &path, &target.peer_route(), client, headers)
            .await
    }

    /// Sends a signed `GET path` for `repo` (see [`signature::REPO`]) on
    /// behalf of `client` to `peer`, with `headers` besides, and returns
    /// its answer's head. A peer that refuses the connection is left out
    /// of the ring.
    async fn get(
        &self,
        peer: &str,
        path: &str,
        repo: &str,
        client: IpAddr,
        headers: HeaderMap,
    ) -> Result<Response<Incoming>, PeerError> {
        let wait = self.answer_timeout;
        let body = Bytes::new();
        self.send(Method::GET, peer, path, repo, client, (headers, body), wait)
            .await
    }

    /// How many bytes of the blob `digest` `peer` has (stored, or received
    /// so far of a download in flight): a signed `HEAD`, answered with
    /// [`signature::HAVE`] within `peerTimeout`. A peer that stops sending
    /// a transfer is asked this: one that waits on its own upstream has no
    /// more than it sent.
    pub async fn progress(
        &self,
        peer: &str,
        blob: BlobAsk<'_>,
        client: IpAddr,
    ) -> Result<Option<u64>, PeerError> {
        let path = format!("/v2/{}/blobs/{}", blob.local, blob.digest);
        let route = blob.target.peer_route();
        let wait = self.config.peer_timeout;
        let head = HeaderMap::new();
        let resp = self
            .send(
                Method::HEAD,
                peer,
                &path,
                &route,
                client,
                (head, Bytes::new()),
                wait,
            )
            .await?;
        // Only a 200 is signed for sure (`send` passes other statuses
        // unchecked): nothing else says how far the peer is.
        if resp.status() != http::StatusCode::OK {
            return Ok(None);
        }
        Ok(resp
            .headers()
            .get(signature::HAVE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// Tells every live peer (signed, within `peerTimeout`, answers not
    /// awaited beyond that) that `liar` sent this replica bytes that are not
    /// `digest`: each leaves it out and drops a fill of that blob from it
    /// (see [`LIED_PATH`]).
    pub async fn tell_lied(&self, liar: &str, digest: &Digest) {
        let path = format!("{LIED_PATH}{digest}?peer={liar}");
        let wait = self.config.peer_timeout;
        let client = Origin::background().addr();
        let peers = self.members.live();
        let told = peers.iter().map(|p| {
            let head = HeaderMap::new();
            self.send(
                Method::GET,
                p,
                &path,
                "",
                client,
                (head, Bytes::new()),
                wait,
            )
        });
        let answers = futures::future::join_all(told).await;
        let reached = answers
            .iter()
            .filter(|a| matches!(a, Ok(r) if r.status() == http::StatusCode::NO_CONTENT))
            .count();
        tracing::info!(liar, %digest, told = reached, of = peers.len(),
            "told the other replicas that a peer lied about a blob");
    }

    /// Sends a signed `method path` for `repo` (see [`signature::REPO`]) on
    /// behalf of `client` to `peer`, with `headers` and `body` besides, and
    /// returns its answer's head if it comes within `wait`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send(
        &self,
        method: Method,
        peer: &str,
        path: &str,
        repo: &str,
        client: IpAddr,
        (headers, body): (HeaderMap, Bytes),
        wait: Duration,
    ) -> Result<Response<Incoming>, PeerError> {
        let me = self.me().unwrap_or_else(|| self.listen.to_string());
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}://{peer}{path}", self.scheme))
            .body(Full::new(body))
            .map_err(|e| PeerError::Unreachable {
                peer: peer.into(),
                cause: e.to_string(),
            })?;
        req.headers_mut().extend(headers);
        let client = client.to_string();
        let signed = signature::Request {
            from: &me,
            method: method.as_str(),
            path,
            repo,
            client: &client,
        };
        let signed = signature::sign(self.secret(), &signed);
        let request_signature = signed
            .get(signature::SIGNATURE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        req.headers_mut().extend(signed);
        let answer = tokio::select! {
            a = tokio::time::timeout(wait, self.client.request(req)) => a,
            () = self.left_out(peer) => {
                return Err(PeerError::LeftOut { peer: peer.into() });
            }
        };
        match answer {
            Ok(Ok(resp)) => {
                let (status, headers) = (resp.status().as_u16(), resp.headers());
                let trusted = matches!(status, 200 | 206 | 404);
                if !trusted
                    || signature::verify_answer(self.secret(), &request_signature, status, headers)
                {
                    // Any other status is only ever a reason to go
                    // elsewhere (a busy peer's listener refuses unsigned).
                    Ok(resp)
                } else {
                    // A 200, 206 or 404 not from a holder of the secret, or not
                    // for this request: nothing of it is taken.
                    self.fail(peer, "unsigned");
                    Err(PeerError::Unsigned { peer: peer.into() })
                }
            }
            Ok(Err(e)) if e.is_connect() => {
                self.fail(peer, "refused");
                Err(PeerError::Connect {
                    peer: peer.into(),
                    cause: crate::upstream::error_chain(&e),
                })
            }
            Ok(Err(e)) => {
                self.fail(peer, "unreachable");
                Err(PeerError::Unreachable {
                    peer: peer.into(),
                    cause: crate::upstream::error_chain(&e),
                })
            }
            Err(_) => {
                // Not a failure of the peer by itself: a loaded owner may
                // wait that long for its own fetch slot. A frozen one has
                // left the ring by then (its probe), which ended the wait.
                Err(PeerError::Timeout {
                    peer: peer.into(),
                    after: wait,
                })
            }
        }
    }
}
