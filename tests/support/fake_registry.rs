//! A scripted upstream registry on 127.0.0.1:0: blobs and manifests by
//! digest and tag, a hit counter per request, a byte counter, throttling,
//! gates that pause a body at an offset, and faults (wrong bytes, a
//! connection dropped mid-body, being switched off).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A switch that holds a body at an offset until opened.
#[derive(Clone)]
pub struct Gate {
    open: watch::Sender<bool>,
    /// Set once the body reached the gate's offset.
    reached: watch::Sender<bool>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            open: watch::Sender::new(false),
            reached: watch::Sender::new(false),
        }
    }
}

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Waits until a body has been paused at this gate.
    pub async fn reached(&self) {
        let mut rx = self.reached.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }
}

/// What goes wrong when a blob is served.
#[derive(Clone, Default)]
pub enum Fault {
    #[default]
    None,
    /// The right length, but one byte flipped in the middle.
    WrongBytes,
    /// Send this many bytes, then break the connection.
    DropAfter(u64),
    /// Send this many bytes, then wait for the gate.
    PauseAt(u64, Gate),
    /// Wait at each offset for its gate, in order (a test steps the
    /// transfer through several points).
    PauseAtEach(Arc<Vec<(u64, Gate)>>),
    /// Each request breaks at the next offset of this list past its start
    /// (the offset is used up), so a transfer breaks once per offset.
    DropAtEach(Arc<Mutex<Vec<u64>>>),
    /// The first request to reach the offset hangs there; later ones pass.
    StallOnce(u64, Arc<std::sync::atomic::AtomicBool>),
    /// A request whose range starts at or past the offset sends half of it,
    /// then hangs; requests that start before it pass.
    StallRangesFrom(u64),
}

impl Fault {
    pub fn drop_at_each(offsets: Vec<u64>) -> Fault {
        Fault::DropAtEach(Arc::new(Mutex::new(offsets)))
    }

    pub fn stall_once(at: u64) -> Fault {
        Fault::StallOnce(at, Arc::new(std::sync::atomic::AtomicBool::new(false)))
    }
}

#[derive(Clone)]
struct Blob {
    data: Parts,
    fault: Fault,
    /// Answer `Range` requests with the whole blob (200).
    ignore_range: bool,
    /// Body bytes sent for this blob.
    sent: Arc<AtomicU64>,
}

/// A blob's bytes as a short unique head and a (possibly shared) tail, so
/// benches can serve many distinct 1 GiB blobs from one buffer.
#[derive(Clone)]
struct Parts {
    head: Bytes,
    tail: Bytes,
}

impl Parts {
    fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    fn slice(&self, from: usize, to: usize) -> Bytes {
        let h = self.head.len();
        if to <= h {
            self.head.slice(from..to)
        } else if from >= h {
            self.tail.slice(from - h..to - h)
        } else {
            let mut v = self.head[from..].to_vec();
            v.extend_from_slice(&self.tail[..to - h]);
            v.into()
        }
    }
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, Blob>,
    /// Blobs served only under this repository (digest → repository).
    blob_repos: HashMap<String, String>,
    /// (repository, tag or digest) → (media type, bytes)
    manifests: HashMap<(String, String), (String, Bytes)>,
    hits: HashMap<String, usize>,
    /// A TLS registry's requests that came in plain HTTP: (path,
    /// `Authorization` or "").
    plain: Vec<(String, String)>,
    /// Digests of blob GETs, in the order they arrived.
    blob_order: Vec<String>,
    /// Bytes per second per connection; 0 = unthrottled.
    rate: u64,
    status_override: Option<StatusCode>,
    /// When set, every /v2/ request needs `Authorization: Bearer <token>`,
    /// handed out anonymously by `/token`.
    bearer: Option<String>,
    addr: Option<SocketAddr>,
    /// Blob GETs are redirected to this base URL.
    redirect_blobs: Option<String>,
    /// `Authorization` header of every request, in order ("" when absent).
    authorizations: Vec<String>,
    /// The next requests get this status (count, status, Retry-After).
    fail_next: Option<(usize, StatusCode, Option<u64>)>,
    /// Headers added to every answer (e.g. a rate-limit budget).
    extra_headers: Vec<(String, String)>,
    /// `Range` headers of blob GETs, in order.
    ranges: Vec<String>,
    /// Manifest requests wait for this gate.
    hold_manifests: Option<Gate>,
    /// (repository, tag, media type) → bytes served to clients whose
    /// `Accept` excludes the primary manifest's type.
    variants: HashMap<(String, String, String), Bytes>,
    /// (repository, digest) → referrers index JSON.
    referrers: HashMap<(String, String), String>,
    /// `/token` wants this `Authorization` (Basic) before it issues.
    token_credentials: Option<String>,
    /// Query strings of `/token` requests.
    token_queries: Vec<String>,
    /// The realm named in challenges, instead of this server's `/token`.
    realm: Option<String>,
    /// Every request needs this `Authorization: Basic` value.
    basic: Option<String>,
    /// HTTP versions of the requests received.
    versions: Vec<http::Version>,
    /// `https` when serving TLS.
    scheme: &'static str,
}

/// The fake registry. Dropping it stops it; [`FakeRegistry::stop`] also
/// waits until its listener and every connection are closed.
pub struct FakeRegistry {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    body_bytes: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    /// Ends (`None`) once the accept loop and every connection task ended.
    tasks_done: Option<tokio::sync::mpsc::Receiver<()>>,
    /// Connections open now.
    open: Arc<AtomicU64>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl FakeRegistry {
    /// Stops the registry and waits until its port is closed and every
    /// connection to it is gone.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        let mut done = self.tasks_done.take().expect("stopped once");
        drop(self);
        super::within(done.recv()).await;
    }

    pub async fn start() -> FakeRegistry {
        FakeRegistry::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> FakeRegistry {
        FakeRegistry::serve(TcpListener::bind(addr).await.unwrap(), None).await
    }

    /// A registry behind TLS (HTTP/1.1 and HTTP/2 by ALPN).
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        FakeRegistry::serve(listener, Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn serve(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) -> FakeRegistry {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            addr: Some(addr),
            scheme: if tls.is_some() { "https" } else { "http" },
            ..State::default()
        }));
        let body_bytes = Arc::new(AtomicU64::new(0));
        let stop = watch::Sender::new(false);
        let (st, bb, mut stop_rx) = (state.clone(), body_bytes.clone(), stop.subscribe());
        let (alive, tasks_done) = tokio::sync::mpsc::channel::<()>(1);
        let open = Arc::new(AtomicU64::new(0));
        let open_count = open.clone();
        let scheme_is_https = tls.is_some();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
                    _ = stop_rx.wait_for(|s| *s) => break,
                };
                let (st, bb, mut stop_conn) = (st.clone(), bb.clone(), stop_rx.clone());
                let tls = tls.clone();
                let alive = alive.clone();
                let open = open_count.clone();
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _alive = alive;
                    struct Closed(Arc<AtomicU64>);
                    impl Drop for Closed {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let _closed = Closed(open);
                    // A TLS registry also answers plain HTTP on its port
                    // (a TLS connection starts with a handshake record,
                    // 0x16), so a test can see what went out unencrypted.
                    let mut first = [0u8; 1];
                    let tls = match tls {
                        Some(_) if matches!(stream.peek(&mut first).await, Ok(1) if first[0] != 0x16) => {
                            None
                        }
                        t => t,
                    };
                    let plain_on_tls = scheme_is_https && tls.is_none();
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (st, bb) = (st.clone(), bb.clone());
                        if plain_on_tls {
                            let auth = authorization(&req);
                            st.lock()
                                .unwrap()
                                .plain
                                .push((req.uri().path().to_string(), auth));
                        }
                        async move { Ok::<_, Infallible>(handle(req, st, bb).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    match tls {
                        None => {
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = stop_conn.wait_for(|s| *s) => {}
                            }
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = stop_conn.wait_for(|s| *s) => {}
                            }
                        }
                    }
                });
            }
            // The port closes before this task counts as done.
            drop(listener);
            drop(alive);
        });
        FakeRegistry {
            addr,
            state,
            body_bytes,
            stop,
            tasks_done: Some(tasks_done),
            open,
        }
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.state.lock().unwrap().scheme, self.addr)
    }

    /// Forgets what it recorded of the requests so far (hits,
    /// `Authorization` values, token queries, versions), so a long run
    /// measures the server under test, not this fake's notes.
    pub fn forget_requests(&self) {
        let mut s = self.state.lock().unwrap();
        s.hits.clear();
        s.hits.shrink_to_fit();
        s.blob_order = Vec::new();
        s.authorizations = Vec::new();
        s.token_queries = Vec::new();
        s.versions = Vec::new();
    }

    /// Connections to this registry open now.
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::SeqCst)
    }

    /// `/token` issues tokens only to this user (Basic).
    pub fn require_token_credentials(&self, user: &str, password: &str) {
        self.state.lock().unwrap().token_credentials = Some(basic_value(user, password));
    }

    /// Every request needs Basic credentials.
    pub fn require_basic(&self, user: &str, password: &str) {
        self.state.lock().unwrap().basic = Some(basic_value(user, password));
    }

    /// Challenges name this realm (e.g. on another host).
    pub fn set_realm(&self, realm: &str) {
        self.state.lock().unwrap().realm = Some(realm.to_string());
    }

    /// Query strings of the `/token` requests received.
    pub fn token_queries(&self) -> Vec<String> {
        self.state.lock().unwrap().token_queries.clone()
    }

    /// HTTP versions of the requests received.
    pub fn versions(&self) -> Vec<http::Version> {
        self.state.lock().unwrap().versions.clone()
    }

    /// Adds a blob; returns its digest.
    pub fn add_blob(&self, data: Bytes) -> String {
        self.add_blob_with(data, Fault::None)
    }

    pub fn add_blob_with(&self, data: Bytes, fault: Fault) -> String {
        let digest = super::sha256(&data);
        self.state.lock().unwrap().blobs.insert(
            digest.clone(),
            Blob {
                data: Parts {
                    head: Bytes::new(),
                    tail: data,
                },
                fault,
                ignore_range: false,
                sent: Arc::default(),
            },
        );
        digest
    }

    /// A blob the registry serves only under `repo` (a private layer).
    pub fn add_blob_in(&self, repo: &str, data: Bytes) -> String {
        let digest = self.add_blob(data);
        self.state
            .lock()
            .unwrap()
            .blob_repos
            .insert(digest.clone(), repo.to_string());
        digest
    }

    /// Serves `data` under `digest` whatever it hashes to (an upstream that
    /// lies), with `fault`.
    pub fn add_blob_as(&self, digest: &str, data: Bytes, fault: Fault) {
        self.state.lock().unwrap().blobs.insert(
            digest.to_string(),
            Blob {
                data: Parts {
                    head: data,
                    tail: Bytes::new(),
                },
                fault,
                ignore_range: false,
                sent: Arc::default(),
            },
        );
    }

    /// A blob made of a unique `head` and a shared `tail` (benches).
    pub fn add_blob_parts(&self, head: Bytes, tail: Bytes) -> String {
        let mut h = ferry::oci::Hasher::new(ferry::oci::Algorithm::Sha256);
        h.update(&head);
        h.update(&tail);
        let digest = h.finish().to_string();
        self.state.lock().unwrap().blobs.insert(
            digest.clone(),
            Blob {
                data: Parts { head, tail },
                fault: Fault::None,
                ignore_range: false,
                sent: Arc::default(),
            },
        );
        digest
    }

    /// Body bytes sent for one blob, over all requests.
    pub fn blob_bytes_sent(&self, digest: &str) -> u64 {
        self.state
            .lock()
            .unwrap()
            .blobs
            .get(digest)
            .map_or(0, |b| b.sent.load(Ordering::SeqCst))
    }

    pub fn set_ignore_range(&self, digest: &str) {
        self.state
            .lock()
            .unwrap()
            .blobs
            .get_mut(digest)
            .unwrap()
            .ignore_range = true;
    }

    /// Redirects blob GETs to another server (`http://host:port`).
    pub fn redirect_blobs_to(&self, base: &str) {
        self.state.lock().unwrap().redirect_blobs = Some(base.to_string());
    }

    /// The `Authorization` headers received, one per request ("" if none).
    pub fn authorizations(&self) -> Vec<String> {
        self.state.lock().unwrap().authorizations.clone()
    }

    /// The `Range` headers of blob GETs received.
    pub fn ranges(&self) -> Vec<String> {
        self.state.lock().unwrap().ranges.clone()
    }

    /// The next `n` requests are answered with `status` (and Retry-After).
    /// Adds these headers to every answer from now on.
    pub fn set_extra_headers(&self, headers: &[(&str, &str)]) {
        self.state.lock().unwrap().extra_headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    pub fn fail_next(&self, n: usize, status: StatusCode, retry_after: Option<u64>) {
        self.state.lock().unwrap().fail_next = Some((n, status, retry_after));
    }

    /// Every request received, as "METHOD path", with counts.
    pub fn total_hits(&self) -> usize {
        self.state.lock().unwrap().hits.values().sum()
    }

    pub fn set_fault(&self, digest: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .blobs
            .get_mut(digest)
            .unwrap()
            .fault = fault;
    }

    /// Adds a manifest under its digest and, if given, a tag. Returns the digest.
    pub fn add_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: Bytes,
    ) -> String {
        let digest = super::sha256(&bytes);
        let mut s = self.state.lock().unwrap();
        let entry = (media_type.to_string(), bytes);
        s.manifests
            .insert((repo.into(), digest.clone()), entry.clone());
        if let Some(t) = tag {
            s.manifests.insert((repo.into(), t.into()), entry);
        }
        digest
    }

    /// Serves `bytes` under `reference` whatever their digest (for tests of
    /// an upstream that lies).
    pub fn add_raw_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: Bytes) {
        self.state
            .lock()
            .unwrap()
            .manifests
            .insert((repo.into(), reference.into()), (media_type.into(), bytes));
    }

    /// Requires anonymous bearer tokens, as Docker Hub does.
    pub fn require_bearer(&self, token: &str) {
        self.state.lock().unwrap().bearer = Some(token.to_string());
    }

    /// Manifest requests (GET and HEAD) wait until the gate opens.
    pub fn hold_manifests(&self, gate: Option<Gate>) {
        self.state.lock().unwrap().hold_manifests = gate;
    }

    /// Another manifest for `tag`, served to clients that do not accept the
    /// primary one's type but accept `media_type`.
    pub fn add_manifest_variant(&self, repo: &str, tag: &str, media_type: &str, bytes: Bytes) {
        self.state
            .lock()
            .unwrap()
            .variants
            .insert((repo.into(), tag.into(), media_type.into()), bytes);
    }

    /// Makes `/v2/<repo>/referrers/<digest>` answer with `index` (JSON).
    pub fn set_referrers(&self, repo: &str, digest: &str, index: &str) {
        self.state
            .lock()
            .unwrap()
            .referrers
            .insert((repo.into(), digest.into()), index.into());
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.state.lock().unwrap().rate = bytes_per_sec;
    }

    /// Answer every request with this status (e.g. 503), or stop doing so.
    pub fn set_status_override(&self, s: Option<StatusCode>) {
        self.state.lock().unwrap().status_override = s;
    }

    /// How many requests `"<METHOD> <path>"` received.
    pub fn hits(&self, method: &str, path: &str) -> usize {
        let key = format!("{method} {path}");
        *self.state.lock().unwrap().hits.get(&key).unwrap_or(&0)
    }

    pub fn blob_gets(&self, digest: &str) -> usize {
        let s = self.state.lock().unwrap();
        s.hits
            .iter()
            .filter(|(k, _)| k.starts_with("GET ") && k.ends_with(&format!("/blobs/{digest}")))
            .map(|(_, n)| *n)
            .sum()
    }

    /// Requests to this TLS registry that came in plain HTTP, as (path,
    /// `Authorization` or "").
    pub fn plain_requests(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().plain.clone()
    }

    /// Digests of the blob GETs received, in order.
    pub fn blob_get_order(&self) -> Vec<String> {
        self.state.lock().unwrap().blob_order.clone()
    }

    /// Blob body bytes sent so far, over all requests.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes.load(Ordering::SeqCst)
    }
}

/// A request's `Authorization` header, "" when it has none.
fn authorization(req: &Request<Incoming>) -> String {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    sent: Arc<AtomicU64>,
) -> Response<Body> {
    let extra = state.lock().unwrap().extra_headers.clone();
    let mut resp = answer(req, state, sent).await;
    for (k, v) in extra {
        let name = http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        resp.headers_mut().insert(name, v.parse().unwrap());
    }
    resp
}

async fn answer(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    sent: Arc<AtomicU64>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let (blob, manifest, rate, hold) = {
        let mut s = state.lock().unwrap();
        *s.hits.entry(format!("{method} {path}")).or_default() += 1;
        if method == http::Method::GET {
            if let Some((_, d)) = path.rsplit_once("/blobs/") {
                s.blob_order.push(d.to_string());
            }
        }
        s.authorizations.push(authorization(&req));
        if let Some(status) = s.status_override {
            return plain(status, "overridden");
        }
        if let Some((n, status, retry_after)) = s.fail_next {
            s.fail_next = (n > 1).then_some((n - 1, status, retry_after));
            let mut r = Response::builder().status(status);
            if let Some(secs) = retry_after {
                r = r.header("retry-after", secs);
            }
            return r.body(full(Bytes::from_static(b"{}"))).unwrap();
        }
        s.versions.push(req.version());
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(want) = s.basic.clone() {
            if given.as_deref() != Some(want.as_str()) {
                return Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .header("www-authenticate", r#"Basic realm="fake""#)
                    .body(full(Bytes::new()))
                    .unwrap();
            }
        }
        if let Some(token) = s.bearer.clone() {
            if path == "/token" {
                s.token_queries
                    .push(req.uri().query().unwrap_or("").to_string());
                if let Some(want) = &s.token_credentials {
                    if given.as_deref() != Some(want.as_str()) {
                        return plain(StatusCode::UNAUTHORIZED, "{}");
                    }
                }
                let body = format!(r#"{{"token":"{token}","expires_in":300}}"#);
                return Response::builder()
                    .header("content-type", "application/json")
                    .body(full(Bytes::from(body)))
                    .unwrap();
            }
            let want = format!("Bearer {token}");
            if given.as_deref() != Some(want.as_str()) {
                let rest = path.trim_start_matches("/v2/");
                let repo = rest.rsplitn(3, '/').nth(2).unwrap_or("");
                let realm = s
                    .realm
                    .clone()
                    .unwrap_or_else(|| format!("{}://{}/token", s.scheme, s.addr.unwrap()));
                let challenge = format!(
                    r#"Bearer realm="{realm}",service="fake",scope="repository:{repo}:pull""#
                );
                return Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .header("www-authenticate", challenge)
                    .body(full(Bytes::from_static(
                        br#"{"errors":[{"code":"UNAUTHORIZED","message":"token"}]}"#,
                    )))
                    .unwrap();
            }
        }
        let segs: Vec<&str> = path.trim_start_matches("/v2/").split('/').collect();
        let n = segs.len();
        let (mut blob, mut manifest) = (None, None);
        if path == "/v2/" {
            return plain(StatusCode::OK, "{}");
        }
        if path == "/v2/_catalog" {
            let mut repos: Vec<String> = s.manifests.keys().map(|(r, _)| r.clone()).collect();
            repos.sort();
            repos.dedup();
            let body = serde_json::json!({ "repositories": repos }).to_string();
            return Response::builder()
                .header("content-type", "application/json")
                .body(full(Bytes::from(body)))
                .unwrap();
        }
        if n >= 3 && segs[n - 2] == "blobs" {
            if let (Some(base), true) = (&s.redirect_blobs, method == Method::GET) {
                return Response::builder()
                    .status(StatusCode::TEMPORARY_REDIRECT)
                    .header("location", format!("{base}{path}"))
                    .body(full(Bytes::new()))
                    .unwrap();
            }
            let repo = segs[..n - 2].join("/");
            blob = s
                .blobs
                .get(segs[n - 1])
                .filter(|_| s.blob_repos.get(segs[n - 1]).is_none_or(|r| *r == repo))
                .cloned();
            if let Some(r) = req.headers().get("range").and_then(|v| v.to_str().ok()) {
                s.ranges.push(r.to_string());
            }
        }
        if n >= 3 && segs[n - 2] == "manifests" {
            let repo = segs[..n - 2].join("/");
            let reference = segs[n - 1].to_string();
            manifest = s.manifests.get(&(repo.clone(), reference.clone())).cloned();
            let accept = req
                .headers()
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if let Some((t, _)) = &manifest {
                if !accept.is_empty() && !accept.contains(t.as_str()) {
                    let variant = s
                        .variants
                        .iter()
                        .find(|((r, tag, mt), _)| {
                            *r == repo && *tag == reference && accept.contains(mt.as_str())
                        })
                        .map(|((_, _, mt), b)| (mt.clone(), b.clone()));
                    if variant.is_some() {
                        manifest = variant;
                    }
                }
            }
        }
        if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
            let repo = segs[..n - 2].join("/");
            let mut tags: Vec<String> = s
                .manifests
                .keys()
                .filter(|(r, t)| *r == repo && !t.contains(':'))
                .map(|(_, t)| t.clone())
                .collect();
            tags.sort();
            if tags.is_empty() {
                return plain(
                    StatusCode::NOT_FOUND,
                    r#"{"errors":[{"code":"NAME_UNKNOWN","message":"x"}]}"#,
                );
            }
            let body = serde_json::json!({"name": repo, "tags": tags}).to_string();
            return Response::builder()
                .header("content-type", "application/json")
                .body(full(Bytes::from(body)))
                .unwrap();
        }
        if n >= 3 && segs[n - 2] == "referrers" {
            let repo = segs[..n - 2].join("/");
            return match s.referrers.get(&(repo, segs[n - 1].to_string())) {
                Some(index) => Response::builder()
                    .header("content-type", "application/vnd.oci.image.index.v1+json")
                    .body(full(Bytes::from(index.clone())))
                    .unwrap(),
                None => plain(StatusCode::NOT_FOUND, "{}"),
            };
        }
        (blob, manifest, s.rate, s.hold_manifests.clone())
    };
    if let Some(gate) = hold.filter(|_| manifest.is_some()) {
        gate.reached.send_replace(true);
        let mut rx = gate.open.subscribe();
        let _ = rx.wait_for(|o| *o).await;
    }
    if let Some((media_type, bytes)) = manifest {
        let digest = super::sha256(&bytes);
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            bytes.clone()
        };
        return Response::builder()
            .header("content-type", media_type)
            .header("content-length", bytes.len())
            .header("docker-content-digest", digest)
            .body(full(body))
            .unwrap();
    }
    let Some(blob) = blob else {
        return plain(
            StatusCode::NOT_FOUND,
            r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}"#,
        );
    };
    let len = blob.data.len() as u64;
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range)
        .filter(|_| !blob.ignore_range)
        .filter(|(a, _)| *a < len);
    let mut builder = Response::builder()
        .header("content-type", "application/octet-stream")
        .header("etag", "\"fake-etag\"");
    let (start, end) = match range {
        Some((a, b)) => {
            let last = b.unwrap_or(len - 1).min(len - 1);
            builder = builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header("content-range", format!("bytes {a}-{last}/{len}"));
            (a, last + 1)
        }
        None => (0, len),
    };
    builder = builder.header("content-length", end - start);
    if method == Method::HEAD {
        return builder.body(full(Bytes::new())).unwrap();
    }
    let mut data = blob.data.clone();
    if let Fault::WrongBytes = blob.fault {
        let mut v = data.slice(0, data.len()).to_vec();
        let mid = v.len() / 2;
        v[mid] ^= 0xff;
        data = Parts {
            head: Bytes::new(),
            tail: v.into(),
        };
    }
    builder
        .body(stream_body(
            data,
            start as usize,
            end as usize,
            blob.fault,
            rate,
            [sent, blob.sent.clone()],
        ))
        .unwrap()
}

fn basic_value(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// `bytes=a-` or `bytes=a-b`.
fn parse_range(h: &str) -> Option<(u64, Option<u64>)> {
    let (a, b) = h.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()))
}

/// Streams `data[from..to]` in 64 KiB chunks at `rate` bytes/s, applying
/// `fault` (whose offsets are absolute).
fn stream_body(
    data: Parts,
    from: usize,
    to: usize,
    fault: Fault,
    rate: u64,
    sent: [Arc<AtomicU64>; 2],
) -> Body {
    const CHUNK: usize = 64 * 1024;
    struct S {
        data: Parts,
        pos: usize,
        from: usize,
        to: usize,
        fault: Fault,
        drop_at: Option<usize>,
        rate: u64,
        start: Instant,
        sent: [Arc<AtomicU64>; 2],
    }
    let drop_at = match &fault {
        Fault::DropAtEach(list) => {
            let mut l = list.lock().unwrap();
            let next = l.iter().copied().filter(|&o| o as usize > from).min();
            if let Some(o) = next {
                l.retain(|&x| x != o);
            }
            next.map(|o| o as usize)
        }
        _ => None,
    };
    let s = S {
        data,
        pos: from,
        from,
        to,
        fault,
        drop_at,
        rate,
        start: Instant::now(),
        sent,
    };
    let stream = futures::stream::unfold(s, |mut s| async move {
        if s.pos >= s.to {
            return None;
        }
        let mut end = (s.pos + CHUNK).min(s.to);
        if let Some(at) = s.drop_at {
            if s.pos >= at {
                // Let the bytes already sent reach the client, then break:
                // "the connection dropped after `at` bytes".
                tokio::time::sleep(Duration::from_millis(30)).await;
                let e = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "fault: dropped");
                return Some((Err(e), s));
            }
            end = end.min(at);
        }
        match &s.fault {
            Fault::StallOnce(at, used) => {
                let at = *at as usize;
                if s.pos == at && !used.swap(true, Ordering::SeqCst) {
                    futures::future::pending::<()>().await;
                } else if s.pos < at {
                    end = end.min(at);
                }
            }
            Fault::StallRangesFrom(at) if s.from >= *at as usize => {
                let half = s.from + (s.to - s.from) / 2;
                if s.pos >= half {
                    futures::future::pending::<()>().await;
                }
                end = end.min(half);
            }
            Fault::DropAfter(at) => {
                let at = *at as usize;
                if s.pos >= at {
                    let e =
                        std::io::Error::new(std::io::ErrorKind::ConnectionReset, "fault: dropped");
                    return Some((Err(e), s));
                }
                end = end.min(at);
            }
            Fault::PauseAt(..) | Fault::PauseAtEach(_) => {
                let one;
                let gates: &[(u64, Gate)] = match &s.fault {
                    Fault::PauseAt(at, gate) => {
                        one = [(*at, gate.clone())];
                        &one
                    }
                    Fault::PauseAtEach(gates) => gates,
                    _ => unreachable!("matched above"),
                };
                for (at, gate) in gates {
                    let at = *at as usize;
                    if s.pos == at {
                        gate.reached.send_replace(true);
                        let mut rx = gate.open.subscribe();
                        let _ = rx.wait_for(|o| *o).await;
                    } else if s.pos < at {
                        end = end.min(at);
                        break;
                    }
                }
            }
            _ => {}
        }
        if s.rate > 0 {
            let due = Duration::from_secs_f64((s.pos - s.from) as f64 / s.rate as f64);
            let now = s.start.elapsed();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
        let chunk = s.data.slice(s.pos, end);
        s.pos = end;
        for counter in &s.sent {
            counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        Some((Ok(Frame::data(chunk)), s))
    });
    StreamBody::new(stream).boxed_unsync()
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|n| match n {}).boxed_unsync()
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(Bytes::from_static(body.as_bytes())))
        .unwrap()
}
