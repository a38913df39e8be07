//! The repository list behind `/v2/_catalog`, walked once for everyone.
//!
//! Listing the repositories means walking the store's whole
//! `repositories/` tree on the blocking pool. Every catalog request used to
//! walk it again, so a stream of anonymous requests cost a walk each. Now
//! one walk runs at a time and its answer is kept while it is current for
//! the requests that come: it started after every tag write a request
//! could have seen (the store counts its tag writes), and it is younger
//! than [`MAX_AGE`] (another process sharing the directory writes tags this
//! one does not count).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// The longest a listing is served without walking again.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// The last listing, and the one walk that may be under way.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Held across a walk: who comes meanwhile waits for its answer.
    last: Mutex<Option<Walked>>,
}

#[derive(Debug)]
struct Walked {
    at: Instant,
    /// The store's tag-write count just before the walk started.
    generation: u64,
    repos: Arc<Vec<String>>,
}

impl Catalog {
    /// The repositories, from a walk that started after every tag write
    /// `written` counted when this call began (it reads the store's count
    /// of tag writes), else from a new `walk`, which runs once however
    /// many ask. A caller waits for at most the walk under way and the one
    /// after it, however often tags are written.
    pub async fn list<F, Fut, E>(
        &self,
        written: impl Fn() -> u64,
        walk: F,
    ) -> Result<Arc<Vec<String>>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<String>, E>>,
    {
        let seen = written();
        let mut last = self.last.lock().await;
        if let Some(w) = last.as_ref() {
            if w.generation >= seen && w.at.elapsed() < MAX_AGE {
                return Ok(w.repos.clone());
            }
        }
        // Read before the walk: a tag written during it may be missed, so
        // the walk counts as of this moment, never later.
        let generation = written();
        let at = Instant::now();
        let repos = Arc::new(walk().await?);
        *last = Some(Walked {
            at,
            generation,
            repos: repos.clone(),
        });
        Ok(repos)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use super::*;

    /// A walk that takes a second and counts itself.
    async fn walk(walks: &AtomicUsize) -> Result<Vec<String>, Infallible> {
        let n = walks.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(vec![format!("walk-{n}")])
    }

    #[tokio::test(start_paused = true)]
    async fn requests_share_a_walk_until_a_tag_is_written_or_it_ages() {
        let catalog = Catalog::default();
        let walks = AtomicUsize::new(0);
        let written = AtomicU64::new(7);
        let ask = || catalog.list(|| written.load(Ordering::SeqCst), || walk(&walks));

        // Ten at once: one walk, one answer.
        let answers = futures::future::join_all((0..10).map(|_| ask())).await;
        assert_eq!(walks.load(Ordering::SeqCst), 1);
        assert!(answers
            .iter()
            .all(|a| a.as_ref().unwrap()[..] == ["walk-1"]));

        // Later, nothing written: the same answer, no walk.
        tokio::time::advance(MAX_AGE / 2).await;
        assert_eq!(ask().await.unwrap()[..], ["walk-1"]);
        assert_eq!(walks.load(Ordering::SeqCst), 1);

        // A tag was written: walked again.
        written.store(8, Ordering::SeqCst);
        assert_eq!(ask().await.unwrap()[..], ["walk-2"]);
        // Too old, though nothing was written here: walked again.
        tokio::time::advance(MAX_AGE).await;
        assert_eq!(ask().await.unwrap()[..], ["walk-3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn tags_written_all_the_time_cost_a_walk_per_walk_not_per_request() {
        let catalog = Catalog::default();
        let walks = AtomicUsize::new(0);
        // Every look at the count finds another tag written.
        let written = AtomicU64::new(0);
        let ask = || catalog.list(|| written.fetch_add(1, Ordering::SeqCst), || walk(&walks));
        // Twenty at once: the first walks; the nineteen that waited for it
        // saw a count it started after, or need the one walk after it.
        let answers = futures::future::join_all((0..20).map(|_| ask())).await;
        assert!(answers.iter().all(|a| a.is_ok()));
        let n = walks.load(Ordering::SeqCst);
        assert!(n <= 2, "{n} walks for 20 requests");
    }

    #[tokio::test]
    async fn a_failed_walk_is_not_kept() {
        let catalog = Catalog::default();
        let failed: Result<_, &str> = catalog.list(|| 1, || async { Err("disk gone") }).await;
        assert_eq!(failed.unwrap_err(), "disk gone");
        let ok: Result<_, &str> = catalog.list(|| 1, || async { Ok(vec!["a".into()]) }).await;
        assert_eq!(ok.unwrap()[..], ["a"]);
    }
}
