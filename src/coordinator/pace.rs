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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::metrics::ClusterMetrics;

/// The peers following one download, and the download's wait for them.
#[derive(Debug, Default)]
pub struct Pace {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tails: Mutex<Vec<Arc<TailState>>>,
    /// Woken when a tail moves or leaves while the download waits.
    moved: Notify,
    waiting: AtomicBool,
}

#[derive(Debug)]
struct TailState {
    /// The blob offset of the next byte this peer is sent.
    pos: AtomicU64,
    /// Not waited for any more (it did not keep up when waited for).
    let_go: AtomicBool,
}

/// One peer request following a download: its position, reported as its
/// bytes are handed to the connection. Leaves the pace when dropped.
#[derive(Debug)]
pub struct Tail {
    inner: Arc<Inner>,
    state: Arc<TailState>,
}

impl Pace {
    /// A peer request that will be sent the blob from `start`.
    pub fn tail(&self, start: u64) -> Tail {
        let state = Arc::new(TailState {
            pos: AtomicU64::new(start),
            let_go: AtomicBool::new(false),
        });
        self.lock().push(state.clone());
        Tail {
            inner: self.inner.clone(),
            state,
        }
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
        self.state.pos.fetch_add(n, Ordering::Relaxed);
        self.inner.wake();
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
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
        drop(pace.tail(0));
        assert_eq!(pacing(&pace, &metrics).hold(1 << 40).await, Held::NotAhead);
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_most_advanced_peer_sets_the_pace() {
        let (pace, metrics) = (Pace::default(), ClusterMetrics::default());
        let _slow = pace.tail(0);
        let fast = pace.tail(0);
        fast.advance(100 * MIB);
        let p = pacing(&pace, &metrics);
        assert!(!p.ahead(108 * MIB), "8 MiB ahead of the fastest: within");
        assert!(p.ahead(109 * MIB), "9 MiB ahead of the fastest: too far");
    }

    #[tokio::test(start_paused = true)]
    async fn a_download_too_far_ahead_waits_until_its_peer_is_within_half_the_lead() {
        let (pace, metrics) = (Pace::default(), ClusterMetrics::default());
        let tail = pace.tail(0);
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
        let _stuck = pace.tail(MIB);
        let p = pacing(&pace, &metrics);
        let started = tokio::time::Instant::now();
        assert_eq!(p.hold(20 * MIB).await, Held::LetGo(1));
        assert_eq!(started.elapsed(), Duration::from_secs(2), "peerTimeout");
        assert_eq!(metrics.peers_let_go.get(), 1);
        // Never waited for again: the download reads on at once.
        assert_eq!(p.hold(200 * MIB).await, Held::NotAhead);
        // A new peer is followed again.
        let _new = pace.tail(150 * MIB);
        assert!(p.ahead(200 * MIB));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_when_the_peer_it_waits_for_leaves() {
        let (pace, metrics) = (
            Arc::new(Pace::default()),
            Arc::new(ClusterMetrics::default()),
        );
        let tail = pace.tail(0);
        let waiter = {
            let (p2, m2) = (pace.clone(), metrics.clone());
            tokio::spawn(async move { pacing(&p2, &m2).hold(20 * MIB).await })
        };
        until_held(&metrics).await;
        drop(tail);
        assert_eq!(waiter.await.unwrap(), Held::CaughtUp);
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
