//! The fetch task: one upstream download of one blob, detached from every
//! client.
//!
//! The async half reads the upstream body frame by frame (an idle read
//! longer than the configured timeout counts as a broken stream) and hands
//! the bytes to a blocking writer thread through a bounded channel. The
//! writer appends them to the temp file, feeds the hasher, and publishes
//! `Progress::Streaming { written }` after each batch, so readers are woken
//! once per batch, not once per frame. At the end the writer checks the
//! length and the digest, fsyncs and renames the file into place; only then
//! is `Done` published and the in-flight entry removed. On any failure the
//! temp file is deleted and `Failed` published.
//!
//! A [`FlightGuard`] makes sure a fetch that panics or is cancelled still
//! publishes `Failed` and leaves the map, so no reader waits forever.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::flight::{FetchFailure, Flight, Progress};
use super::{content_length, Coordinator};
use crate::oci::{Digest, Hasher, RepoName};
use crate::store::{self, FsStore};
use crate::upstream::{error_chain, UpstreamError};

/// Readers are woken at least once per this many written bytes when the
/// upstream outpaces the disk; when it does not, every frame is published.
const PUBLISH_BATCH: u64 = 1 << 20;

/// Frames queued between the network and the writer thread.
const WRITER_QUEUE: usize = 64;

enum ToWriter {
    Data(Bytes),
    End,
}

/// Publishes a final state and leaves the in-flight map, even on panic.
struct FlightGuard {
    coordinator: Arc<Coordinator>,
    flight: Arc<Flight>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if !self.flight.is_final() {
            self.flight
                .publish(Progress::Failed(Arc::new(FetchFailure::Abandoned)));
        }
        self.coordinator.finish(&self.flight);
    }
}

pub(super) async fn run(coordinator: Arc<Coordinator>, flight: Arc<Flight>, repo: RepoName) {
    let guard = FlightGuard {
        coordinator,
        flight,
    };
    let digest = guard.flight.digest.clone();
    let started = std::time::Instant::now();
    match fetch(&guard.coordinator, &guard.flight, &repo).await {
        Ok(size) => {
            tracing::info!(%digest, %repo, bytes = size, elapsed_ms = started.elapsed().as_millis() as u64,
                readers = guard.flight.readers(), "blob fetched and stored");
            guard.flight.publish(Progress::Done { size });
        }
        Err(failure) => {
            tracing::warn!(%digest, %repo, reason = failure.reason(), error = %failure, "blob fetch failed");
            guard.flight.publish(Progress::Failed(Arc::new(failure)));
        }
    }
    drop(guard);
}

async fn fetch(
    coordinator: &Arc<Coordinator>,
    flight: &Arc<Flight>,
    repo: &RepoName,
) -> Result<u64, FetchFailure> {
    let digest = &flight.digest;
    let store = coordinator.store.clone();

    // A fetch that finished between the caller's store lookup and its
    // in-flight insert has already published the blob.
    let d = digest.clone();
    let s = store.clone();
    if let Ok(Some((file, size))) = store::blocking(move || s.open_blob(&d)).await {
        flight.set_file(Arc::new(file));
        return Ok(size);
    }

    let upstream = &coordinator.upstream;
    let url = upstream
        .url(&format!("/v2/{repo}/blobs/{digest}"))
        .to_string();
    let resp = upstream
        .blob(Method::GET, repo, digest)
        .await
        .map_err(FetchFailure::Upstream)?;
    if resp.status() != StatusCode::OK {
        return Err(FetchFailure::Upstream(UpstreamError::Status {
            url,
            status: resp.status(),
        }));
    }
    let size = content_length(resp.headers());

    let d = digest.clone();
    let s = store.clone();
    let temp = store::blocking(move || s.create_temp(&d))
        .await
        .map_err(|e| FetchFailure::Store(e.to_string()))?;
    let reader_file = temp.file.try_clone().map_err(|e| {
        FetchFailure::Store(format!(
            "cannot share temp file {}: {e}",
            temp.path.display()
        ))
    })?;
    flight.set_file(Arc::new(reader_file));
    flight.publish(Progress::Streaming { size, written: 0 });

    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    let writer = {
        let flight = flight.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || write_blob(&store, temp, rx, &flight, &digest, size))
    };

    let idle = upstream.timeouts().idle_read;
    let mut body = resp.into_body();
    let network: Result<(), FetchFailure> = loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                break Err(FetchFailure::Upstream(UpstreamError::Timeout {
                    url: url.clone(),
                    phase: "reading the blob body",
                }))
            }
            Ok(None) => {
                // The writer may have stopped already (e.g. too many bytes);
                // its own result then says why.
                let _ = tx.send(ToWriter::End).await;
                break Ok(());
            }
            Ok(Some(Err(e))) => {
                break Err(FetchFailure::Upstream(UpstreamError::Body {
                    url: url.clone(),
                    cause: error_chain(&e),
                }))
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if tx.send(ToWriter::Data(data)).await.is_err() {
                        break Ok(()); // the writer stopped; its result says why
                    }
                }
            }
        }
    };
    drop(tx);
    let written = writer
        .await
        .map_err(|e| FetchFailure::Store(format!("writer thread failed: {e}")))?;
    network?;
    written
}

/// The blocking half: write, hash, publish progress, verify, publish.
fn write_blob(
    store: &FsStore,
    mut temp: store::TempBlob,
    mut rx: mpsc::Receiver<ToWriter>,
    flight: &Flight,
    digest: &Digest,
    size: Option<u64>,
) -> Result<u64, FetchFailure> {
    let mut hasher = Hasher::new(digest.algorithm());
    let mut written: u64 = 0;
    let store_err =
        |e: std::io::Error| FetchFailure::Store(format!("writing {}: {e}", temp_name(digest)));
    let mut ended = false;
    while !ended {
        let Some(first) = rx.blocking_recv() else {
            // The network side gave up; it reports why. The temp file is
            // removed when `temp` drops.
            return Err(FetchFailure::Abandoned);
        };
        let mut batch_start = written;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                ToWriter::End => {
                    ended = true;
                    break;
                }
                ToWriter::Data(data) => {
                    written += data.len() as u64;
                    if let Some(expected) = size {
                        if written > expected {
                            return Err(FetchFailure::LengthMismatch {
                                expected,
                                received: written,
                            });
                        }
                    }
                    hasher.update(&data);
                    temp.file.write_all(&data).map_err(store_err)?;
                }
            }
            if written - batch_start < PUBLISH_BATCH {
                next = rx.try_recv().ok();
            } else {
                flight.publish(Progress::Streaming { size, written });
                batch_start = written;
                next = rx.try_recv().ok();
            }
        }
        flight.publish(Progress::Streaming { size, written });
    }
    if let Some(expected) = size {
        if written != expected {
            return Err(FetchFailure::LengthMismatch {
                expected,
                received: written,
            });
        }
    }
    let actual = hasher.finish();
    if &actual != digest {
        return Err(FetchFailure::DigestMismatch {
            expected: digest.clone(),
            actual,
        });
    }
    store
        .publish_blob(&mut temp, digest)
        .map_err(|e| FetchFailure::Store(e.to_string()))?;
    Ok(written)
}

fn temp_name(digest: &Digest) -> String {
    format!("temp file of {digest}")
}
