//! Checking new credentials, at a bounded cost.
//!
//! A bcrypt check costs milliseconds of CPU on purpose (tens at the costs
//! people choose). Remembered pairs ([`Htpasswd::remembered`]) cost a hash
//! lookup, but a client sending a new password each time made ferry run one
//! bcrypt per request on the blocking pool, which also opens and reads the
//! store's files: a flood of wrong passwords took every core and queued
//! every cache hit behind it. Here at most `at_once` checks run (the rest of
//! the machine stays for pulls), at most `queued` more wait, and past that a
//! login is turned away at once as [`Login::Busy`] (a 429 with
//! `Retry-After`), without running anything. Requests that bring the same
//! new pair (a node's parallel pulls after a restart) wait for its one
//! check and take no place: only distinct new pairs are limited.
//!
//! Who waits is fair by client address: one address (an IPv6 /64) has at
//! most [`PER_ADDRESS`] checks admitted at a time, so a flood of wrong
//! passwords from it waits behind itself (its surplus is turned away), and
//! another address's first login finds the queue nearly empty. Waiting
//! checks run in the order they came (the semaphore is fair).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{Mutex, Semaphore};

use super::Htpasswd;

/// How a login check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// The password is the user's.
    Valid,
    /// It is not (or there is no such user).
    Wrong,
    /// Too many checks are running and waiting: not checked.
    Busy,
}

/// The checks of credentials ferry has not seen before.
#[derive(Debug)]
pub struct LoginChecks {
    /// Held by a running check, inside its blocking task.
    running: Arc<Semaphore>,
    /// Held by a check from before it waits until it ends.
    admitted: Semaphore,
    /// Pairs being checked (by their key): who brings one waits for it.
    pending: DashMap<[u8; 32], Arc<Mutex<()>>>,
    /// Checks admitted per client address (absent: none).
    by_address: std::sync::Mutex<HashMap<IpAddr, usize>>,
}

impl LoginChecks {
    /// At most `at_once` bcrypt checks at a time and `queued` waiting.
    pub fn new(at_once: usize, queued: usize) -> LoginChecks {
        LoginChecks {
            running: Arc::new(Semaphore::new(at_once.max(1))),
            admitted: Semaphore::new(at_once.max(1) + queued),
            pending: DashMap::new(),
            by_address: Default::default(),
        }
    }

    /// One check for every four cores (at least one).
    pub fn for_this_machine() -> LoginChecks {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        LoginChecks::new((cores / 4).max(1), QUEUED)
    }

    /// Checks `password` for `user`, for a client at `client` (remembered
    /// pairs cost nothing here).
    pub async fn check(
        &self,
        htpasswd: &Arc<Htpasswd>,
        client: IpAddr,
        user: &str,
        password: &str,
    ) -> Login {
        if let Some(known) = htpasswd.remembered(user, password) {
            return Login::from(known);
        }
        let pair = PendingPair::join(self, super::htpasswd::pair_key(user, password));
        let _one_check_per_pair = pair.lock.lock().await;
        match htpasswd.remembered(user, password) {
            Some(known) => Login::from(known),
            None => self.run(htpasswd, client, user, password).await,
        }
    }

    /// One bcrypt check, when there is room for it, and for its address.
    async fn run(
        &self,
        htpasswd: &Arc<Htpasswd>,
        client: IpAddr,
        user: &str,
        password: &str,
    ) -> Login {
        let Some(_address) = AddressHold::take(self, client) else {
            return Login::Busy;
        };
        let Ok(_admitted) = self.admitted.try_acquire() else {
            return Login::Busy;
        };
        let running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (h, u, p) = (htpasswd.clone(), user.to_string(), password.to_string());
        // The permit moves into the task: a client that hangs up does not
        // free a slot while its check still runs.
        let ok = tokio::task::spawn_blocking(move || {
            let _running = running;
            h.verify(&u, &p)
        })
        .await
        .unwrap_or(false);
        Login::from(ok)
    }
}

/// A request's hold on a pair in [`LoginChecks::pending`]. The entry goes
/// when its last holder drops it, also when the request is dropped while it
/// waits (a client that hangs up): otherwise every abandoned new pair would
/// stay in the map.
struct PendingPair<'a> {
    checks: &'a LoginChecks,
    key: [u8; 32],
    lock: Arc<Mutex<()>>,
}

impl<'a> PendingPair<'a> {
    fn join(checks: &'a LoginChecks, key: [u8; 32]) -> PendingPair<'a> {
        let lock = checks.pending.entry(key).or_default().clone();
        PendingPair { checks, key, lock }
    }
}

impl Drop for PendingPair<'_> {
    fn drop(&mut self) {
        // Held by the map and this hold only: no one else has it, and no
        // one can be taking it (that needs the shard lock held here).
        self.checks
            .pending
            .remove_if(&self.key, |_, p| Arc::strong_count(p) <= 2);
    }
}

/// A check admitted for one client address; counted until dropped.
struct AddressHold<'a> {
    checks: &'a LoginChecks,
    key: IpAddr,
}

impl<'a> AddressHold<'a> {
    /// A place for `client`, if it has fewer than [`PER_ADDRESS`].
    fn take(checks: &'a LoginChecks, client: IpAddr) -> Option<AddressHold<'a>> {
        let key = address_key(client);
        let mut by = checks.by_address.lock().unwrap_or_else(|e| e.into_inner());
        let n = by.entry(key).or_default();
        if *n >= PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(AddressHold { checks, key })
    }
}

impl Drop for AddressHold<'_> {
    fn drop(&mut self) {
        let mut by = self
            .checks
            .by_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                by.remove(&self.key);
            }
        }
    }
}

/// What one client is, for fairness: its IPv4 address, or its IPv6 /64
/// (one host's share of addresses).
fn address_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl From<bool> for Login {
    fn from(valid: bool) -> Login {
        if valid {
            Login::Valid
        } else {
            Login::Wrong
        }
    }
}

/// Checks that may wait for a running one before logins are turned away.
pub const QUEUED: usize = 64;

/// Checks one client address may have admitted (running or waiting) at
/// once.
pub const PER_ADDRESS: usize = 2;

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn users() -> Arc<Htpasswd> {
        // Cost 4, the least bcrypt takes: the test is about counting.
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        Arc::new(Htpasswd::parse(&format!("alice:{hash}\n")).unwrap())
    }

    #[tokio::test]
    async fn checks_past_the_running_and_queued_ones_are_turned_away_unchecked() {
        let h = users();
        let checks = LoginChecks::new(1, 2);
        // Hold the one running slot and both queue places by hand.
        let running = checks.running.clone().acquire_owned().await.unwrap();
        let queued = checks.admitted.try_acquire_many(3).unwrap();
        assert_eq!(checks.check(&h, A, "alice", "guess-1").await, Login::Busy);
        assert_eq!(h.checked(), 0, "a busy login ran bcrypt");
        // Remembered answers need no slot.
        drop((running, queued));
        assert_eq!(checks.check(&h, A, "alice", "s3cret").await, Login::Valid);
        assert_eq!(checks.check(&h, A, "alice", "guess-1").await, Login::Wrong);
        let running = checks.running.clone().acquire_owned().await.unwrap();
        let queued = checks.admitted.try_acquire_many(3).unwrap();
        assert_eq!(checks.check(&h, A, "alice", "s3cret").await, Login::Valid);
        assert_eq!(checks.check(&h, A, "alice", "guess-1").await, Login::Wrong);
        // A user that does not exist is a new pair like any other.
        assert_eq!(checks.check(&h, A, "bob", "anything").await, Login::Busy);
        assert_eq!(h.checked(), 2, "only the two new pairs ran bcrypt");
        drop((running, queued));
        assert_eq!(checks.check(&h, A, "bob", "anything").await, Login::Wrong);
        assert_eq!(h.checked(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_at_once_checks_run_together() {
        let h = users();
        let checks = Arc::new(LoginChecks::new(1, 64));
        let all = (0..16).map(|i| {
            let (h, c) = (h.clone(), checks.clone());
            // Each from its own address: one address has only PER_ADDRESS.
            let client = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, i));
            tokio::spawn(async move { c.check(&h, client, "alice", &format!("guess-{i}")).await })
        });
        for r in futures::future::join_all(all).await {
            assert_eq!(r.unwrap(), Login::Wrong);
        }
        assert_eq!(h.checked(), 16);
        assert_eq!(h.most_at_once(), 1, "checks overlapped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_requests_with_one_new_pair_wait_for_its_one_check_and_take_no_place() {
        let h = users();
        // One running, none queued: a second distinct pair would be busy.
        let checks = Arc::new(LoginChecks::new(1, 0));
        let all = (0..50).map(|_| {
            let (h, c) = (h.clone(), checks.clone());
            tokio::spawn(async move { c.check(&h, A, "alice", "s3cret").await })
        });
        for r in futures::future::join_all(all).await {
            assert_eq!(r.unwrap(), Login::Valid);
        }
        assert_eq!(h.checked(), 1);
        assert!(
            checks.pending.is_empty(),
            "{} pairs left",
            checks.pending.len()
        );
    }

    #[tokio::test]
    async fn a_request_dropped_while_it_waits_leaves_no_pair_behind() {
        let h = users();
        let checks = Arc::new(LoginChecks::new(1, 8));
        // The running slot is taken: the check below waits for it.
        let running = checks.running.clone().acquire_owned().await.unwrap();
        let waiting = {
            let (h, c) = (h.clone(), checks.clone());
            tokio::spawn(async move { c.check(&h, A, "alice", "guess").await })
        };
        while checks.admitted.available_permits() == 9 {
            tokio::task::yield_now().await;
        }
        assert_eq!(checks.pending.len(), 1);
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        assert!(checks.pending.is_empty(), "an abandoned pair stayed");
        assert_eq!(h.checked(), 0);
        drop(running);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_from_one_address_does_not_turn_away_another_addresss_first_login() {
        let h = users();
        let checks = Arc::new(LoginChecks::new(1, QUEUED));
        // The one running slot held: every check that is let in waits.
        let running = checks.running.clone().acquire_owned().await.unwrap();
        let flood: Vec<_> = (0..200)
            .map(|i| {
                let (h, c) = (h.clone(), checks.clone());
                tokio::spawn(async move { c.check(&h, A, "alice", &format!("guess-{i}")).await })
            })
            .collect();
        // The flood has its places (and was turned away past them).
        while checks.admitted.available_permits() > 1 + QUEUED - PER_ADDRESS {
            tokio::task::yield_now().await;
        }
        let other = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));
        let login = {
            let (h, c) = (h.clone(), checks.clone());
            tokio::spawn(async move { c.check(&h, other, "alice", "s3cret").await })
        };
        drop(running);
        assert_eq!(
            login.await.unwrap(),
            Login::Valid,
            "the other address was turned away"
        );
        let mut busy = 0;
        for r in futures::future::join_all(flood).await {
            busy += (r.unwrap() == Login::Busy) as usize;
        }
        assert_eq!(busy, 200 - PER_ADDRESS, "the flood waits behind itself");
        assert_eq!(h.checked(), PER_ADDRESS as u64 + 1);
        // An IPv6 client is one /64.
        let v6 = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(v6("2001:db8:1:2::1"), v6("2001:db8:1:2:ffff::9"));
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
    }
}
