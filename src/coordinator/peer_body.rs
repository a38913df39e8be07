//! A blob body from a cluster peer, watched for silence, and the trail of
//! peers a transfer took bytes from ([`PeerTrail`]).
//!
//! A peer is on the same network: its silence means something, where an
//! upstream's may only be the internet. Once a peer's body has sent
//! nothing for `peerTimeout`:
//! - if the peer has left this replica's ring (its readiness probe
//!   failed: frozen, or gone), the body ends at once, and the transfer goes
//!   on elsewhere (the digest's next owner, or the upstream);
//! - else the peer is asked how many bytes of the blob it has
//!   ([`Cluster::progress`], a signed `HEAD` bounded by `peerTimeout`). An
//!   owner that is itself waiting on a slow upstream has no more than it
//!   sent: the wait goes on (bounded by the owner's own upstream timeouts,
//!   which end its transfer to this replica too). One that has more than it
//!   sent, or does not answer, is stuck or lying: it is left out
//!   (`silent`) and the body ends.
//!
//! So a frozen or silent owner costs a client at most `probeInterval` +
//! `peerTimeout` (3 s by default), and an owner waiting on its upstream
//! keeps its askers without a byte of keep-alive on the wire.

use std::net::IpAddr;

use bytes::Bytes;
use futures::StreamExt;

use super::flight::Flight;
use crate::cluster::{BlobAsk, Cluster};

/// A body as the pump reads it: chunks, or why the body broke.
pub(super) type Chunks<'a> = futures::stream::BoxStream<'a, Result<Bytes, String>>;

/// Who a peer body comes from, and what it answers.
#[derive(Clone, Copy)]
pub(super) struct PeerSide<'a> {
    pub cluster: &'a Cluster,
    pub peer: &'a str,
    /// The blob as this replica asked it of the peer (for progress asks).
    pub ask: BlobAsk<'a>,
    /// The client this replica serves (peer requests are fair by it).
    pub client: IpAddr,
    /// The offset of the blob this body's first byte is.
    pub start: u64,
    /// The fill the body goes to: poisoned when another replica caught a
    /// peer whose bytes it holds (this one, or one before it) lying about
    /// the blob, which ends the body at once.
    pub flight: &'a Flight,
}

/// The peers whose bytes a transfer took, in order, and whether the last
/// of them sent it to the end.
#[derive(Debug, Default)]
pub(super) struct PeerTrail {
    pub(super) sent: Vec<String>,
    pub(super) finished: bool,
}

impl PeerTrail {
    /// Every peer that sent bytes of the transfer.
    pub(super) fn sent(&self) -> impl Iterator<Item = &str> {
        self.sent.iter().map(String::as_str)
    }

    /// Every peer that sent bytes of the transfer, as a list.
    pub(super) fn sent_list(&self) -> &[String] {
        &self.sent
    }

    /// The peer that sent the transfer's last byte, if one did.
    pub(super) fn finished_by(&self) -> Option<&str> {
        self.sent
            .last()
            .filter(|_| self.finished)
            .map(String::as_str)
    }
}

struct State<'a> {
    body: Chunks<'a>,
    left: futures::future::BoxFuture<'a, ()>,
    poisoned: futures::future::BoxFuture<'a, ()>,
    out: bool,
    last: tokio::time::Instant,
    /// Bytes of the blob the peer has sent so far (from its start).
    sent: u64,
    /// Asked once already during this silence, it had more than it sent.
    suspect: bool,
}

/// `body` from `side.peer`, ended when the peer goes silent as the module
/// doc says.
pub(super) fn watched<'a>(body: Chunks<'a>, side: PeerSide<'a>) -> Chunks<'a> {
    let check = move |sent| why_silent(side, sent);
    let poisoned = Box::pin(side.flight.poisoned());
    watched_with(body, side.cluster, side.peer, side.start, check, poisoned)
}

/// [`watched`], asking `check` why a live peer that sent so many bytes
/// went silent (`None`: it has no more itself).
fn watched_with<'a, F, Fut>(
    body: Chunks<'a>,
    cluster: &'a Cluster,
    peer: &'a str,
    start: u64,
    check: F,
    poisoned: futures::future::BoxFuture<'a, ()>,
) -> Chunks<'a>
where
    F: Fn(u64) -> Fut + Send + Sync + 'a,
    Fut: std::future::Future<Output = Option<String>> + Send + 'a,
{
    let silence = cluster.peer_timeout();
    let state = State {
        body,
        left: Box::pin(cluster.left_out(peer)),
        poisoned,
        out: false,
        last: tokio::time::Instant::now(),
        sent: start,
        suspect: false,
    };
    let check = std::sync::Arc::new(check);
    futures::stream::unfold(Some(state), move |state| {
        let check = check.clone();
        async move {
        let mut s = state?;
        loop {
            let quiet_until = s.last + silence;
            tokio::select! {
                biased;
                item = tokio::time::timeout_at(quiet_until, s.body.next()) => match item {
                    Ok(Some(Ok(chunk))) => {
                        s.last = tokio::time::Instant::now();
                        s.sent += chunk.len() as u64;
                        s.suspect = false;
                        return Some((Ok(chunk), Some(s)));
                    }
                    Ok(other) => return other.map(|i| (i, Some(s))),
                    Err(_) if s.out => {
                        let why = "the peer left the ring (its readiness probe failed) and sends nothing";
                        return Some((Err(why.to_string()), None));
                    }
                    Err(_) => {
                        let (why, left) = tokio::select! {
                            biased;
                            () = &mut s.left => (Some("the peer went silent and left the ring".to_string()), true),
                            why = check(s.sent) => (why, false),
                        };
                        match why {
                            // Waiting on its own upstream: wait on with it.
                            None => {
                                s.suspect = false;
                                s.last = tokio::time::Instant::now();
                            }
                            // It has more than it sent: bytes may be on
                            // their way (it wrote them just now). Another
                            // `peerTimeout` of silence, asked again, and the
                            // same answer: it holds them back.
                            Some(_) if !left && !s.suspect => {
                                s.suspect = true;
                                s.last = tokio::time::Instant::now();
                            }
                            Some(why) => {
                                cluster.fail(peer, "silent");
                                return Some((Err(why), None));
                            }
                        }
                    }
                },
                () = &mut s.left, if !s.out => s.out = true,
                () = &mut s.poisoned => {
                    let why = "another replica caught the peer sending bytes that are not the blob";
                    return Some((Err(why.to_string()), None));
                }
            }
        }
        }
    })
    .boxed()
}

/// Why a live peer that has sent `sent` bytes and then nothing for
/// `peerTimeout` is given up; `None` when it has no more itself.
async fn why_silent(side: PeerSide<'_>, sent: u64) -> Option<String> {
    match side
        .cluster
        .progress(side.peer, side.ask, side.client)
        .await
    {
        Ok(Some(have)) if have <= sent => None,
        Ok(Some(have)) => Some(format!(
            "the peer has {have} bytes of the blob but sent {sent} and then nothing"
        )),
        Ok(None) => Some("the peer went silent and did not say how far it is".into()),
        Err(e) => Some(format!("the peer went silent: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterConfig, PeerSource, Secret};
    use std::time::Duration;
    use tokio::time::Instant;

    const PEER: &str = "127.0.0.1:2";

    fn cluster() -> Cluster {
        let config = ClusterConfig {
            peers: PeerSource::Static(vec!["127.0.0.1:1".into(), PEER.into()]),
            self_addr: Some("127.0.0.1:1".into()),
            secret: Secret::new("a secret of sixteen or more"),
            probe_interval: Duration::from_secs(1),
            dns_interval: Duration::from_secs(5),
            peer_timeout: Duration::from_secs(2),
            fanout: 4,
            zone: None,
            https: false,
            cert_dir: None,
        };
        let listen = "127.0.0.1:1".parse().unwrap();
        let answer = Duration::from_secs(30);
        Cluster::new(
            &config,
            listen,
            answer,
            Default::default(),
            Default::default(),
        )
        .unwrap()
    }

    /// A body that sends a byte at each of `at` (ms from now), then ends.
    fn body_at(at: Vec<u64>) -> Chunks<'static> {
        let start = Instant::now();
        futures::stream::iter(at)
            .then(move |ms| async move {
                tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
                Ok(Bytes::from_static(b"x"))
            })
            .boxed()
    }

    /// How reading a watched body went: bytes, when it ended (ms), whether
    /// cleanly, and whether the peer is still in the ring.
    #[derive(Debug, PartialEq, Eq)]
    struct Read {
        bytes: usize,
        ended_ms: u64,
        clean: bool,
        live: bool,
    }

    /// Reads `at` from the peer, which leaves the ring after `leaves_ms`
    /// (if given); `check` answers why it went silent.
    async fn read<F, Fut>(at: Vec<u64>, leaves_ms: Option<u64>, check: F) -> Read
    where
        F: Fn(u64) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Option<String>> + Send + 'static,
    {
        let cluster = cluster();
        let start = Instant::now();
        let never = Box::pin(std::future::pending());
        let mut body = watched_with(body_at(at), &cluster, PEER, 0, check, never);
        let leave = async {
            if let Some(ms) = leaves_ms {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                cluster.fail(PEER, "test");
            }
        };
        let reading = async {
            let mut n = 0;
            while let Some(item) = body.next().await {
                match item {
                    Ok(b) => n += b.len(),
                    Err(_) => return (n, false),
                }
            }
            (n, true)
        };
        let ((bytes, clean), ()) = futures::future::join(reading, leave).await;
        Read {
            bytes,
            ended_ms: start.elapsed().as_millis() as u64,
            clean,
            live: cluster.is_live(PEER),
        }
    }

    fn read_as(bytes: usize, ended_ms: u64, clean: bool, live: bool) -> Read {
        Read {
            bytes,
            ended_ms,
            clean,
            live,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_frozen_peer_is_given_up_when_its_probe_fails() {
        // One byte, then nothing; the progress question is not answered
        // either; its probe fails at 3 s: the end, then.
        let hangs = |_| std::future::pending::<Option<String>>();
        assert_eq!(
            read(vec![0, 60_000], Some(3_000), hangs).await,
            read_as(1, 3_000, false, false)
        );
        // Left out half a second after its last byte: it gets the rest of
        // peerTimeout to send another.
        assert_eq!(
            read(vec![0, 60_000], Some(500), hangs).await,
            read_as(1, 2_000, false, false)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_waiting_on_its_upstream_is_waited_for() {
        // Silent from 0 to 7 s, but each time it is asked it has no more
        // than it sent: the transfer goes on to its end.
        let waiting = |_| async { None };
        assert_eq!(
            read(vec![0, 7_000, 7_100], None, waiting).await,
            read_as(3, 7_100, true, true)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_peer_that_holds_back_what_it_has_is_left_out() {
        // Asked at 2 s and again at 4 s, it has more than it sent: out.
        let holds_back = |sent| async move { Some(format!("has more than {sent}")) };
        assert_eq!(
            read(vec![0, 60_000], None, holds_back).await,
            read_as(1, 4_000, false, false)
        );
        // Its bytes were on their way when it was first asked: it goes on.
        let on_their_way = |sent| async move { Some(format!("has more than {sent}")) };
        assert_eq!(
            read(vec![0, 3_000, 3_100], None, on_their_way).await,
            read_as(3, 3_100, true, true)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_peer_that_left_but_still_sends_is_read_to_the_end() {
        // Its probe was slow (it left the ring at 1 s) but it sends every
        // 500 ms: the transfer goes on.
        let every = (0..10).map(|i| i * 500).collect();
        let never_asked = |_| async { panic!("a sending peer is never asked") };
        assert_eq!(
            read(every, Some(1_000), never_asked).await,
            read_as(10, 4_500, true, false)
        );
    }
}
