//! The bounds on an upstream body that bypasses the store.
//!
//! The transfer into the store watches its own reads. The bodies that
//! bypass it (a far range passed through to a lazy puller, a blob served
//! uncached when the store has no room) go straight to a client, and get the
//! same three bounds here: `idleReadTimeout` (no bytes for that long),
//! `minReadRate` (a drip that stays just inside the idle timeout), and a
//! length (an upstream that sends more than it was asked for, or a body
//! with no end). Without them such an upstream would hold the client, its
//! connection and the upstream connection for as long as the client waits.
//!
//! Only time spent waiting on the upstream counts toward the first two: a
//! client that stops reading for a while does not make its upstream look
//! stalled or slow.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::rate_floor::RateFloor;
use super::CountedBody;

/// What the bypassing paths get from upstream: counted, and bounded.
pub type PassedBody = Bounded<CountedBody>;

/// What a passed-through body is held to.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The longest wait for a frame (`idleReadTimeout`).
    pub idle: Duration,
    /// Bytes per second over each `idle` of waiting (`minReadRate`; 0: none).
    pub min_rate: u64,
    /// The most data bytes the body may bring: the range asked for, or
    /// `maxBlobSize`.
    pub limit: u64,
}

/// `inner`, ending in an error once it breaks one of its [`Bounds`].
#[derive(Debug)]
pub struct Bounded<B> {
    inner: B,
    bounds: Bounds,
    deadline: Pin<Box<Sleep>>,
    /// Waiting on `inner` since this instant (the deadline is then set).
    waiting_since: Option<Instant>,
    /// Time spent waiting on `inner`, in all: the rate floor's clock.
    waited: Duration,
    floor: RateFloor,
    received: u64,
    /// Names the upstream request in the errors.
    what: String,
    /// An error was returned: the body is over.
    failed: bool,
}

impl<B> Bounded<B> {
    pub fn new(inner: B, bounds: Bounds, what: String) -> Bounded<B> {
        Bounded {
            inner,
            bounds,
            deadline: Box::pin(tokio::time::sleep(bounds.idle)),
            waiting_since: None,
            waited: Duration::ZERO,
            floor: RateFloor::new(bounds.min_rate, bounds.idle),
            received: 0,
            what,
            failed: false,
        }
    }

    fn fail(
        &mut self,
        kind: io::ErrorKind,
        why: String,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.failed = true;
        Poll::Ready(Some(Err(io::Error::new(
            kind,
            format!("{}: {why}", self.what),
        ))))
    }

    /// Checks a data frame of `n` bytes against the length and the rate.
    fn check(&mut self, n: u64) -> Result<(), (io::ErrorKind, String)> {
        self.received += n;
        if self.received > self.bounds.limit {
            return Err((
                io::ErrorKind::InvalidData,
                format!("sent more than its limit of {} bytes", self.bounds.limit),
            ));
        }
        if self.floor.too_slow(n, self.waited) {
            return Err((
                io::ErrorKind::TimedOut,
                format!(
                    "slower than ferry.minReadRate ({} bytes/s over {:?} of waiting)",
                    self.bounds.min_rate, self.bounds.idle
                ),
            ));
        }
        Ok(())
    }
}

impl<B> Body for Bounded<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                match frame {
                    Some(Ok(frame)) => {
                        let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                        match this.check(n) {
                            Ok(()) => Poll::Ready(Some(Ok(frame))),
                            Err((kind, why)) => this.fail(kind, why),
                        }
                    }
                    Some(Err(e)) => this.fail(io::ErrorKind::Other, e.to_string()),
                    None => Poll::Ready(None),
                }
            }
            Poll::Pending => {
                if this.waiting_since.is_none() {
                    let now = Instant::now();
                    this.waiting_since = Some(now);
                    this.deadline.as_mut().reset(now + this.bounds.idle);
                }
                match this.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let idle = this.bounds.idle;
                        this.fail(io::ErrorKind::TimedOut, format!("no bytes for {idle:?}"))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_idle_and_only_waiting_counts() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Bytes>();
        let inner = StreamBody::new(rx.map(|b| Ok::<_, Infallible>(Frame::data(b))));
        let idle = Duration::from_secs(30);
        let bounds = Bounds {
            idle,
            min_rate: 0,
            limit: u64::MAX,
        };
        let mut body = Bounded::new(inner, bounds, "upstream http://r/v2/x/blobs/d".into());
        let next = |b: Option<Result<Frame<Bytes>, io::Error>>| b.unwrap().unwrap().into_data();

        tx.unbounded_send(Bytes::from_static(b"a")).unwrap();
        assert_eq!(next(body.frame().await).unwrap(), "a");
        // A reader away for longer than `idle` finds the next frame waiting:
        // the upstream was not stalled, so no timeout.
        tokio::time::advance(2 * idle).await;
        tx.unbounded_send(Bytes::from_static(b"b")).unwrap();
        assert_eq!(next(body.frame().await).unwrap(), "b");

        // Nothing more comes: the wait ends after `idle`, naming the request.
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            err.to_string().contains("upstream http://r/v2/x/blobs/d"),
            "{err}"
        );
        let waited = started.elapsed();
        assert!(
            waited >= idle && waited < idle + Duration::from_millis(10),
            "{waited:?}"
        );
        drop(tx);
    }

    /// A body fed by hand: frames go in through the sender.
    fn fed(bounds: Bounds) -> (futures::channel::mpsc::UnboundedSender<Bytes>, PassedTest) {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Bytes>();
        let to_frame: fn(Bytes) -> Result<Frame<Bytes>, Infallible> = |b| Ok(Frame::data(b));
        let inner = StreamBody::new(rx.map(to_frame));
        (tx, Bounded::new(inner, bounds, "upstream u".into()))
    }

    type PassedTest = Bounded<
        StreamBody<
            futures::stream::Map<
                futures::channel::mpsc::UnboundedReceiver<Bytes>,
                fn(Bytes) -> Result<Frame<Bytes>, Infallible>,
            >,
        >,
    >;

    #[tokio::test(start_paused = true)]
    async fn a_drip_inside_the_idle_timeout_fails_the_rate_floor_but_a_slow_reader_does_not() {
        const S: Duration = Duration::from_secs(1);
        // 100 bytes/s over 10 s windows of waiting.
        let bounds = Bounds {
            idle: 10 * S,
            min_rate: 100,
            limit: u64::MAX,
        };
        // The upstream drips 10 bytes every 5 s: never idle for 10 s, but
        // 20 bytes a window where 1,000 are due.
        let (tx, mut body) = fed(bounds);
        let drip = tokio::spawn(async move {
            while tx.unbounded_send(Bytes::from_static(b"0123456789")).is_ok() {
                tokio::time::sleep(5 * S).await;
            }
        });
        let mut got = 0;
        let err = loop {
            match body.frame().await {
                Some(Ok(f)) => got += f.into_data().unwrap().len(),
                Some(Err(e)) => break e,
                None => panic!("the drip ended cleanly"),
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("minReadRate"), "{err}");
        assert!(got <= 30, "{got} bytes passed before the floor");
        assert!(body.frame().await.is_none(), "a failed body is over");
        drop(body);
        drop(drip);

        // The upstream sends all of it at once; the client reads a frame a
        // minute. Waiting on the upstream took no time, so it is not slow.
        let (tx, mut body) = fed(bounds);
        for _ in 0..5 {
            tx.unbounded_send(Bytes::from_static(b"0123456789"))
                .unwrap();
        }
        drop(tx);
        let mut got = 0;
        while let Some(f) = body.frame().await {
            got += f.unwrap().into_data().unwrap().len();
            tokio::time::advance(60 * S).await;
        }
        assert_eq!(got, 50);
    }

    #[tokio::test]
    async fn more_bytes_than_the_limit_end_the_body_in_an_error() {
        let bounds = Bounds {
            idle: Duration::from_secs(30),
            min_rate: 0,
            limit: 15,
        };
        let (tx, mut body) = fed(bounds);
        tx.unbounded_send(Bytes::from_static(b"0123456789"))
            .unwrap();
        tx.unbounded_send(Bytes::from_static(b"01234")).unwrap();
        tx.unbounded_send(Bytes::from_static(b"!")).unwrap();
        let mut got = Vec::new();
        let err = loop {
            match body.frame().await.expect("no clean end") {
                Ok(f) => got.extend_from_slice(&f.into_data().unwrap()),
                Err(e) => break e,
            }
        };
        assert_eq!(got, b"012345678901234", "exactly the limit passed");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("more than its limit of 15 bytes"),
            "{err}"
        );
    }
}
