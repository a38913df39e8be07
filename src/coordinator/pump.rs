//! One pass of a body into the spool: the pump every transfer uses.
//!
//! [`pump`] reads a body chunk by chunk (an idle read longer than the
//! configured timeout, or a rate below `minReadRate`, breaks it), holds
//! chunks back briefly so the writer gets bursts, and hands them to the
//! [`Spool`]. Watched ([`Watch`]), it gives a download nobody reads up
//! when another waits for its fetch slot or its orphan budget is spent,
//! and keeps an upstream download within its lead of the peers it feeds
//! ([`Pacing`]). Resuming a broken pass is the caller's ([`super::transfer`]).

use bytes::Bytes;
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;

use super::flight::Flight;
use super::pace::Pacing;
use super::peer_body::Chunks;
use super::spool::Spool;
use crate::config::Timeouts;
use crate::routing::{FetchPermit, FetchSlots};
use crate::upstream::{RateFloor, UpstreamError};

/// How one pass of the pump ended, when not cleanly.
pub(super) enum Pump {
    /// The transfer broke; resume may fix it.
    Broken(UpstreamError),
    /// The body arrived slower than `minReadRate`.
    TooSlow(UpstreamError),
    /// The writer stopped (it reports why).
    WriterGone,
    /// Nobody reads the download, and someone waits for its fetch slot or
    /// the registry's orphan budget is spent (which, for the log).
    Deserted(&'static str),
}

impl From<super::spool::WriterGone> for Pump {
    fn from(_: super::spool::WriterGone) -> Pump {
        Pump::WriterGone
    }
}

/// Where a transfer stands across attempts.
pub(super) struct Position<'a> {
    /// Bytes of the blob handed to the spool so far.
    pub(super) received: &'a mut u64,
    /// Bytes still to drop from this body (already written by an earlier
    /// attempt whose range the upstream ignored).
    pub(super) skip: &'a mut u64,
}

/// What a pump watches to give up a download nobody reads.
pub(super) struct Watch<'a> {
    pub(super) flight: &'a Flight,
    pub(super) slots: &'a FetchSlots,
    pub(super) permit: &'a FetchPermit,
    /// Set when the download is to keep up with the peers it feeds.
    pub(super) pacing: Option<Pacing<'a>>,
}

impl Watch<'_> {
    /// Resolves when the flight has no client left while some other
    /// download waits for a slot that this permit is then promised to give
    /// (a client may come back meanwhile: then it waits for that one to
    /// leave too).
    async fn deserted(&self) {
        loop {
            self.flight.deserted().await;
            self.slots.wanted().await;
            if self.flight.clients() == 0 && self.permit.give_way() {
                return;
            }
        }
    }

    /// Charges `n` bytes to the orphan budget when nobody reads the flight;
    /// false once the budget is spent.
    fn within_budget(&self, n: u64) -> bool {
        self.flight.clients() > 0 || self.permit.charge_orphaned(n)
    }
}

/// Moves one body to the spool. With `watch`, gives up when the flight is
/// deserted while others want its registry's fetch slot, or when it brings
/// more orphaned bytes than its registry's budget.
pub(super) async fn pump(
    mut body: Chunks<'_>,
    spool: &Spool,
    pos: &mut Position<'_>,
    timeouts: &Timeouts,
    url: &str,
    counted: &Counter,
    watch: Option<Watch<'_>>,
) -> Result<(), Pump> {
    let given_up = async {
        match &watch {
            Some(w) => w.deserted().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(given_up);
    let idle = timeouts.idle_read;
    let mut floor = RateFloor::new(timeouts.min_read_rate, idle);
    let started = tokio::time::Instant::now();
    // Chunks are held back briefly and handed to the writer in bursts: the
    // writer thread then wakes once per burst, and publishes (waking the
    // readers) once per burst, instead of once per network frame.
    let mut held = Held::default();
    let mut flush_at = tokio::time::Instant::now();
    // Time spent waiting for peers (not the upstream's to answer for).
    let mut paced = std::time::Duration::ZERO;
    loop {
        if let Some(p) = watch.as_ref().and_then(|w| w.pacing.as_ref()) {
            if p.ahead(*pos.received) {
                held.flush(spool).await?;
                let since = tokio::time::Instant::now();
                tokio::select! {
                    _ = p.hold(*pos.received) => {}
                    () = &mut given_up => return Err(Pump::Deserted("another download waits for a fetch slot")),
                }
                paced += since.elapsed();
            }
        }
        let deadline = if held.is_empty() {
            tokio::time::Instant::now() + idle
        } else {
            flush_at
        };
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, body.next()) => next,
            () = &mut given_up => return Err(Pump::Deserted("another download waits for a fetch slot")),
        };
        let mut data = match next {
            Err(_) if !held.is_empty() => {
                held.flush(spool).await?;
                continue;
            }
            Err(_) => {
                return Err(Pump::Broken(UpstreamError::Timeout {
                    url: url.to_string(),
                    phase: "reading the blob body",
                }))
            }
            Ok(None) => {
                held.flush(spool).await?;
                return Ok(());
            }
            Ok(Some(Err(cause))) => {
                held.flush(spool).await?;
                return Err(Pump::Broken(UpstreamError::Body {
                    url: url.to_string(),
                    cause,
                }));
            }
            Ok(Some(Ok(data))) => data,
        };
        counted.inc_by(data.len() as u64);
        if let Some(w) = &watch {
            if !w.within_budget(data.len() as u64) {
                return Err(Pump::Deserted(
                    "its registry's orphanedBytesPerRegistry is spent",
                ));
            }
        }
        if floor.too_slow(data.len() as u64, started.elapsed().saturating_sub(paced)) {
            held.flush(spool).await?;
            return Err(Pump::TooSlow(UpstreamError::Timeout {
                url: url.to_string(),
                phase: "reading the blob body (slower than ferry.minReadRate)",
            }));
        }
        if *pos.skip > 0 {
            let n = (*pos.skip).min(data.len() as u64);
            *pos.skip -= n;
            data = data.slice(n as usize..);
            if data.is_empty() {
                continue;
            }
        }
        let first = *pos.received == 0;
        *pos.received += data.len() as u64;
        if held.is_empty() {
            flush_at = tokio::time::Instant::now() + HOLD_FOR;
        }
        held.push(data);
        if held.bytes >= HOLD_BYTES || first {
            held.flush(spool).await?;
        }
    }
}

/// A frame is held at most this long for more to join it (the first
/// burst of a transfer is handed over at once, for the first byte's sake).
const HOLD_FOR: std::time::Duration = std::time::Duration::from_millis(4);

/// A burst is handed over once it holds this many bytes.
const HOLD_BYTES: usize = 512 * 1024;

/// Frames received but not yet handed to the writer.
#[derive(Default)]
struct Held {
    frames: Vec<Bytes>,
    bytes: usize,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        self.bytes += b.len();
        self.frames.push(b);
    }

    async fn flush(&mut self, spool: &Spool) -> Result<(), Pump> {
        if self.frames.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        let burst = std::mem::take(&mut self.frames);
        Ok(spool.send(burst).await?)
    }
}
