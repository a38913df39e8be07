//! A registry's blob-download slots (`ferry.maxFetchesPerRegistry`): a
//! flood of requests for distinct digests waits here instead of opening
//! unbounded upstream connections. The slots also say whether anyone is
//! waiting, so a download nobody reads any more can give its slot up
//! (see the coordinator's transfer).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct FetchSlots {
    permits: Arc<Semaphore>,
    /// Downloads waiting for a slot now.
    waiting: AtomicUsize,
    /// Woken whenever a download starts to wait.
    wanted: Notify,
}

impl FetchSlots {
    pub fn new(slots: usize) -> FetchSlots {
        FetchSlots {
            permits: Arc::new(Semaphore::new(slots)),
            waiting: AtomicUsize::new(0),
            wanted: Notify::new(),
        }
    }

    /// A slot, waited for when none is free (counted in `queued` and in
    /// [`FetchSlots::wanted`] meanwhile). Dropping the permit frees it.
    pub async fn acquire(&self, queued: &Gauge) -> OwnedSemaphorePermit {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return p;
        }
        /// Counted as waiting until dropped, however the wait ends
        /// (a slot, or the waiter given up).
        struct Waiting<'a>(&'a AtomicUsize, &'a Gauge);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
                self.1.dec();
            }
        }
        queued.inc();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting, queued);
        self.wanted.notify_waiters();
        let p = self.permits.clone().acquire_owned().await;
        p.expect("fetch slots are never closed")
    }

    /// Resolves while (or as soon as) some download waits for a slot.
    pub async fn wanted(&self) {
        loop {
            let woken = self.wanted.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.waiting.load(Ordering::SeqCst) > 0 {
                return;
            }
            woken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_is_seen_and_gets_the_slot_when_it_is_freed() {
        let slots = Arc::new(FetchSlots::new(1));
        let gauge = Gauge::default();
        let held = slots.acquire(&gauge).await;
        let (s, g) = (slots.clone(), gauge.clone());
        let waiter = tokio::spawn(async move { s.acquire(&g).await });
        slots.wanted().await;
        assert_eq!(gauge.get(), 1);
        drop(held);
        let _got = waiter.await.unwrap();
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_is_no_longer_counted() {
        let slots = FetchSlots::new(1);
        let gauge = Gauge::default();
        let _held = slots.acquire(&gauge).await;
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(10), slots.acquire(&gauge)).await;
        assert!(gave_up.is_err());
        assert_eq!(gauge.get(), 0);
        assert_eq!(slots.waiting.load(Ordering::SeqCst), 0);
    }
}
