//! How far an upstream download may run ahead of the peers it feeds.
//!
//! Bytes an owner has read from its upstream but not yet sent to any peer
//! are lost to the cluster when it dies: the blob's next owner goes on from
//! the most advanced survivor ([`super::ask`]), and fetches the rest from
//! the upstream again. Unbounded, that lead is whatever the owner's
//! upstream outruns its peers by (45 MiB of a 256 MiB blob once, on a
//! loaded machine: 1.18x upstream bytes for one death).
//!
//! So each peer request that follows a download is a [`Tail`], and the
//! download's upstream read ([`Pacing::hold`]) waits while it is more than
//! its lead ahead of the *most advanced* of them, until that one is within
//! half the lead. A slower peer never holds it back while another keeps
//! up: the survivor furthest ahead is the one the next owner catches up
//! from. A wait lasts at most the cluster's `peerTimeout`; peers that did
//! not come within half the lead by then are let go (not waited for again
//! by this download), so no peer can slow a download for longer than that.
//! A download nobody follows from a peer is never held.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::DashMap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use crate::metrics::ClusterMetrics;
use crate::oci::Digest;
use crate::routing::PeerId;

/// The peers one blob is being sent to, and its download's wait for them.
/// A handle: clones share the same peers.
#[derive(Debug, Default, Clone)]
pub struct Pace {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tails: Mutex<Vec<Arc<TailState>>>,
    /// Woken when a tail moves or leaves while the download waits.
    moved: Notify,
    waiting: AtomicBool,
    /// The registry this pace is listed in, left when the last handle and
    /// tail are gone.
    listed: Option<(Weak<Listing>, Digest)>,
}

type Listing = DashMap<Digest, Weak<Inner>>;

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some((listing, digest)) = &self.listed {
            if let Some(listing) = listing.upgrade() {
                listing.remove_if(digest, |_, w| w.strong_count() == 0);
            }
        }
    }
}

/// The [`Pace`] of every blob this replica is sending to peers (or
/// downloading), by digest: a blob's download and every peer stream of it,
/// stored or in flight, share one.
#[derive(Debug, Default)]
pub struct Paces {
    listing: Arc<Listing>,
}

impl Paces {
    /// The pace of `digest`, made when there is none.
    pub fn of(&self, digest: &Digest) -> Pace {
        if let Some(inner) = self.listing.get(digest).and_then(|w| w.upgrade()) {
            return Pace { inner };
        }
        let entry = self.listing.entry(digest.clone());
        let mut entry = match entry {
            dashmap::mapref::entry::Entry::Occupied(e) => e,
            dashmap::mapref::entry::Entry::Vacant(e) => {
                let inner = self.fresh(digest);
                e.insert(Arc::downgrade(&inner));
                return Pace { inner };
            }
        };
        match entry.get().upgrade() {
            Some(inner) => Pace { inner },
            None => {
                let inner = self.fresh(digest);
                entry.insert(Arc::downgrade(&inner));
                Pace { inner }
            }
        }
    }

    /// The pace of `digest` if it has one now.
    #[cfg(test)]
    fn get(&self, digest: &Digest) -> Option<Pace> {
        let inner = self.listing.get(digest)?.upgrade()?;
        Some(Pace { inner })
    }

    fn fresh(&self, digest: &Digest) -> Arc<Inner> {
        Arc::new(Inner {
            tails: Default::default(),
            moved: Notify::new(),
            waiting: AtomicBool::new(false),
            listed: Some((Arc::downgrade(&self.listing), digest.clone())),
        })
    }
}

#[derive(Debug)]
struct TailState {
    /// The replica it is sent to.
    peer: PeerId,
    /// The blob offset of the next byte this peer is sent.
    pos: AtomicU64,
    /// Not waited for any more (it did not keep up when waited for).
    let_go: AtomicBool,
    /// Askers pointed to this peer as their relay.
    pointed: AtomicU32,
}

/// Where peer streams are counted: the bytes sent to peers and the
/// streams open now.
#[derive(Debug, Clone, Default)]
pub struct Counted {
    pub bytes: Counter,
    pub streams: Gauge,
}

/// One peer request following a download: its position, reported as its
/// bytes are handed to the connection. Leaves the pace when dropped.
#[derive(Debug)]
pub struct Tail {
    inner: Arc<Inner>,
    state: Arc<TailState>,
    counted: Counted,
}

impl Pace {
    /// A peer request of `peer` that will be sent the blob from `start`;
    /// its bytes are counted in `counted`.
    pub fn tail(&self, start: u64, peer: PeerId, counted: Counted) -> Tail {
        let mut tails = self.lock();
        self.push(&mut tails, start, peer, counted)
    }

    /// [`Pace::tail`], if the blob is sent to fewer than `fanout` peers
    /// now (checked and counted at once).
    pub fn child_within(
        &self,
        fanout: usize,
        start: u64,
        peer: PeerId,
        counted: Counted,
    ) -> Option<Tail> {
        let mut tails = self.lock();
        (tails.len() < fanout).then(|| self.push(&mut tails, start, peer, counted))
    }

    fn push(
        &self,
        tails: &mut Vec<Arc<TailState>>,
        start: u64,
        peer: PeerId,
        counted: Counted,
    ) -> Tail {
        let state = Arc::new(TailState {
            peer,
            pos: AtomicU64::new(start),
            let_go: AtomicBool::new(false),
            pointed: AtomicU32::new(0),
        });
        tails.push(state.clone());
        counted.streams.inc();
        Tail {
            inner: self.inner.clone(),
            state,
            counted,
        }
    }

    /// Peers the blob is being sent to now.
    pub fn children(&self) -> usize {
        self.lock().len()
    }

    /// The peer to point one more asker to: among the peers the blob is
    /// sent to, one that `eligible` accepts; one that `near` accepts (the
    /// asker's zone) before any other, then the one pointed to the fewest
    /// times, then the one furthest ahead. Counts the pointer.
    pub fn pick(
        &self,
        eligible: impl Fn(PeerId) -> bool,
        near: impl Fn(PeerId) -> bool,
    ) -> Option<PeerId> {
        let tails = self.lock();
        let best = tails
            .iter()
            .filter(|t| !t.let_go.load(Ordering::Relaxed) && eligible(t.peer))
            .min_by_key(|t| {
                let pointed = t.pointed.load(Ordering::Relaxed);
                (
                    !near(t.peer),
                    pointed,
                    u64::MAX - t.pos.load(Ordering::Relaxed),
                )
            })?;
        best.pointed.fetch_add(1, Ordering::Relaxed);
        Some(best.peer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<TailState>>> {
        self.inner.lock()
    }

    /// Where the most advanced peer still waited for is, if any.
    fn front(&self) -> Option<u64> {
        self.lock()
            .iter()
            .filter(|t| !t.let_go.load(Ordering::Relaxed))
            .map(|t| t.pos.load(Ordering::Relaxed))
            .max()
    }

    /// True when `written` is more than `lead` ahead of every peer waited
    /// for.
    fn ahead(&self, written: u64, lead: u64) -> bool {
        self.front()
            .is_some_and(|f| written.saturating_sub(f) > lead)
    }

    /// Lets go every peer waited for that is more than `within` behind
    /// `written`; returns how many.
    fn let_go_behind(&self, written: u64, within: u64) -> usize {
        self.lock()
            .iter()
            .filter(|t| !t.let_go.load(Ordering::Relaxed))
            .filter(|t| written.saturating_sub(t.pos.load(Ordering::Relaxed)) > within)
            .inspect(|t| t.let_go.store(true, Ordering::Relaxed))
            .count()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<TailState>>> {
        self.tails.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        if self.waiting.load(Ordering::Acquire) {
            self.moved.notify_waiters();
        }
    }
}

impl Tail {
    /// `n` more bytes were handed to this peer's connection.
    pub fn advance(&self, n: u64) {
        self.counted.bytes.inc_by(n);
        self.state.pos.fetch_add(n, Ordering::Relaxed);
        self.inner.wake();
    }
}

impl Tail {
    /// The stream starts at byte `start` of the blob (a range whose start
    /// was not known when the peer was placed: a suffix). Wakes a download
    /// held for this peer: it may be there already.
    pub fn starts_at(&self, start: u64) {
        self.state.pos.store(start, Ordering::Relaxed);
        self.inner.wake();
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.counted.streams.dec();
        self.inner.lock().retain(|t| !Arc::ptr_eq(t, &self.state));
        self.inner.wake();
    }
}

/// How an upstream download of `size` bytes (when known) is paced by the
/// peers it feeds.
pub struct Pacing<'a> {
    pub pace: &'a Pace,
    /// At most this many bytes ahead of the most advanced peer.
    pub lead: u64,
    /// The longest wait (`peerTimeout`).
    pub bound: Duration,
    pub metrics: &'a ClusterMetrics,
}

/// Why a download stopped waiting for its peers.
#[derive(Debug, PartialEq, Eq)]
pub enum Held {
    /// It was not ahead: no wait.
    NotAhead,
    /// The most advanced peer came within half the lead (or every peer
    /// waited for left).
    CaughtUp,
    /// `peerTimeout` passed first: this many peers were let go.
    LetGo(usize),
}

/// The lead of a download of `size` bytes: 1/32 of the blob, between
/// 4 MiB and 64 MiB (16 MiB when the size is unknown). A death then costs
/// the upstream at most ~3% of the blob, plus what was in the sockets.
pub fn lead_for(size: Option<u64>) -> u64 {
    const MIB: u64 = 1 << 20;
    size.map_or(16 * MIB, |s| (s / 32).clamp(4 * MIB, 64 * MIB))
}

impl Pacing<'_> {
    /// True when a download that has `written` bytes must wait for its
    /// peers before it reads on.
    pub fn ahead(&self, written: u64) -> bool {
        self.pace.ahead(written, self.lead)
    }

    /// Waits until the most advanced peer is within half the lead of
    /// `written`, at most `bound`; peers still behind then are let go.
    pub async fn hold(&self, written: u64) -> Held {
        if !self.ahead(written) {
            return Held::NotAhead;
        }
        let inner = &self.pace.inner;
        let started = tokio::time::Instant::now();
        let deadline = started + self.bound;
        self.metrics.downloads_held.inc();
        inner.waiting.store(true, Ordering::Release);
        let within = self.lead / 2;
        let held = loop {
            let moved = inner.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if !self.pace.ahead(written, within) {
                break Held::CaughtUp;
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                break Held::LetGo(self.pace.let_go_behind(written, within));
            }
        };
        inner.waiting.store(false, Ordering::Release);
        self.metrics.downloads_held.dec();
        self.metrics
            .held_for_peers
            .inc_by(started.elapsed().as_secs_f64());
        if let Held::LetGo(n) = held {
            self.metrics.peers_let_go.inc_by(n as u64);
            tracing::info!(
                written,
                lead = self.lead,
                peers = n,
                "the peers this download feeds fell behind it for longer than peerTimeout; it no longer waits for them"
            );
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn peer() -> PeerId {
        PeerId::of("10.0.0.7:5000")
    }

    fn pacing<'a>(pace: &'a Pace, metrics: &'a ClusterMetrics) -> Pacing<'a> {
        Pacing {
            pace,
            lead: 8 * MIB,
            bound: Duration::from_secs(2),
            metrics,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_download_no_peer_follows_is_never_held() {
        let (pace, metrics) = (Pace::default(), ClusterMetrics::default());
        assert_eq!(pacing(&pace, &metrics).hold(1 << 40).await, Held::NotAhead);
        // A peer that left is no longer followed either.
        drop(pace.tail(0, peer(), Counted::default()));
        assert_eq!(pacing(&pace, &metrics).hold(1 << 40).await, Held::NotAhead);
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_most_advanced_peer_sets_the_pace() {
        let (pace, metrics) = (Pace::default(), ClusterMetrics::default());
        let _slow = pace.tail(0, peer(), Counted::default());
        let fast = pace.tail(0, peer(), Counted::default());
        fast.advance(100 * MIB);
        let p = pacing(&pace, &metrics);
        assert!(!p.ahead(108 * MIB), "8 MiB ahead of the fastest: within");
        assert!(p.ahead(109 * MIB), "9 MiB ahead of the fastest: too far");
    }

    #[tokio::test(start_paused = true)]
    async fn a_download_too_far_ahead_waits_until_its_peer_is_within_half_the_lead() {
        let (pace, metrics) = (Pace::default(), ClusterMetrics::default());
        let tail = pace.tail(0, peer(), Counted::default());
        let metrics = Arc::new(metrics);
        let (p2, m2) = (Arc::new(pace), metrics.clone());
        let waiter = {
            let p2 = p2.clone();
            tokio::spawn(async move { pacing(&p2, &m2).hold(20 * MIB).await })
        };
        until_held(&metrics).await;
        // 11 MiB behind: still more than half the lead (4 MiB).
        tail.advance(9 * MIB);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "released 11 MiB behind");
        tail.advance(7 * MIB);
        assert_eq!(waiter.await.unwrap(), Held::CaughtUp);
        assert_eq!(metrics.peers_let_go.get(), 0);
        assert_eq!(metrics.downloads_held.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_does_not_catch_up_within_the_bound_is_let_go() {
        let (pace, metrics) = (Pace::default(), ClusterMetrics::default());
        let _stuck = pace.tail(MIB, peer(), Counted::default());
        let p = pacing(&pace, &metrics);
        let started = tokio::time::Instant::now();
        assert_eq!(p.hold(20 * MIB).await, Held::LetGo(1));
        assert_eq!(started.elapsed(), Duration::from_secs(2), "peerTimeout");
        assert_eq!(metrics.peers_let_go.get(), 1);
        // Never waited for again: the download reads on at once.
        assert_eq!(p.hold(200 * MIB).await, Held::NotAhead);
        // A new peer is followed again.
        let _new = pace.tail(150 * MIB, peer(), Counted::default());
        assert!(p.ahead(200 * MIB));
    }

    /// A download at 20 MiB held for one peer at byte 0: the peer, the
    /// wait, and the metrics it counts in.
    async fn held_for_a_peer_at_0() -> (Tail, tokio::task::JoinHandle<Held>, Arc<ClusterMetrics>) {
        let (pace, metrics) = (
            Arc::new(Pace::default()),
            Arc::new(ClusterMetrics::default()),
        );
        let tail = pace.tail(0, peer(), Counted::default());
        let waiter = {
            let m2 = metrics.clone();
            tokio::spawn(async move { pacing(&pace, &m2).hold(20 * MIB).await })
        };
        until_held(&metrics).await;
        (tail, waiter, metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_when_the_peer_it_waits_for_leaves() {
        let (tail, waiter, _) = held_for_a_peer_at_0().await;
        drop(tail);
        assert_eq!(waiter.await.unwrap(), Held::CaughtUp);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_when_its_peer_turns_out_to_start_where_the_download_is() {
        // A suffix range is placed before its start is known.
        let (tail, waiter, metrics) = held_for_a_peer_at_0().await;
        let started = tokio::time::Instant::now();
        tail.starts_at(20 * MIB);
        assert_eq!(waiter.await.unwrap(), Held::CaughtUp);
        assert_eq!(started.elapsed(), Duration::ZERO, "not after peerTimeout");
        assert_eq!(metrics.peers_let_go.get(), 0);
    }

    #[test]
    fn a_blob_is_listed_while_its_download_or_a_peer_stream_holds_its_pace() {
        let paces = Paces::default();
        let d = Digest::sha256_of(b"x");
        let download = paces.of(&d);
        let tail = paces.of(&d).tail(0, peer(), Counted::default());
        assert_eq!(paces.get(&d).unwrap().children(), 1, "one pace per blob");
        drop(download);
        assert!(paces.get(&d).is_some(), "the peer stream holds it");
        drop(tail);
        assert!(paces.get(&d).is_none());
        assert!(paces.listing.is_empty(), "nothing left behind");
        // Listed again when asked again.
        let again = paces.of(&d);
        assert!(paces.get(&d).is_some());
        drop(again);
        assert!(paces.listing.is_empty());
    }

    #[test]
    fn the_relay_pointed_to_is_the_least_pointed_then_the_furthest_ahead() {
        let pace = Pace::default();
        let (a, b, c) = (PeerId::of("a:1"), PeerId::of("b:1"), PeerId::of("c:1"));
        let ta = pace.tail(0, a, Counted::default());
        let _tb = pace.tail(0, b, Counted::default());
        let _tc = pace.tail(0, c, Counted::default());
        ta.advance(10);
        assert_eq!(pace.pick(|_| true, |_| false), Some(a), "furthest ahead");
        assert_ne!(
            pace.pick(|_| true, |_| false),
            Some(a),
            "pointed to once already"
        );
        assert_eq!(
            pace.pick(|p| p == c, |_| false),
            Some(c),
            "only the eligible"
        );
        assert_eq!(pace.pick(|_| false, |_| true), None);
        assert_eq!(pace.children(), 3);
        // One in the asker's zone goes first, however often pointed to.
        assert_eq!(pace.pick(|_| true, |p| p == a), Some(a));
    }

    #[test]
    fn the_lead_is_a_thirty_second_of_the_blob_within_bounds() {
        assert_eq!(lead_for(Some(256 * MIB)), 8 * MIB);
        assert_eq!(lead_for(Some(MIB)), 4 * MIB);
        assert_eq!(lead_for(Some(10 << 30)), 64 * MIB);
        assert_eq!(lead_for(None), 16 * MIB);
    }

    async fn until_held(metrics: &ClusterMetrics) {
        while metrics.downloads_held.get() == 0 {
            tokio::task::yield_now().await;
        }
    }
}
