//! Readers: a blob's bytes as a stream, from a stored file or from the temp
//! file of a fetch in flight, following its growing tail.
//!
//! A follower close behind the writer is served from the fetch's window of
//! recently written frames ([`Flight::recent`]): the very buffers the
//! network delivered, shared, with no read at all. A file that no longer
//! changes (a stored blob, or a fetch once verified) is memory-mapped once
//! and served as slices of that mapping: no copy into a buffer, no trip to
//! the blocking pool. Everything else (a follower that fell behind the
//! window, a size unknown, mmap refused) is read with positioned reads
//! (`pread`) on the blocking pool. Either way readers never share an
//! offset. A follower waits on the fetch's `watch` channel when it
//! has caught up with the writer, and ends with an error, never cleanly,
//! when the fetch failed.
//!
//! Mapping is sound here because ferry never truncates or rewrites a blob
//! file: a temp file only grows until it is renamed into place or unlinked,
//! a published blob is immutable, unlinking leaves a mapping valid, and a
//! reader only touches bytes below what the writer reported written.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use super::flight::{Flight, Progress};
use super::holdback;
use super::mapping::{map, Mapping};

/// The largest chunk a reader hands to the connection at once (`pread`).
pub const READ_CHUNK: usize = 256 * 1024;

/// The largest slice of a mapping handed over at once.
const MAPPED_CHUNK: usize = 512 * 1024;

/// A stream of a blob's bytes `[pos, end)`.
pub struct BlobStream {
    inner: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>,
    /// Kept alive for as long as the stream (e.g. an eviction guard).
    _holding: Option<Box<dyn std::any::Any + Send + Sync>>,
}

struct State {
    file: Arc<File>,
    /// The file mapped (from offset 0), when it could be.
    map: Option<Mapping>,
    /// Pages of the mapping below this offset were released.
    released: u64,
    pos: u64,
    /// Exclusive end; `None` means "to the end of the blob".
    end: Option<u64>,
    follow: Option<Follow>,
    /// Hold the response's own last byte (not only the blob's) until the
    /// digest matched: a range then ends cleanly only once verified.
    verified_only: bool,
    finished: bool,
}

struct Follow {
    rx: watch::Receiver<Progress>,
    /// Keeps the fetch's sender (and so the channel) alive.
    flight: Arc<Flight>,
}

impl BlobStream {
    /// Bytes `[start, end)` of a stored blob.
    pub fn stored(file: Arc<File>, start: u64, end: u64) -> BlobStream {
        BlobStream::new(State {
            map: map(&file, end),
            released: start,
            file,
            pos: start,
            end: Some(end),
            follow: None,
            verified_only: false,
            finished: false,
        })
    }

    /// Bytes `[start, end)` of a blob being fetched; waits for bytes that
    /// are not written yet.
    pub fn following(
        flight: Arc<Flight>,
        file: Arc<File>,
        start: u64,
        end: Option<u64>,
    ) -> BlobStream {
        BlobStream::following_with(flight, file, start, end, false)
    }

    /// As [`BlobStream::following`]; with `verified_only`, a range short of
    /// the blob's end also holds back its last byte until the digest
    /// matched (`ferry.verifiedRanges`).
    pub fn following_with(
        flight: Arc<Flight>,
        file: Arc<File>,
        start: u64,
        end: Option<u64>,
        verified_only: bool,
    ) -> BlobStream {
        let rx = flight.subscribe();
        BlobStream::new(State {
            file,
            map: None,
            released: start,
            pos: start,
            end,
            follow: Some(Follow { rx, flight }),
            verified_only,
            finished: false,
        })
    }

    fn new(state: State) -> BlobStream {
        let s = futures::stream::unfold(state, |mut st| async move {
            if st.finished {
                return None;
            }
            let item = st.next_chunk().await;
            match item {
                None => None,
                Some(Err(e)) => {
                    st.finished = true;
                    Some((Err(e), st))
                }
                Some(Ok(b)) => Some((Ok(b), st)),
            }
        });
        BlobStream {
            inner: Box::pin(s),
            _holding: None,
        }
    }

    /// Any stream of bytes (the uncached path).
    pub fn from_stream(s: impl Stream<Item = io::Result<Bytes>> + Send + 'static) -> BlobStream {
        BlobStream {
            inner: Box::pin(s),
            _holding: None,
        }
    }

    /// The same stream with `first` in front (a chunk already taken).
    pub fn prepend(self, first: Bytes) -> BlobStream {
        let BlobStream { inner, _holding } = self;
        let inner = Box::pin(futures::stream::once(async move { Ok(first) }).chain(inner));
        BlobStream { inner, _holding }
    }

    /// Reports each chunk to `tail` (a peer following a download) as it
    /// is handed over; the tail leaves with the stream.
    pub(super) fn reporting_to(self, tail: Option<super::pace::Tail>) -> BlobStream {
        let Some(tail) = tail else { return self };
        let BlobStream { inner, _holding } = self;
        let inner = Box::pin(inner.inspect(move |chunk| {
            if let Ok(b) = chunk {
                tail.advance(b.len() as u64);
            }
        }));
        BlobStream { inner, _holding }
    }

    /// Keeps `value` alive as long as the stream.
    pub fn holding(mut self, value: impl std::any::Any + Send + Sync) -> BlobStream {
        self._holding = Some(Box::new(value));
        self
    }
}

impl Stream for BlobStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl State {
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            // One snapshot of the fetch's progress decides this pass, so a
            // state change in the middle cannot end the stream early.
            let (available, blob_end, done) = match &mut self.follow {
                None => (self.end.unwrap_or(0), self.end, true),
                Some(f) => match f.rx.borrow_and_update().clone() {
                    Progress::Connecting => (0, None, false),
                    Progress::Streaming { size, written } => (written, size, false),
                    Progress::Verified { size } | Progress::Done { size } => {
                        (size, Some(size), true)
                    }
                    Progress::Failed(why) => {
                        return Some(Err(io::Error::other(format!("blob fetch failed: {why}"))));
                    }
                },
            };
            // A file still being written is not mapped (writing into pages
            // mapped elsewhere costs the writer dearly); once verified it
            // will not change again.
            if let (None, Some(size), Some(f), true) = (&self.map, blob_end, &self.follow, done) {
                self.map = f.flight.mapping(size);
            }
            let end = match (self.end, blob_end) {
                (Some(e), Some(b)) => Some(e.min(b)),
                (e, b) => e.or(b),
            };
            if let Some(e) = end.filter(|e| self.pos >= *e) {
                // A response that reaches the end of the blob ends cleanly
                // only once the digest was verified: a fetch can still fail
                // after its last byte was written.
                let reaches_blob_end = self.end.is_none() || blob_end.is_some_and(|b| e >= b);
                if (!reaches_blob_end && !self.verified_only) || done {
                    return None;
                }
            } else {
                let limit = end.map_or(available, |e| e.min(available));
                let limit = if self.verified_only {
                    holdback::releasable(limit, end, end, done)
                } else {
                    holdback::releasable(limit, end, blob_end, done)
                };
                if self.pos < limit {
                    if let Some(m) = self.map.as_ref().filter(|m| limit <= m.len()) {
                        let len = (limit - self.pos).min(MAPPED_CHUNK as u64);
                        let part = m.slice(self.pos, self.pos + len);
                        self.pos += len;
                        // Keep a few chunks mapped behind the cursor (the
                        // connection may still be sending them).
                        let keep_from = self.pos.saturating_sub(2 * MAPPED_CHUNK as u64);
                        if keep_from >= self.released + 2 * MAPPED_CHUNK as u64 {
                            m.release(self.released, keep_from);
                            self.released = keep_from;
                        }
                        return Some(Ok(part));
                    }
                    if let Some(recent) = self
                        .follow
                        .as_ref()
                        .and_then(|f| f.flight.recent(self.pos, limit))
                    {
                        // Just written: the writer's own buffers, no read.
                        self.pos += recent.len() as u64;
                        return Some(Ok(recent));
                    }
                    let len = (limit - self.pos).min(READ_CHUNK as u64) as usize;
                    return Some(self.read(len).await);
                }
                if done {
                    // Done, and the requested start lies past its end.
                    return None;
                }
            }
            match &mut self.follow {
                Some(f) => {
                    if f.rx.changed().await.is_err() {
                        return Some(Err(io::Error::other("blob fetch vanished")));
                    }
                }
                None => return None,
            }
        }
    }

    fn read(&mut self, len: usize) -> BoxFuture<'static, io::Result<Bytes>> {
        let file = self.file.clone();
        let pos = self.pos;
        self.pos += len as u64;
        Box::pin(async move {
            let joined = tokio::task::spawn_blocking(move || {
                let mut buf = BytesMut::zeroed(len);
                let mut filled = 0;
                while filled < len {
                    let n = file.read_at(&mut buf[filled..], pos + filled as u64)?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "blob file ended at byte {} of {}",
                                pos + filled as u64,
                                pos + len as u64
                            ),
                        ));
                    }
                    filled += n;
                }
                Ok(buf.freeze())
            })
            .await;
            joined.unwrap_or_else(|e| Err(io::Error::other(e)))
        })
    }
}

#[cfg(test)]
mod tests {
    //! Readers driven by a fake flight: a temp file the test writes and
    //! progress the test publishes, no fetch task.

    use std::io::Write;

    use futures::StreamExt;

    use super::*;
    use crate::coordinator::flight::FetchFailure;
    use crate::oci::Digest;

    struct Fake {
        flight: Arc<Flight>,
        file: std::fs::File,
        written: u64,
        size: u64,
        _dir: tempfile::TempDir,
    }

    impl Fake {
        fn new(size: u64) -> Fake {
            let dir = tempfile::tempdir().unwrap();
            let file = std::fs::File::create(dir.path().join("spool")).unwrap();
            let flight = Arc::new(Flight::new(
                Digest::sha256_of(b"x"),
                "r".into(),
                crate::routing::Origin::background(),
            ));
            let reader = std::fs::File::open(dir.path().join("spool")).unwrap();
            flight.set_file(Arc::new(reader));
            flight.publish(Progress::Streaming {
                size: Some(size),
                written: 0,
            });
            Fake {
                flight,
                file,
                written: 0,
                size,
                _dir: dir,
            }
        }

        /// Appends `bytes` and says so, as the writer thread does.
        fn write(&mut self, bytes: &[u8], keep_in_window: bool) {
            self.file.write_all(bytes).unwrap();
            if keep_in_window {
                self.flight
                    .remember(self.written, &[Bytes::copy_from_slice(bytes)]);
            }
            self.written += bytes.len() as u64;
            self.flight.publish(Progress::Streaming {
                size: Some(self.size),
                written: self.written,
            });
        }

        fn follow(&self, start: u64, end: Option<u64>) -> BlobStream {
            BlobStream::following(self.flight.clone(), self.flight.file().unwrap(), start, end)
        }
    }

    /// Reads exactly `n` bytes.
    async fn take(s: &mut BlobStream, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < n {
            out.extend_from_slice(&s.next().await.expect("more bytes").unwrap());
        }
        assert_eq!(out.len(), n, "no more than asked");
        out
    }

    /// True when the stream has nothing to give without more progress.
    async fn waits(s: &mut BlobStream) -> bool {
        tokio::time::timeout(std::time::Duration::ZERO, s.next())
            .await
            .is_err()
    }

    /// Everything until the stream ends cleanly.
    async fn rest(s: &mut BlobStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_gets_bytes_as_written_and_the_last_byte_only_once_verified() {
        let mut f = Fake::new(10);
        let mut s = f.follow(0, None);
        assert!(waits(&mut s).await, "nothing written yet");
        f.write(b"abcd", true);
        assert_eq!(take(&mut s, 4).await, b"abcd", "from the window");
        f.write(b"efghij", false);
        assert_eq!(take(&mut s, 5).await, b"efghi", "from the file");
        assert!(waits(&mut s).await, "the last byte waits for the digest");
        f.flight.publish(Progress::Verified { size: 10 });
        assert_eq!(rest(&mut s).await, b"j", "then it comes, and a clean end");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fetch_ends_every_follower_in_an_error_even_after_every_byte() {
        let mut f = Fake::new(4);
        let mut s = f.follow(0, None);
        f.write(b"abcd", true);
        assert_eq!(take(&mut s, 3).await, b"abc");
        assert!(waits(&mut s).await);
        f.flight
            .publish(Progress::Failed(Arc::new(FetchFailure::DigestMismatch {
                expected: Digest::sha256_of(b"x"),
                actual: Digest::sha256_of(b"y"),
            })));
        let end = s.next().await.expect("an item, not a clean end");
        assert!(end.unwrap_err().to_string().contains("hash to"));
        assert!(s.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_range_short_of_the_end_finishes_before_verification() {
        let mut f = Fake::new(10);
        let mut s = f.follow(2, Some(6));
        f.write(b"abcdefgh", false);
        assert_eq!(
            rest(&mut s).await,
            b"cdef",
            "a clean end without the digest"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_joiner_starts_at_its_offset_and_waits_for_the_writer() {
        let mut f = Fake::new(6);
        f.write(b"abc", false);
        let mut s = f.follow(4, None);
        assert!(waits(&mut s).await, "nothing written there yet");
        f.write(b"def", true);
        assert_eq!(take(&mut s, 1).await, b"e");
        f.flight.publish(Progress::Done { size: 6 });
        assert_eq!(rest(&mut s).await, b"f");
    }
}
