//! Which cluster peers a fill takes its bytes from, and what other
//! replicas reported about them: one lock for both, so a lie report and a
//! change of source (the fill's start, the next owner after a death, a
//! catch-up, the upstream) are ordered, never crossed.
//!
//! The rule it keeps: a fill whose spool holds (or is about to hold) bytes
//! of a peer reported lying is poisoned: it ends, and it is not joined. A
//! fill that asked the reported peer but took none of its bytes is not: it
//! goes on from the next owner or the upstream, and only a start from the
//! reported peer is refused ([`Sources::begin`]).

use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use crate::routing::PeerId;

/// What a lie report did to this replica's fill of the blob (the `fill`
/// field of its log line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LieReport {
    /// No fill of the blob here.
    NoFill,
    /// The fill has no byte of the liar's, nor asks it (the upstream,
    /// another peer): it goes on; a start from the liar later is refused.
    NotFromLiar,
    /// It asks the liar and has none of its bytes: an ask still waiting
    /// ends as the liar leaves the ring (the blob's next owner is asked),
    /// an answer already taken is not started, and the clients waiting on
    /// it start a fresh fill.
    BeforeFirstByte,
    /// Bytes of the liar's are in its spool: it is poisoned; the body it
    /// reads ends when next polled, its clients' bodies with it.
    Poisoned,
}

impl LieReport {
    pub fn as_str(self) -> &'static str {
        match self {
            LieReport::NoFill => "none",
            LieReport::NotFromLiar => "not_from_liar",
            LieReport::BeforeFirstByte => "before_first_byte",
            LieReport::Poisoned => "poisoned",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// The peer the bytes come from now; `None` when they come from
    /// elsewhere (the upstream, the shared tier, the store).
    now: Option<String>,
    /// The bytes from `now` are a bounded range of what it already has.
    catching_up: bool,
    /// The spool has started: from then on every source feeds it.
    started: bool,
    /// Every peer whose bytes went (or go) into the spool.
    fed_by: Vec<String>,
    /// The peers other replicas reported lying about this blob.
    liars: Vec<String>,
}

/// A fill's peer sources and the lie reports about them.
#[derive(Debug)]
pub(super) struct Sources {
    state: Mutex<State>,
    poisoned: watch::Sender<bool>,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            state: Mutex::default(),
            poisoned: watch::Sender::new(false),
        }
    }
}

impl Sources {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bytes come from `peer` now: the owner first, then its successor
    /// (or, `catching_up`, what a replica ahead already has).
    pub(super) fn set(&self, peer: &str, catching_up: bool) {
        let mut s = self.state();
        s.now = Some(peer.to_string());
        s.catching_up = catching_up;
        if s.started {
            self.feed(&mut s, peer);
        }
    }

    /// The bytes come from no peer now (the upstream, the shared tier).
    pub(super) fn clear(&self) {
        let mut s = self.state();
        s.now = None;
        s.catching_up = false;
    }

    /// The peer the bytes come from now, if one does.
    pub(super) fn now(&self) -> Option<String> {
        self.state().now.clone()
    }

    /// Whether the bytes come from `peer` now and it may not have them yet
    /// (not a catch-up).
    pub(super) fn waits_on(&self, peer: PeerId) -> bool {
        let s = self.state();
        !s.catching_up && s.now.as_deref().is_some_and(|n| PeerId::of(n) == peer)
    }

    /// The spool starts: `publish` shows it to readers, unless the peer it
    /// starts from was reported lying (`Err(that peer)`, nothing shown).
    pub(super) fn begin(&self, publish: impl FnOnce()) -> Result<(), String> {
        let mut s = self.state();
        if let Some(peer) = s.now.clone() {
            if s.liars.contains(&peer) {
                return Err(peer);
            }
            self.feed(&mut s, &peer);
        }
        s.started = true;
        publish();
        Ok(())
    }

    /// Another replica caught `liar` sending bytes that are not the blob.
    pub(super) fn lie_reported(&self, liar: &str) -> LieReport {
        let mut s = self.state();
        if !s.liars.iter().any(|l| l == liar) {
            s.liars.push(liar.to_string());
        }
        if s.fed_by.iter().any(|p| p == liar) {
            self.poisoned.send_replace(true);
            LieReport::Poisoned
        } else if s.now.as_deref() == Some(liar) {
            LieReport::BeforeFirstByte
        } else {
            LieReport::NotFromLiar
        }
    }

    fn feed(&self, s: &mut State, peer: &str) {
        if !s.fed_by.iter().any(|p| p == peer) {
            s.fed_by.push(peer.to_string());
        }
        if s.liars.iter().any(|l| l == peer) {
            self.poisoned.send_replace(true);
        }
    }

    /// Whether bytes of a peer reported lying are in the spool.
    pub(super) fn is_poisoned(&self) -> bool {
        *self.poisoned.borrow()
    }

    /// The first peer whose bytes the spool took and that was reported
    /// lying (what poisoned the fill), if any.
    pub(super) fn poisoned_by(&self) -> Option<String> {
        let s = self.state();
        s.fed_by.iter().find(|p| s.liars.contains(p)).cloned()
    }

    /// Resolves once the fill is poisoned (at once when it is).
    pub(super) async fn poisoned(&self) {
        let mut rx = self.poisoned.subscribe();
        let _ = rx.wait_for(|p| *p).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn from(peer: &str) -> Sources {
        let s = Sources::default();
        s.set(peer, false);
        s
    }

    #[test]
    fn a_report_after_the_answer_was_taken_stops_the_fill_before_its_first_byte() {
        let s = from("liar:1");
        assert_eq!(s.lie_reported("liar:1"), LieReport::BeforeFirstByte);
        let mut shown = false;
        assert_eq!(s.begin(|| shown = true), Err("liar:1".to_string()));
        assert!(!shown, "a reader saw it start");
        assert!(!s.is_poisoned());
    }

    #[test]
    fn a_report_on_a_streaming_fill_poisons_it() {
        let s = from("liar:1");
        s.begin(|| {}).unwrap();
        assert!(!s.is_poisoned());
        assert_eq!(s.lie_reported("liar:1"), LieReport::Poisoned);
        assert!(s.is_poisoned(), "a retry would join the doomed fill");
    }

    #[test]
    fn a_fill_that_only_asked_the_liar_goes_on_from_the_next_owner() {
        let s = from("liar:1");
        // The ask ended as the liar left the ring; the next owner answers.
        s.set("next:1", false);
        assert_eq!(s.lie_reported("liar:1"), LieReport::NotFromLiar);
        s.begin(|| {}).unwrap();
        assert!(!s.is_poisoned());
    }

    #[test]
    fn a_report_on_a_peer_left_behind_still_poisons_the_fill() {
        // The liar sent bytes, then died; the fill goes on from the next
        // owner, then the upstream: the liar's bytes are still in it.
        let s = from("liar:1");
        s.begin(|| {}).unwrap();
        s.set("next:1", false);
        s.clear();
        assert_eq!(s.lie_reported("liar:1"), LieReport::Poisoned);
        assert!(s.is_poisoned());
        assert_eq!(s.poisoned_by().as_deref(), Some("liar:1"));
    }

    #[test]
    fn moving_on_to_a_reported_peer_poisons_the_fill() {
        let s = from("owner:1");
        s.begin(|| {}).unwrap();
        assert_eq!(s.lie_reported("ahead:1"), LieReport::NotFromLiar);
        s.set("ahead:1", true);
        assert!(s.is_poisoned());
    }

    #[test]
    fn a_fill_waits_on_its_peer_unless_it_only_catches_up_with_it() {
        let ahead = PeerId::of("ahead:1");
        let s = from("owner:1");
        assert!(s.waits_on(PeerId::of("owner:1")));
        assert!(!s.waits_on(ahead));
        // The owner died: this replica takes what the one ahead has, which
        // may ask this replica (its next owner) for the rest meanwhile.
        s.set("ahead:1", true);
        assert!(
            !s.waits_on(ahead),
            "a handover would be refused mid catch-up"
        );
        s.set("ahead:1", false);
        assert!(s.waits_on(ahead));
        s.clear();
        assert!(!s.waits_on(ahead));
    }

    #[test]
    fn a_report_racing_the_start_either_stops_it_or_poisons_it() {
        for _ in 0..2000 {
            let s = Arc::new(from("liar:1"));
            let both = Arc::new(std::sync::Barrier::new(2));
            let (t, b) = (s.clone(), both.clone());
            let report = std::thread::spawn(move || {
                b.wait();
                t.lie_reported("liar:1")
            });
            both.wait();
            let began = s.begin(|| {});
            match (report.join().unwrap(), began) {
                (LieReport::BeforeFirstByte, Err(_)) => {}
                (LieReport::Poisoned, Ok(())) => assert!(s.is_poisoned()),
                other => panic!("a report and a start crossed: {other:?}"),
            }
        }
    }
}
