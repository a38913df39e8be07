//! The spool: the temp file a fetch writes and every reader follows, and
//! the blocking writer thread behind it.
//!
//! The network side hands bursts of frames to the writer through a bounded
//! channel ([`Spool::send`]). The writer appends them to the
//! [`TempBlob`](crate::store::TempBlob) (which hashes what it writes),
//! publishes `Progress::Streaming { written }` after each batch (readers
//! wake once per batch, not once per frame), and keeps the last frames in
//! the flight's window for followers close behind. At the end it checks
//! the length, then the digest ([`TempBlob::verify`]), publishes
//! `Verified` (readers may finish) and publishes the blob into the store;
//! only a verified blob can be published. On any failure the temp file is
//! removed when the writer drops it.
//!
//! [`TempBlob::verify`]: crate::store::TempBlob::verify

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::flight::{FetchFailure, Flight, Progress};
use super::state::Coordinator;
use crate::oci::Digest;
use crate::store::{self, FsStore, TempBlob};

/// Readers are woken at least once per this many written bytes when the
/// upstream outpaces the disk; when it does not, every burst is published.
const PUBLISH_BATCH: u64 = 1 << 20;

/// Bursts queued between the network and the writer thread.
const WRITER_QUEUE: usize = 8;

enum ToWriter {
    /// A burst of frames, written with one vectored write.
    Data(Vec<Bytes>),
    End,
}

/// The network side's end of a spool.
pub(super) struct Spool {
    tx: mpsc::Sender<ToWriter>,
    writer: tokio::task::JoinHandle<Result<u64, FetchFailure>>,
}

/// The writer stopped taking bytes (it reports why when finished).
pub(super) struct WriterGone;

impl Spool {
    /// Creates the temp file, shows it to readers and starts the writer.
    /// `size` is the announced length, if any; without one the blob may not
    /// grow past `limit`.
    pub(super) async fn start(
        coordinator: &Arc<Coordinator>,
        flight: &Arc<Flight>,
        size: Option<u64>,
        limit: u64,
    ) -> Result<Spool, FetchFailure> {
        let store = coordinator.store.clone();
        let d = flight.digest.clone();
        let s = store.clone();
        let temp = store::blocking(move || s.create_temp(&d))
            .await
            .map_err(|e| {
                coordinator.lifecycle.space.mark_write_failed(e.to_string());
                FetchFailure::Unwritable(e.to_string())
            })?;
        let reader_file = temp.reader().map_err(|e| {
            FetchFailure::Store(format!(
                "cannot share temp file {}: {e}",
                temp.path().display()
            ))
        })?;
        flight.set_file(Arc::new(reader_file));
        // Refused when the peer it comes from was reported lying: the
        // temp file goes with `temp`.
        flight.begin(size)?;

        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let flight = flight.clone();
        let writer = tokio::task::spawn_blocking(move || {
            write_blob(
                &store,
                temp,
                rx,
                &flight,
                size,
                limit.min(size.unwrap_or(u64::MAX)),
            )
        });
        Ok(Spool { tx, writer })
    }

    /// Hands a burst to the writer.
    pub(super) async fn send(&self, burst: Vec<Bytes>) -> Result<(), WriterGone> {
        self.tx
            .send(ToWriter::Data(burst))
            .await
            .map_err(|_| WriterGone)
    }

    /// Ends the spool: after `Ok(())` from the network the writer verifies
    /// and publishes; after an error it removes the temp file. Returns the
    /// verified size, or why there is none (the network's error first).
    pub(super) async fn finish(
        self,
        network: Result<(), FetchFailure>,
    ) -> Result<u64, FetchFailure> {
        if network.is_ok() {
            // The writer may have stopped already (e.g. too many bytes);
            // its own result then says why.
            let _ = self.tx.send(ToWriter::End).await;
        }
        drop(self.tx);
        let written = self
            .writer
            .await
            .map_err(|e| FetchFailure::Store(format!("writer thread failed: {e}")))?;
        network?;
        written
    }
}

/// The blocking half: write (hashing), publish progress, verify, publish.
fn write_blob(
    store: &FsStore,
    mut temp: TempBlob,
    mut rx: mpsc::Receiver<ToWriter>,
    flight: &Flight,
    size: Option<u64>,
    limit: u64,
) -> Result<u64, FetchFailure> {
    let digest = flight.digest.clone();
    let store_err =
        |e: std::io::Error| FetchFailure::Store(format!("writing {}: {e}", temp_name(&digest)));
    let mut ended = false;
    while !ended {
        let Some(first) = rx.blocking_recv() else {
            // The network side gave up; it reports why. The temp file is
            // removed when `temp` drops.
            return Err(FetchFailure::Abandoned);
        };
        let mut batch_start = temp.written();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                ToWriter::End => {
                    ended = true;
                    break;
                }
                ToWriter::Data(burst) => {
                    let offset = temp.written();
                    let after = offset + burst.iter().map(|b| b.len() as u64).sum::<u64>();
                    if after > limit {
                        return Err(match size {
                            Some(expected) => FetchFailure::LengthMismatch {
                                expected,
                                received: after,
                            },
                            None => FetchFailure::Endless { limit },
                        });
                    }
                    temp.append(&burst).map_err(store_err)?;
                    flight.remember(offset, &burst);
                }
            }
            if temp.written() - batch_start >= PUBLISH_BATCH {
                flight.publish(Progress::Streaming {
                    size,
                    written: temp.written(),
                });
                batch_start = temp.written();
            }
            next = rx.try_recv().ok();
        }
        flight.publish(Progress::Streaming {
            size,
            written: temp.written(),
        });
    }
    let written = temp.written();
    if let Some(expected) = size {
        if written != expected {
            return Err(FetchFailure::LengthMismatch {
                expected,
                received: written,
            });
        }
    }
    let verified = temp.verify().map_err(|m| FetchFailure::DigestMismatch {
        expected: m.expected,
        actual: m.actual,
    })?;
    // Verified: readers may finish while the file is fsynced and renamed.
    flight.publish(Progress::Verified { size: written });
    store
        .publish_blob(verified)
        .map_err(|e| FetchFailure::Store(e.to_string()))?;
    Ok(written)
}

fn temp_name(digest: &Digest) -> String {
    format!("temp file of {digest}")
}
