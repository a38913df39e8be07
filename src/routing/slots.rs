//! A registry's blob-download slots (`ferry.maxFetchesPerRegistry`): a
//! flood of requests for distinct digests waits here instead of opening
//! unbounded upstream connections.
//!
//! Three rules keep one client from holding everyone else's cold pulls:
//! - **Fair share.** A freed slot goes to the waiting download whose
//!   requester holds the fewest slots; among equals, to the requester
//!   served longest ago (round robin), then the oldest download. A client
//!   that asked for 64 blobs does not make the next client's one blob wait
//!   behind all of them.
//! - **One for one.** A download nobody reads any more gives its slot up
//!   when another download waits ([`FetchPermit::give_way`]); each waiter
//!   is owed one such download, never several.
//! - **An orphan budget.** Bytes that downloads nobody reads still bring
//!   in are charged to the registry (`ferry.orphanedBytesPerRegistry`);
//!   past the budget such a download is cancelled even when no one waits
//!   ([`FetchPermit::charge_orphaned`]).
//!
//! Permits release on `Drop`, handing the slot straight to the next
//! waiter.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{oneshot, Notify};

use super::origin::Origin;

#[derive(Debug)]
pub struct FetchSlots {
    state: Mutex<State>,
    /// Woken whenever a download starts to wait.
    wanted: Notify,
    /// Bytes brought in by downloads nobody reads, now charged.
    orphaned: AtomicU64,
    orphan_budget: u64,
}

#[derive(Debug)]
struct State {
    free: usize,
    /// Slots held per requester (absent: none).
    held: HashMap<Origin, usize>,
    /// When each requester holding or waiting for a slot was last given
    /// one (a grant number; absent: not since it last had none).
    served: HashMap<Origin, u64>,
    queue: VecDeque<Waiter>,
    /// Numbers waiters and grants.
    next_id: u64,
    /// Permits that promised their slot to a waiter and are letting go.
    yielding: usize,
}

impl State {
    /// Counts a slot given to `requester` now.
    fn grant(&mut self, requester: Origin) {
        *self.held.entry(requester).or_default() += 1;
        self.next_id += 1;
        self.served.insert(requester, self.next_id);
    }

    /// Drops what is known of `requester` once it neither holds nor waits
    /// (so the maps are bounded by slots plus waiters).
    fn forget_if_idle(&mut self, requester: Origin) {
        if !self.held.contains_key(&requester)
            && !self.queue.iter().any(|w| w.requester == requester)
        {
            self.served.remove(&requester);
        }
    }
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    requester: Origin,
    granted: oneshot::Sender<()>,
}

impl FetchSlots {
    pub fn new(slots: usize, orphan_budget: u64) -> FetchSlots {
        FetchSlots {
            state: Mutex::new(State {
                free: slots,
                held: HashMap::new(),
                served: HashMap::new(),
                queue: VecDeque::new(),
                next_id: 0,
                yielding: 0,
            }),
            wanted: Notify::new(),
            orphaned: AtomicU64::new(0),
            orphan_budget,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for `requester`, waited for when none is free (counted in
    /// `queued` meanwhile, and seen by [`FetchSlots::wanted`]).
    pub async fn acquire(self: &Arc<Self>, requester: Origin, queued: &Gauge) -> FetchPermit {
        let rx = {
            let mut s = self.lock();
            if s.free > 0 && s.queue.is_empty() {
                s.free -= 1;
                s.grant(requester);
                return self.permit(requester);
            }
            let (tx, rx) = oneshot::channel();
            let id = s.next_id;
            s.next_id += 1;
            s.queue.push_back(Waiter {
                id,
                requester,
                granted: tx,
            });
            Queued {
                slots: self,
                id,
                requester,
                rx,
                gauge: queued,
            }
        };
        queued.inc();
        self.wanted.notify_waiters();
        rx.granted().await
    }

    fn permit(self: &Arc<Self>, requester: Origin) -> FetchPermit {
        FetchPermit {
            slots: self.clone(),
            requester,
            yielding: AtomicBool::new(false),
            orphaned: AtomicU64::new(0),
        }
    }

    /// Frees one slot of `requester`: to the fairest waiter, or to the pool.
    fn release(&self, requester: Origin, yielded: bool) {
        let mut s = self.lock();
        if let Some(n) = s.held.get_mut(&requester) {
            *n -= 1;
            if *n == 0 {
                s.held.remove(&requester);
            }
        }
        if yielded {
            s.yielding -= 1;
        }
        s.forget_if_idle(requester);
        loop {
            let fairest = s
                .queue
                .iter()
                .enumerate()
                .min_by_key(|(i, w)| {
                    let r = &w.requester;
                    let held = s.held.get(r).copied().unwrap_or(0);
                    let served = s.served.get(r).copied().unwrap_or(0);
                    (held, served, *i)
                })
                .map(|(i, _)| i);
            let Some(i) = fairest else {
                s.free += 1;
                return;
            };
            let w = s.queue.remove(i).expect("index from the queue");
            // The waiter's receiver lives until its guard has looked at the
            // queue under this lock, so a send fails only for a waiter
            // already gone: then the next one gets the slot.
            if w.granted.send(()).is_ok() {
                s.grant(w.requester);
                return;
            }
            s.forget_if_idle(w.requester);
        }
    }

    /// Downloads waiting for a slot that no permit has promised to yet.
    fn unserved(s: &State) -> usize {
        s.queue.len().saturating_sub(s.yielding)
    }

    /// Resolves while (or as soon as) some download waits for a slot that
    /// no deserted download is already giving up for it.
    pub async fn wanted(&self) {
        loop {
            let woken = self.wanted.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if Self::unserved(&self.lock()) > 0 {
                return;
            }
            woken.await;
        }
    }

    /// Downloads waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.lock().queue.len()
    }
}

/// A download waiting in the queue; leaving it (cancelled) takes the entry
/// out, or passes on a slot granted meanwhile.
struct Queued<'a> {
    slots: &'a Arc<FetchSlots>,
    id: u64,
    requester: Origin,
    rx: oneshot::Receiver<()>,
    gauge: &'a Gauge,
}

impl Queued<'_> {
    async fn granted(mut self) -> FetchPermit {
        (&mut self.rx)
            .await
            .expect("a grant is sent or the entry is still queued");
        // Drop sees the grant taken (the entry is no longer queued and the
        // receiver is closed below) and releases nothing.
        self.rx.close();
        self.slots.permit(self.requester)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
        let mut s = self.slots.lock();
        if let Some(i) = s.queue.iter().position(|w| w.id == self.id) {
            s.queue.remove(i);
            s.forget_if_idle(self.requester);
            return;
        }
        drop(s);
        // Granted but never taken: pass the slot on.
        if self.rx.try_recv().is_ok() {
            self.slots.release(self.requester, false);
        }
    }
}

/// One download's slot; released to the next waiter on `Drop`.
#[derive(Debug)]
pub struct FetchPermit {
    slots: Arc<FetchSlots>,
    requester: Origin,
    /// This permit promised its slot to a waiter.
    yielding: AtomicBool,
    /// Orphaned bytes charged to the registry by this download.
    orphaned: AtomicU64,
}

impl FetchPermit {
    /// The slots this permit is one of (its download gives way to their
    /// waiters).
    pub fn slots(&self) -> &FetchSlots {
        &self.slots
    }

    /// Promises this slot to a waiter that no other permit has promised
    /// one to yet; false when there is none (the caller keeps going).
    pub fn give_way(&self) -> bool {
        let mut s = self.slots.lock();
        if self.yielding.load(Ordering::SeqCst) {
            return true;
        }
        if FetchSlots::unserved(&s) == 0 {
            return false;
        }
        s.yielding += 1;
        self.yielding.store(true, Ordering::SeqCst);
        true
    }

    /// Charges `n` bytes that arrived while nobody read the download;
    /// false once the registry's orphan budget is spent (the caller
    /// cancels the download, whose charge is then returned).
    pub fn charge_orphaned(&self, n: u64) -> bool {
        let budget = self.slots.orphan_budget;
        let before = self.slots.orphaned.fetch_add(n, Ordering::SeqCst);
        self.orphaned.fetch_add(n, Ordering::SeqCst);
        before.saturating_add(n) <= budget
    }
}

impl Drop for FetchPermit {
    fn drop(&mut self) {
        let charged = self.orphaned.load(Ordering::SeqCst);
        self.slots.orphaned.fetch_sub(charged, Ordering::SeqCst);
        self.slots
            .release(self.requester, self.yielding.load(Ordering::SeqCst));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(n: u8) -> Origin {
        Origin::Client(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, n)))
    }

    /// Waits until `slots` has `n` queued downloads.
    async fn queued(slots: &FetchSlots, n: usize) {
        while slots.waiting() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_waiter_is_seen_and_gets_the_slot_when_it_is_freed() {
        let slots = Arc::new(FetchSlots::new(1, 0));
        let gauge = Gauge::default();
        let held = slots.acquire(client(1), &gauge).await;
        let (s, g) = (slots.clone(), gauge.clone());
        let waiter = tokio::spawn(async move { s.acquire(client(2), &g).await });
        slots.wanted().await;
        assert_eq!(gauge.get(), 1);
        drop(held);
        let _got = waiter.await.unwrap();
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_is_no_longer_counted_and_loses_no_slot() {
        let slots = Arc::new(FetchSlots::new(1, 0));
        let gauge = Gauge::default();
        let held = slots.acquire(client(1), &gauge).await;
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(10),
            slots.acquire(client(2), &gauge),
        )
        .await;
        assert!(gave_up.is_err());
        assert_eq!(gauge.get(), 0);
        assert_eq!(slots.waiting(), 0);
        drop(held);
        // The slot came back to the pool: taken at once.
        let again = slots.acquire(client(3), &gauge);
        assert!(futures::FutureExt::now_or_never(again).is_some());
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_client_holding_fewest() {
        let slots = Arc::new(FetchSlots::new(2, 0));
        let gauge = Gauge::default();
        // Client 1 holds both slots and queues three more downloads.
        let mut held = vec![
            slots.acquire(client(1), &gauge).await,
            slots.acquire(client(1), &gauge).await,
        ];
        let mut greedy = Vec::new();
        for _ in 0..3 {
            let (s, g) = (slots.clone(), gauge.clone());
            greedy.push(tokio::spawn(async move { s.acquire(client(1), &g).await }));
        }
        queued(&slots, 3).await;
        // Client 2 asks last, for one blob.
        let (s, g) = (slots.clone(), gauge.clone());
        let modest = tokio::spawn(async move { s.acquire(client(2), &g).await });
        queued(&slots, 4).await;
        drop(held.pop());
        let got = modest.await.unwrap();
        assert_eq!(got.requester, client(2), "the newcomer goes first");
        assert_eq!(slots.waiting(), 3, "client 1's downloads still wait");
        drop(got);
        drop(held);
        for g in greedy {
            drop(g.await.unwrap());
        }
        assert_eq!(slots.lock().free, 2, "every slot came back");
    }

    #[tokio::test]
    async fn with_one_slot_requesters_take_turns() {
        let slots = Arc::new(FetchSlots::new(1, 0));
        let gauge = Gauge::default();
        let held = slots.acquire(client(1), &gauge).await;
        let mut order = Vec::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (n, who) in [(0, 1), (1, 1), (2, 2)] {
            let (s, g, tx) = (slots.clone(), gauge.clone(), tx.clone());
            tokio::spawn(async move {
                let p = s.acquire(client(who), &g).await;
                tx.send((who, p)).unwrap();
            });
            queued(&slots, n + 1).await;
        }
        drop(held);
        for _ in 0..3 {
            let (who, p) = rx.recv().await.unwrap();
            order.push(who);
            drop(p);
        }
        assert_eq!(
            order,
            [2, 1, 1],
            "client 2 was not served yet: its turn first"
        );
        let s = slots.lock();
        assert!(s.held.is_empty() && s.served.is_empty(), "{s:?}");
    }

    #[tokio::test]
    async fn one_waiter_is_given_way_by_one_permit_only() {
        let slots = Arc::new(FetchSlots::new(2, 0));
        let gauge = Gauge::default();
        let a = slots.acquire(client(1), &gauge).await;
        let b = slots.acquire(client(1), &gauge).await;
        let (s, g) = (slots.clone(), gauge.clone());
        let waiter = tokio::spawn(async move { s.acquire(client(2), &g).await });
        slots.wanted().await;
        assert!(a.give_way());
        assert!(!b.give_way(), "the one waiter is already promised a slot");
        drop(a);
        let _got = waiter.await.unwrap();
        assert!(!b.give_way());
    }

    #[tokio::test]
    async fn the_orphan_budget_is_shared_and_returned() {
        let slots = Arc::new(FetchSlots::new(2, 100));
        let gauge = Gauge::default();
        let a = slots.acquire(client(1), &gauge).await;
        let b = slots.acquire(client(1), &gauge).await;
        assert!(a.charge_orphaned(60));
        assert!(b.charge_orphaned(40));
        assert!(!b.charge_orphaned(1), "the budget is per registry");
        drop(b);
        assert!(
            a.charge_orphaned(40),
            "a cancelled download returns its charge"
        );
    }
}
