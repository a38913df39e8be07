//! The cluster: replicas that share one upstream fetch per blob, on the
//! model of groupcache's peer picker. Every blob digest has one owner among
//! the live peers ([`rendezvous`] hashing). A replica that lacks a blob it
//! does not own asks the owner for it over ferry's own HTTP, with a signed
//! peer request ([`signature`]); the owner serves it exactly as it serves a
//! client (its own in-flight dedup, store and upstream fetch) and never
//! forwards a peer request again. The asking replica streams the owner's
//! bytes to its clients at once and verifies and stores them as it would
//! an upstream's (see the coordinator's fetch).
//!
//! This module answers "who owns this key?" ([`Cluster::owner`]), signs and
//! checks peer requests, sends them, and keeps the membership fresh
//! ([`Cluster::run`]: DNS and readiness probes).

mod key;
pub mod membership;
pub mod rendezvous;
mod replay;
pub mod signature;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::{ClusterConfig, ConfigError, PeerSource};
use crate::metrics::{ClusterMetrics, PeerLabels, PeerReasonLabels};
use crate::oci::{Digest, RepoName, Tag};
use crate::routing::fingerprint::{self, Fingerprints};
use crate::routing::{Origin, Target};

pub use key::OwnerKey;
pub use membership::PeerState;
pub use signature::Signed;

/// A peer that does not accept a connection this fast is taken as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    listen: SocketAddr,
    members: membership::Members,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// `http` or `https` (behind `http.tls`, peers speak TLS).
    scheme: &'static str,
    /// How long a peer may take to answer a blob request's headers (it may
    /// be waiting for its own upstream).
    answer_timeout: Duration,
    /// Failed fills, by peer and reason; registries routed differently,
    /// by peer.
    metrics: ClusterMetrics,
    /// This replica's routing fingerprints, to compare with each peer's.
    routing: Fingerprints,
    /// When a bad request signature was last logged, and how many since.
    bad_logged: std::sync::Mutex<(Option<tokio::time::Instant>, u64)>,
    /// The signed requests taken lately, to refuse one sent again.
    replays: replay::Replays,
}

/// What a request's peer headers make of it.
#[derive(Debug)]
pub enum PeerCheck {
    /// No peer headers: an ordinary client's request.
    Client,
    /// Signed with this cluster's secret, recent, and new.
    Peer(Signed),
    /// Peer headers that do not check out, for this reason: the request is
    /// answered as an ordinary client's.
    Refused(Refusal),
}

/// Why a request's peer headers were not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another secret, another request's signature, or out of the time
    /// window.
    BadSignature,
    /// Signed right, but this replica took the same request before.
    Replayed,
}

/// A blob asked of a peer: `digest` as `local` names it, routed to
/// `target`.
#[derive(Debug, Clone, Copy)]
pub struct BlobAsk<'a> {
    pub local: &'a RepoName,
    pub target: &'a Target,
    pub digest: &'a Digest,
}

/// A bad peer request signature is logged at most this often.
const BAD_SIGNATURE_LOG_EVERY: Duration = Duration::from_secs(5);

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
    /// `listen` is this replica's listen address (to find itself among the
    /// peers); `answer_timeout` bounds the wait for a peer's answer;
    /// `routing` is this replica's routing, to compare with its peers'.
    pub fn new(
        config: &ClusterConfig,
        listen: SocketAddr,
        answer_timeout: Duration,
        metrics: ClusterMetrics,
        routing: Fingerprints,
    ) -> Result<Cluster, ConfigError> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(Cluster::client_tls(config)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let members = membership::Members::new(config.self_addr.clone());
        if let PeerSource::Static(list) = &config.peers {
            members.set_peers(list);
        }
        Ok(Cluster {
            config: config.clone(),
            listen,
            members,
            client: Client::builder(TokioExecutor::new()).build(https),
            scheme: if config.https { "https" } else { "http" },
            answer_timeout,
            metrics,
            routing,
            bad_logged: Default::default(),
            replays: Default::default(),
        })
    }

    /// How this replica speaks TLS to its peers: their certificates are
    /// checked against the web's roots and `certDir`'s CAs, and `certDir`'s
    /// client certificate is shown to a listener that asks for one.
    pub fn client_tls(config: &ClusterConfig) -> Result<rustls::ClientConfig, ConfigError> {
        let dir = config.cert_dir.as_deref();
        crate::upstream::tls::client_config(true, dir)
            .map_err(|e| ConfigError(format!("ferry.cluster.certDir: {e}")))
    }

    /// This replica's name among its peers, once known.
    pub fn me(&self) -> Option<String> {
        self.members.me()
    }

    /// Every other peer and whether it is live.
    pub fn peers(&self) -> Vec<PeerState> {
        self.members.peers()
    }

    /// The peer that owns `key`, or `None` when this replica owns it (or
    /// no other peer is live). Peers that route `key`'s registry otherwise
    /// than this replica (their fingerprint differs) are not asked.
    pub fn owner(&self, key: OwnerKey<'_>) -> Option<String> {
        let registry = key.registry();
        let key = key.bytes();
        let me = self.me();
        // Until this replica knows its name, its listen address is not
        // another peer either.
        let listen = self.listen.to_string();
        let mut live = self.members.live_for(registry);
        live.retain(|p| *p != listen);
        if live.is_empty() {
            return None;
        }
        let all = live.iter().map(String::as_str).chain(me.as_deref());
        let owner = rendezvous::rank(all, &key)[0];
        (Some(owner) != me.as_deref()).then(|| owner.to_string())
    }

    /// A fill from `peer` failed for `reason`: it leaves this replica's
    /// ring at once, for longer with each failure in a row, whatever its
    /// probes say meanwhile (see [`membership::Members::fail`]); counted
    /// by peer and reason, and logged.
    pub fn fail(&self, peer: &str, reason: &'static str) {
        let labels = PeerReasonLabels {
            peer: peer.to_string(),
            reason,
        };
        self.metrics.peer_failures.get_or_create(&labels).inc();
        if let Some(out) = self.members.fail(peer, reason) {
            tracing::warn!(
                peer,
                reason,
                left_out_s = out.as_secs(),
                "cluster peer failed a fill; left out of the ring"
            );
        }
    }

    /// Resolves once `peer` is out of this replica's ring (a probe found
    /// it not ready, or a fill from it failed). A wait on a peer races this:
    /// a peer that froze is left for elsewhere within a probe, not after
    /// the time its upstream may take.
    pub async fn left_out(&self, peer: &str) {
        let mut changes = self.members.changes();
        while self.members.is_live(peer) {
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Signs the answer to a verified peer request (`request` are its
    /// headers), so the asking replica can tell it from a forgery.
    pub fn sign_answer(&self, request: &HeaderMap, status: u16, answer: &mut HeaderMap) {
        let Some(sig) = request
            .get(signature::SIGNATURE)
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        let value = signature::sign_answer(self.secret(), sig, status, answer);
        answer.insert(signature::ANSWER, value);
    }

    /// How long a peer may stay silent (`peerTimeout`).
    pub fn peer_timeout(&self) -> Duration {
        self.config.peer_timeout
    }

    /// Whether `peer` is in this replica's ring now.
    pub fn is_live(&self, peer: &str) -> bool {
        self.members.is_live(peer)
    }

    /// A fill from `peer` succeeded: its failures in a row are forgotten.
    pub fn succeeded(&self, peer: &str) {
        self.members.succeeded(peer);
    }

    /// What the peer headers of `method path` make of it: a peer request
    /// if they are signed with this cluster's secret and this replica has
    /// not taken the same request before; anything else is answered as an
    /// ordinary client's.
    pub fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> PeerCheck {
        if !headers.contains_key(signature::SIGNATURE) {
            return PeerCheck::Client;
        }
        match signature::verify(self.secret(), method.as_str(), path, headers) {
            None => PeerCheck::Refused(Refusal::BadSignature),
            Some(s) if !self.replays.first_time(s.time, s.nonce, signature::now()) => {
                PeerCheck::Refused(Refusal::Replayed)
            }
            Some(s) => PeerCheck::Peer(s),
        }
    }

    /// A request carried peer headers that were refused: logged at most
    /// once every few seconds (a replica with the wrong secret sends many),
    /// with how many went unlogged since.
    pub fn refused(&self, headers: &HeaderMap, why: Refusal) {
        let now = tokio::time::Instant::now();
        let mut last = self.bad_logged.lock().unwrap_or_else(|e| e.into_inner());
        last.1 += 1;
        if last
            .0
            .is_some_and(|t| now.duration_since(t) < BAD_SIGNATURE_LOG_EVERY)
        {
            return;
        }
        let from = headers
            .get(signature::PEER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?");
        match why {
            Refusal::BadSignature => tracing::warn!(from, not_logged = last.1 - 1,
                "a peer request's signature did not check out (another secret? clocks more than 60 s apart?); answered as an anonymous client's"),
            Refusal::Replayed => tracing::warn!(from, not_logged = last.1 - 1,
                "a signed peer request was sent again (replayed? someone captures the cluster's traffic); answered as an anonymous client's"),
        }
        *last = (Some(now), 0);
    }

    fn secret(&self) -> &[u8] {
        self.config.secret.expose().as_bytes()
    }

    /// Asks `peer` for the blob `digest` of `local` (routed to `target`)
    /// on behalf of `client`, from byte `from` on (a `Range` when not 0);
    /// returns its answer's head.
    pub async fn get_blob(
        &self,
        peer: &str,
        blob: BlobAsk<'_>,
        client: IpAddr,
        from: u64,
    ) -> Result<Response<Incoming>, PeerError> {
        let BlobAsk {
            local,
            target,
            digest,
        } = blob;
        let path = format!("/v2/{local}/blobs/{digest}");
        let route = target.peer_route();
        let mut headers = HeaderMap::new();
        if from > 0 {
            let range = http::HeaderValue::from_str(&format!("bytes={from}-"))
                .expect("a range is a header value");
            headers.insert(http::header::RANGE, range);
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
        let me = self.me().unwrap_or_else(|| self.listen.to_string());
        let mut req = Request::get(format!("{}://{peer}{path}", self.scheme))
            .body(Empty::new())
            .map_err(|e| PeerError::Unreachable {
                peer: peer.into(),
                cause: e.to_string(),
            })?;
        req.headers_mut().extend(headers);
        let client = client.to_string();
        let signed = signature::Request {
            from: &me,
            method: "GET",
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
            a = tokio::time::timeout(self.answer_timeout, self.client.request(req)) => a,
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
                    after: self.answer_timeout,
                })
            }
        }
    }

    /// Keeps the membership fresh until dropped: resolves `dns` every
    /// `dnsInterval`, finds this replica among the peers, and probes every
    /// peer's `/readyz` every `probeInterval`. `live` shows the live peers.
    pub async fn run(&self, live: Gauge) {
        let mut probes = tokio::time::interval(self.config.probe_interval);
        probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resolved = tokio::time::Instant::now();
        self.refresh().await;
        loop {
            probes.tick().await;
            if resolved.elapsed() >= self.config.dns_interval {
                self.refresh().await;
                resolved = tokio::time::Instant::now();
            }
            let peers = self.members.peers();
            let answers =
                futures::future::join_all(peers.iter().map(|p| self.probe(&p.addr))).await;
            for (p, answer) in peers.iter().zip(answers) {
                let ready = answer.is_some();
                if self.members.mark(&p.addr, ready) {
                    match ready {
                        true => tracing::info!(peer = %p.addr, "cluster peer ready"),
                        false => tracing::warn!(peer = %p.addr, "cluster peer not ready; left out"),
                    }
                }
                // A peer that sent no fingerprints (an older ferry) is taken
                // as routing alike.
                if let Some(Some(theirs)) = answer {
                    self.compare_routing(&p.addr, &theirs);
                }
            }
            live.set(self.members.live().len() as i64);
        }
    }

    /// The peer list again (DNS), and this replica's place in it.
    async fn refresh(&self) {
        let all = match &self.config.peers {
            PeerSource::Static(list) => list.clone(),
            PeerSource::Dns { name, port } => {
                match tokio::net::lookup_host((name.as_str(), *port)).await {
                    Ok(addrs) => {
                        let mut list: Vec<String> = addrs.map(|a| a.to_string()).collect();
                        list.sort();
                        list.dedup();
                        list
                    }
                    Err(e) => {
                        tracing::warn!(dns = %name, error = %e, "cannot resolve the cluster's peers; keeping the last list");
                        return;
                    }
                }
            }
        };
        if self.me().is_none() {
            match membership::find_self(&all, self.listen).await {
                Some(me) => {
                    tracing::info!(me = %me, "found this replica among the cluster's peers");
                    self.members.set_me(me);
                }
                None => tracing::warn!(listen = %self.listen,
                    "this replica is not among the cluster's peers (set ferry.cluster.self); it asks its peers but owns nothing"),
            }
        }
        self.members.set_peers(&all);
    }

    /// Whether `peer` answers `/readyz` with 200 in time (`None` if not),
    /// with the routing fingerprints it sent, if any.
    async fn probe(&self, peer: &str) -> Option<Option<Fingerprints>> {
        let req = Request::get(format!("{}://{peer}/readyz", self.scheme))
            .body(Empty::new())
            .ok()?;
        // A probe that takes longer than `peerTimeout` counts as a failure:
        // a peer that freezes is out of the ring within `probeInterval` +
        // `peerTimeout`, and every wait on it ends then (`left_out`).
        let timeout = self.config.peer_timeout;
        let answer = tokio::time::timeout(timeout, self.client.request(req)).await;
        match answer {
            Ok(Ok(r)) if r.status().is_success() => Some(
                r.headers()
                    .get(fingerprint::HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(Fingerprints::decode),
            ),
            _ => None,
        }
    }

    /// This replica's routing fingerprints, for its `/readyz`.
    pub fn routing(&self) -> &Fingerprints {
        &self.routing
    }

    /// Leaves `peer` out for the registries it routes otherwise than this
    /// replica (`theirs`, from its probe); a change is logged and counted.
    fn compare_routing(&self, peer: &str, theirs: &Fingerprints) {
        let differ = self.routing.differing(theirs);
        let labels = PeerLabels {
            peer: peer.to_string(),
        };
        let count = differ.len() as i64;
        let list: Vec<&str> = differ.iter().map(String::as_str).collect();
        let list = list.join(", ");
        if self.members.set_routes_differ(peer, differ) {
            self.metrics
                .routing_differs
                .get_or_create(&labels)
                .set(count);
            match count {
                0 => tracing::info!(
                    peer,
                    "cluster peer routes every registry as this replica does"
                ),
                _ => tracing::warn!(peer, registries = %list,
                    "cluster peer routes these registries otherwise than this replica (another config?); left out for them"),
            }
        }
    }

    /// The settings as `ferry check-config` prints them.
    pub fn describe(config: &ClusterConfig) -> String {
        let peers = match &config.peers {
            PeerSource::Static(list) => format!("peers {}", list.join(", ")),
            PeerSource::Dns { name, port } => format!("peers from DNS {name} on port {port}"),
        };
        let tls = match (config.https, &config.cert_dir) {
            (false, _) => "plain HTTP".to_string(),
            (true, None) => "HTTPS (the web's roots)".to_string(),
            (true, Some(d)) => format!("HTTPS (CAs and client certificate from {})", d.display()),
        };
        format!(
            "cluster: {peers}; self {}; secret set; peers over {tls}; probe every {:?}, peer timeout {:?}, DNS every {:?}\n",
            config
                .self_addr
                .as_deref()
                .unwrap_or("(found by listen address)"),
            config.probe_interval,
            config.peer_timeout,
            config.dns_interval
        )
    }
}
