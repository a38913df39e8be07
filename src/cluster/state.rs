//! The [`Cluster`] itself: its settings, members, HTTP client, metrics
//! and routing fingerprints, and what needs them all: who owns a key,
//! failing and restoring peers, checking peer requests and signing
//! answers. Asking peers is [`super::asking`], probing them
//! [`super::probing`].

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::key::OwnerKey;
use super::membership::{self, PeerState};
use super::signature::{self, Signed};
use super::{rendezvous, replay};
use crate::config::{ClusterConfig, ConfigError, PeerSource};
use crate::metrics::{ClusterMetrics, PeerReasonLabels};
use crate::routing::fingerprint::Fingerprints;

/// A peer that does not accept a connection this fast is taken as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Cluster {
    pub(super) config: ClusterConfig,
    pub(super) listen: SocketAddr,
    pub(super) members: membership::Members,
    pub(super) client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `http` or `https` (behind `http.tls`, peers speak TLS).
    pub(super) scheme: &'static str,
    /// How long a peer may take to answer a blob request's headers (it may
    /// be waiting for its own upstream).
    pub(super) answer_timeout: Duration,
    /// Failed fills, by peer and reason; registries routed differently,
    /// by peer.
    pub(super) metrics: ClusterMetrics,
    /// This replica's routing fingerprints, to compare with each peer's.
    pub(super) routing: Fingerprints,
    /// When a bad request signature was last logged, and how many since.
    pub(super) bad_logged: std::sync::Mutex<(Option<tokio::time::Instant>, u64)>,
    /// The signed requests taken lately, to refuse one sent again.
    pub(super) replays: replay::Replays,
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

/// A bad peer request signature is logged at most this often.
const BAD_SIGNATURE_LOG_EVERY: Duration = Duration::from_secs(5);

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
        // Only peers of the list are counted: a lie report names any
        // `host:port` it likes.
        if let Some(out) = self.members.fail(peer, reason) {
            self.metrics.peer_failures.get_or_create(&labels).inc();
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

    /// This replica's zone (`zone`), if it has one.
    pub fn zone(&self) -> Option<&str> {
        self.config.zone.as_deref()
    }

    /// The zone `peer` said it is in, if any.
    pub fn zone_of(&self, peer: &str) -> Option<String> {
        self.members.zone_of(peer)
    }

    /// The zone of the peer `id` (see [`crate::routing::PeerId`]), if it
    /// said one.
    pub fn zone_of_id(&self, id: crate::routing::PeerId) -> Option<String> {
        let peer = self
            .members
            .peers()
            .into_iter()
            .find(|p| crate::routing::PeerId::of(&p.addr) == id)?;
        peer.zone
    }

    /// How many peers this replica sends one blob to at a time (`fanout`).
    pub fn fanout(&self) -> usize {
        self.config.fanout
    }

    /// How long a peer may stay silent (`peerTimeout`).
    pub fn peer_timeout(&self) -> Duration {
        self.config.peer_timeout
    }

    /// The peers in this replica's ring that route `registry` as it does.
    pub fn live_for(&self, registry: &str) -> Vec<String> {
        self.members.live_for(registry)
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
                "a signed peer request was sent again (replayed? someone captures the cluster's traffic); refused"),
        }
        *last = (Some(now), 0);
    }

    pub(super) fn secret(&self) -> &[u8] {
        self.config.secret.expose().as_bytes()
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
            "cluster: {peers}; self {}; secret set; peers over {tls}; probe every {:?}, peer timeout {:?}, DNS every {:?}; a blob sent to at most {} peers at a time{}\n",
            config
                .self_addr
                .as_deref()
                .unwrap_or("(found by listen address)"),
            config.probe_interval,
            config.peer_timeout,
            config.dns_interval,
            config.fanout,
            match &config.zone {
                Some(z) => format!("; zone {z}"),
                None => String::new(),
            }
        )
    }
}
