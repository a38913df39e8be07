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
        queued.inc();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.wanted.notify_waiters();
        let p = self.permits.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        queued.dec();
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
}
