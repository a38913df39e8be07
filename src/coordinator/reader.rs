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
use futures::Stream;
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
        let rx = flight.subscribe();
        BlobStream::new(State {
            file,
            map: None,
            released: start,
            pos: start,
            end,
            follow: Some(Follow { rx, flight }),
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
                if !reaches_blob_end || done {
                    return None;
                }
            } else {
                let limit = end.map_or(available, |e| e.min(available));
                let limit = holdback::releasable(limit, end, blob_end, done);
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
