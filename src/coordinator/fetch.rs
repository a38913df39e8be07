//! The fetch task: one upstream download of one blob, detached from every
//! client.
//!
//! The candidate registries are asked in order until one answers with the
//! blob (a 404, 401 or 403 passes to the next). When the transfer breaks
//! mid-way it resumes from the bytes already received with
//! `Range: bytes=<n>-` (and `If-Range` when the upstream gave a strong
//! ETag); an upstream that ignores the range and sends the whole blob again
//! is read past what is already written. Readers see a pause, not an error;
//! only when `maxRetries` consecutive attempts make no progress does the
//! fetch fail.
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
use http::header::{ETAG, IF_RANGE, RANGE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::flight::{FetchFailure, Flight, Progress};
use super::BlobStream;
use super::{content_length, content_range_start, Coordinator};
use crate::oci::{Digest, Hasher};
use crate::routing::{Resolved, Target};
use crate::store::{self, FsStore};
use crate::upstream::{error_chain, retry, UpstreamError};

/// Readers are woken at least once per this many written bytes when the
/// upstream outpaces the disk; when it does not, every frame is published.
const PUBLISH_BATCH: u64 = 1 << 20;

/// Bursts queued between the network and the writer thread.
const WRITER_QUEUE: usize = 8;

enum ToWriter {
    /// A burst of frames, written with one vectored write.
    Data(Vec<Bytes>),
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
        self.flight.forget_window();
        self.coordinator.finish(&self.flight);
    }
}

pub(super) async fn run(coordinator: Arc<Coordinator>, flight: Arc<Flight>, repo: Resolved) {
    let guard = FlightGuard {
        coordinator,
        flight,
    };
    let digest = guard.flight.digest.clone();
    let started = std::time::Instant::now();
    match fetch(&guard.coordinator, &guard.flight, &repo).await {
        Ok((size, registry)) => {
            tracing::info!(%digest, repo = %repo.local, registry, bytes = size,
                elapsed_ms = started.elapsed().as_millis() as u64,
                readers = guard.flight.readers(), "blob fetched and stored");
            guard.flight.publish(Progress::Done { size });
        }
        Err(failure) => {
            if let FetchFailure::Upstream(e) = &failure {
                if crate::upstream::is_not_found(e) {
                    guard.coordinator.absent_upstream(&repo, &digest);
                }
            }
            tracing::warn!(%digest, repo = %repo.local, reason = failure.reason(), error = %failure, "blob fetch failed");
            guard.coordinator.metrics.fetch_failed(&failure);
            guard.flight.publish(Progress::Failed(Arc::new(failure)));
        }
    }
    drop(guard);
}

async fn fetch(
    coordinator: &Arc<Coordinator>,
    flight: &Arc<Flight>,
    repo: &Resolved,
) -> Result<(u64, String), FetchFailure> {
    let digest = &flight.digest;

    // A fetch that finished between the caller's store lookup and its
    // in-flight insert has already published the blob.
    let d = digest.clone();
    let s = coordinator.store.clone();
    if let Ok(Some((file, size))) = store::blocking(move || s.open_blob(&d)).await {
        // Published under another repository: the shortcut only if it
        // belongs here too; otherwise the upstream GET below decides.
        if coordinator.belongs(repo, digest).await.is_some() {
            flight.set_file(Arc::new(file));
            return Ok((size, "store".into()));
        }
    }

    if let Some(size) = coordinator.shared_blob(repo, digest).await {
        let copied = match copy_from_shared(coordinator, flight, repo, size).await {
            // The bucket would not even start the GET: ask the upstream.
            None => return fetch_upstream(coordinator, flight, repo).await,
            Some(c) => c,
        };
        if let Err(
            FetchFailure::DigestMismatch { .. }
            | FetchFailure::LengthMismatch { .. }
            | FetchFailure::Endless { .. },
        ) = &copied
        {
            // Damaged in the bucket: delete it, so the next request
            // fetches from upstream (and uploads a good copy).
            if let Some(shared) = coordinator.shared.clone() {
                let d = digest.clone();
                tracing::warn!(digest = %d, store = shared.describe(), "shared blob is damaged; deleting it");
                tokio::spawn(async move { shared.delete_blob(&d).await });
            }
        }
        return copied.map(|n| (n, "shared".into()));
    }
    fetch_upstream(coordinator, flight, repo).await
}

/// The upstream half of [`fetch`].
async fn fetch_upstream(
    coordinator: &Arc<Coordinator>,
    flight: &Arc<Flight>,
    repo: &Resolved,
) -> Result<(u64, String), FetchFailure> {
    let digest = &flight.digest;

    let space = &coordinator.lifecycle.space;
    if space.reserve(0).is_none() {
        return Err(FetchFailure::NoRoom(format!(
            "the store's filesystem is below minFreeSpace or failed a write recently ({} bytes available)",
            space.probe().available()
        )));
    }
    let metrics = &coordinator.metrics;
    let ((resp, _permit), target) = repo
        .first(|t| async move {
            let permit = metrics.queued(&t.registry.fetch_permits).await;
            let resp = t
                .blob(Method::GET, digest, HeaderMap::new(), StatusCode::OK)
                .await?;
            Ok((resp, permit))
        })
        .await
        .map_err(FetchFailure::Upstream)?;
    coordinator
        .router
        .remember(&repo.local, target.registry.index);
    let size = content_length(resp.headers()).unwrap_or(0);
    if size > coordinator.max_blob_size {
        return Err(FetchFailure::Upstream(UpstreamError::TooLarge {
            url: target
                .registry
                .upstream
                .url(&target.blob_path(digest))
                .to_string(),
            limit: coordinator.max_blob_size as usize,
        }));
    }
    let _room = room_for(space, size)?;
    let size = transfer(coordinator, flight, target, resp).await?;
    coordinator
        .lifecycle
        .stored(digest, size, &coordinator.clock);
    coordinator.link(target, vec![digest.clone()]).await;
    Ok((size, target.registry.name.clone()))
}

/// `GET` of the blob at one registry, from `offset` on.
async fn request(
    target: &Target,
    digest: &Digest,
    offset: u64,
    etag: Option<&HeaderValue>,
) -> Result<Response<Incoming>, UpstreamError> {
    let mut headers = HeaderMap::new();
    if offset > 0 {
        headers.insert(
            RANGE,
            HeaderValue::from_str(&format!("bytes={offset}-")).expect("valid"),
        );
        if let Some(tag) = etag {
            headers.insert(IF_RANGE, tag.clone());
        }
    }
    target
        .registry
        .upstream
        .request(Method::GET, &target.blob_path(digest), headers)
        .await
}

/// Reserves room for `size` bytes in the store, or says why there is none.
fn room_for(
    space: &crate::lifecycle::Space,
    size: u64,
) -> Result<crate::lifecycle::Reservation, FetchFailure> {
    space.reserve(size).ok_or_else(|| {
        FetchFailure::NoRoom(format!(
            "{size} bytes do not fit ({} bytes available)",
            space.probe().available()
        ))
    })
}

/// Creates the temp file, shows it to readers and starts the writer thread.
async fn start_spool(
    coordinator: &Arc<Coordinator>,
    flight: &Arc<Flight>,
    size: Option<u64>,
) -> Result<
    (
        mpsc::Sender<ToWriter>,
        tokio::task::JoinHandle<Result<u64, FetchFailure>>,
    ),
    FetchFailure,
> {
    let store = coordinator.store.clone();
    let d = flight.digest.clone();
    let s = store.clone();
    let temp = store::blocking(move || s.create_temp(&d))
        .await
        .map_err(|e| {
            coordinator.lifecycle.space.mark_degraded();
            FetchFailure::NoRoom(format!("the store is not writable: {e}"))
        })?;
    let reader_file = temp.file.try_clone().map_err(|e| {
        FetchFailure::Store(format!(
            "cannot share temp file {}: {e}",
            temp.path.display()
        ))
    })?;
    flight.set_file(Arc::new(reader_file));
    flight.publish(Progress::Streaming { size, written: 0 });

    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    let flight = flight.clone();
    let digest = flight.digest.clone();
    let limit = size.unwrap_or(coordinator.max_blob_size);
    let writer = tokio::task::spawn_blocking(move || {
        write_blob(&store, temp, rx, &flight, &digest, size, limit)
    });
    Ok((tx, writer))
}

/// Copies a blob from the shared tier into the local spool, verified like
/// an upstream transfer (the bucket is trusted no more than an upstream),
/// and accounted like one (free space, the eviction index). None when the
/// bucket would not start the GET: the caller asks the upstream instead.
async fn copy_from_shared(
    coordinator: &Arc<Coordinator>,
    flight: &Arc<Flight>,
    repo: &Resolved,
    size: u64,
) -> Option<Result<u64, FetchFailure>> {
    let digest = &flight.digest;
    let shared = coordinator.shared.as_ref().expect("shared tier checked");
    let body = match shared.read_blob(digest, 0..size).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(%digest, error = %e, "cannot read the shared tier; fetching upstream");
            return None;
        }
    };
    let _room = match room_for(&coordinator.lifecycle.space, size) {
        Ok(r) => r,
        Err(e) => return Some(Err(e)),
    };
    let idle = repo
        .targets
        .first()
        .map(|t| t.registry.upstream.timeouts().idle_read)
        .unwrap_or(std::time::Duration::from_secs(30));
    let copied = transfer_from_shared(coordinator, flight, body, size, idle).await;
    if copied.is_ok() {
        coordinator
            .lifecycle
            .stored(digest, size, &coordinator.clock);
    }
    Some(copied)
}

async fn transfer_from_shared(
    coordinator: &Arc<Coordinator>,
    flight: &Arc<Flight>,
    mut body: futures::stream::BoxStream<'static, std::io::Result<Bytes>>,
    size: u64,
    idle: std::time::Duration,
) -> Result<u64, FetchFailure> {
    let digest = &flight.digest;
    let shared = coordinator.shared.as_ref().expect("shared tier checked");
    let failed = |e: std::io::Error| {
        FetchFailure::Upstream(UpstreamError::Body {
            url: format!("{} ({digest})", shared.describe()),
            cause: e.to_string(),
        })
    };
    let (tx, writer) = start_spool(coordinator, flight, Some(size)).await?;
    let mut network = Ok(());
    loop {
        let chunk = match tokio::time::timeout(idle, futures::StreamExt::next(&mut body)).await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no bytes for {} s", idle.as_secs()),
            )),
        };
        match chunk {
            Ok(b) => {
                coordinator.metrics.shared_read_bytes.inc_by(b.len() as u64);
                if tx.send(ToWriter::Data(vec![b])).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                network = Err(failed(e));
                break;
            }
        }
    }
    if network.is_ok() {
        let _ = tx.send(ToWriter::End).await;
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| FetchFailure::Store(format!("writer thread failed: {e}")))?;
    network?;
    written
}

/// Uploads the blob being fetched to the shared tier, as one more reader
/// of the fetch (see `shared::upload`).
fn mirror_to_shared(
    shared: Arc<crate::shared::Shared>,
    flight: &Arc<Flight>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let Some(file) = flight.file() else {
        return;
    };
    let stream = BlobStream::following(flight.clone(), file, 0, None);
    let digest = flight.digest.clone();
    tokio::spawn(async move {
        match crate::shared::upload::mirror(&shared, &digest, stream).await {
            Ok(m) => {
                if let crate::shared::upload::Mirrored::Uploaded(_) = m {
                    metrics.shared_uploads.inc();
                }
                tracing::debug!(%digest, outcome = ?m, "shared tier upload");
            }
            Err(e) => {
                metrics.shared_upload_failures.inc();
                tracing::warn!(%digest, error = %e, "shared tier upload failed");
            }
        }
    });
}

/// Streams the upstream body into the temp file, resuming broken
/// transfers, and returns the verified size.
async fn transfer(
    coordinator: &Arc<Coordinator>,
    flight: &Arc<Flight>,
    target: &Target,
    first: Response<Incoming>,
) -> Result<u64, FetchFailure> {
    let digest = &flight.digest;
    let size = content_length(first.headers());
    let etag = first
        .headers()
        .get(ETAG)
        .filter(|t| !t.as_bytes().starts_with(b"W/"))
        .cloned();

    let (tx, writer) = start_spool(coordinator, flight, size).await?;
    if let Some(shared) = coordinator.shared.clone() {
        mirror_to_shared(shared, flight, coordinator.metrics.clone());
    }

    let upstream = &target.registry.upstream;
    let (policy, cap) = upstream.retry_policy();
    let timeouts = upstream.timeouts();
    let url = upstream.url(&target.blob_path(digest)).to_string();
    let mut received: u64 = 0;
    let mut skip: u64 = 0;
    let mut failures: u32 = 0;
    let mut progress_mark: u64 = 0;
    let mut response = Some(first);
    let network: Result<(), FetchFailure> = loop {
        let attempt = match response.take() {
            Some(resp) => {
                let fetched = &upstream.stats().bytes;
                pump(
                    resp.into_body(),
                    &tx,
                    &mut received,
                    &mut skip,
                    &timeouts,
                    &url,
                    fetched,
                )
                .await
            }
            None => Err(Pump::Broken(UpstreamError::Protocol {
                url: url.clone(),
                cause: "no response to resume from".into(),
            })),
        };
        let broken = match attempt {
            Ok(()) => {
                // The writer may have stopped already (e.g. too many bytes);
                // its own result then says why.
                let _ = tx.send(ToWriter::End).await;
                break Ok(());
            }
            Err(Pump::WriterGone) => break Ok(()),
            Err(Pump::Broken(e)) => (e, false),
            Err(Pump::TooSlow(e)) => (e, true),
        };
        let (broken, too_slow) = broken;
        // A drip makes some progress on every attempt; it must not earn
        // fresh retries with it.
        if received > progress_mark && !too_slow {
            failures = 0;
            progress_mark = received;
        }
        failures += 1;
        if failures > policy.max_retries {
            break Err(FetchFailure::Upstream(broken));
        }
        tracing::info!(digest = %digest, registry = %target.registry.name, received, error = %broken,
            attempt = failures, "blob transfer broke; resuming");
        upstream.stats().resumes.inc();
        tokio::time::sleep(retry::backoff(&policy, failures - 1, cap)).await;
        match request(target, digest, received, etag.as_ref()).await {
            Ok(resp) if resp.status() == StatusCode::PARTIAL_CONTENT => {
                if content_range_start(resp.headers()) == Some(received) {
                    skip = 0;
                    response = Some(resp);
                } else {
                    tracing::warn!(%digest, "upstream answered the resume with another range; retrying");
                }
            }
            Ok(resp) if resp.status() == StatusCode::OK => {
                // Range ignored (or If-Range failed): the whole blob again.
                if size.is_some() && content_length(resp.headers()) != size {
                    break Err(FetchFailure::Upstream(UpstreamError::Protocol {
                        url: url.clone(),
                        cause: "the blob changed size between attempts".into(),
                    }));
                }
                skip = received;
                response = Some(resp);
            }
            Ok(resp) => {
                tracing::warn!(%digest, status = resp.status().as_u16(), "resume request refused");
            }
            Err(e) => tracing::warn!(%digest, error = %e, "resume request failed"),
        }
    };
    drop(tx);
    let written = writer
        .await
        .map_err(|e| FetchFailure::Store(format!("writer thread failed: {e}")))?;
    network?;
    if let Err(FetchFailure::Store(e)) = &written {
        // Disk full or I/O error: readers of this fetch are aborted; the
        // next requests are served uncached until the store recovers.
        tracing::warn!(%digest, error = %e, "store write failed; not caching for a while");
        coordinator.lifecycle.space.mark_degraded();
    }
    written
}

enum Pump {
    /// The transfer broke; resume may fix it.
    Broken(UpstreamError),
    /// The body arrived slower than `minReadRate`.
    TooSlow(UpstreamError),
    /// The writer stopped (it reports why).
    WriterGone,
}

/// Moves one response body to the writer, dropping the first `skip` bytes
/// (already written by an earlier attempt).
async fn pump(
    mut body: Incoming,
    tx: &mpsc::Sender<ToWriter>,
    received: &mut u64,
    skip: &mut u64,
    timeouts: &crate::config::Timeouts,
    url: &str,
    fetched: &prometheus_client::metrics::counter::Counter,
) -> Result<(), Pump> {
    let idle = timeouts.idle_read;
    let mut floor = RateFloor::new(timeouts.min_read_rate, idle);
    // Frames are held back briefly and handed to the writer in bursts: the
    // writer thread then wakes once per burst, and publishes (waking the
    // readers) once per burst, instead of once per network frame.
    let mut held = Held::default();
    let mut flush_at = tokio::time::Instant::now();
    loop {
        let deadline = if held.is_empty() {
            tokio::time::Instant::now() + idle
        } else {
            flush_at
        };
        let frame = tokio::time::timeout_at(deadline, body.frame()).await;
        let frame = match frame {
            Err(_) if !held.is_empty() => {
                held.flush(tx).await?;
                continue;
            }
            Err(_) => {
                return Err(Pump::Broken(UpstreamError::Timeout {
                    url: url.to_string(),
                    phase: "reading the blob body",
                }))
            }
            Ok(None) => {
                held.flush(tx).await?;
                return Ok(());
            }
            Ok(Some(Err(e))) => {
                held.flush(tx).await?;
                return Err(Pump::Broken(UpstreamError::Body {
                    url: url.to_string(),
                    cause: error_chain(&e),
                }));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        fetched.inc_by(data.len() as u64);
        if floor.too_slow(data.len() as u64, tokio::time::Instant::now()) {
            held.flush(tx).await?;
            return Err(Pump::TooSlow(UpstreamError::Timeout {
                url: url.to_string(),
                phase: "reading the blob body (slower than ferry.minReadRate)",
            }));
        }
        if *skip > 0 {
            let n = (*skip).min(data.len() as u64);
            *skip -= n;
            data = data.slice(n as usize..);
            if data.is_empty() {
                continue;
            }
        }
        let first = *received == 0;
        *received += data.len() as u64;
        if held.is_empty() {
            flush_at = tokio::time::Instant::now() + HOLD_FOR;
        }
        held.push(data);
        if held.bytes >= HOLD_BYTES || first {
            held.flush(tx).await?;
        }
    }
}

/// Watches a body's average rate over consecutive windows of `window`.
struct RateFloor {
    /// Bytes a window must bring; 0 turns the check off.
    need: u64,
    window: std::time::Duration,
    started: tokio::time::Instant,
    got: u64,
}

impl RateFloor {
    fn new(per_second: u64, window: std::time::Duration) -> RateFloor {
        let need = (per_second as f64 * window.as_secs_f64()) as u64;
        RateFloor {
            need,
            window,
            started: tokio::time::Instant::now(),
            got: 0,
        }
    }

    /// Counts `n` bytes that arrived at `now`; true when the window that
    /// just closed brought too few.
    fn too_slow(&mut self, n: u64, now: tokio::time::Instant) -> bool {
        self.got += n;
        if self.need == 0 || now.duration_since(self.started) < self.window {
            return false;
        }
        if self.got < self.need {
            return true;
        }
        self.started = now;
        self.got = 0;
        false
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

    async fn flush(&mut self, tx: &mpsc::Sender<ToWriter>) -> Result<(), Pump> {
        if self.frames.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        let burst = std::mem::take(&mut self.frames);
        tx.send(ToWriter::Data(burst))
            .await
            .map_err(|_| Pump::WriterGone)
    }
}

/// The blocking half: write, hash, publish progress, verify, publish.
fn write_blob(
    store: &FsStore,
    mut temp: store::TempBlob,
    mut rx: mpsc::Receiver<ToWriter>,
    flight: &Flight,
    digest: &Digest,
    size: Option<u64>,
    limit: u64,
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
                ToWriter::Data(burst) => {
                    let offset = written;
                    written += burst.iter().map(|b| b.len() as u64).sum::<u64>();
                    if written > limit {
                        return Err(match size {
                            Some(expected) => FetchFailure::LengthMismatch {
                                expected,
                                received: written,
                            },
                            None => FetchFailure::Endless { limit },
                        });
                    }
                    for b in &burst {
                        hasher.update(b);
                    }
                    write_all_vectored(&mut temp.file, &burst).map_err(store_err)?;
                    flight.remember(offset, &burst);
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
    // Verified: readers may finish while the file is fsynced and renamed.
    flight.publish(Progress::Verified { size: written });
    store
        .publish_blob(&mut temp, digest)
        .map_err(|e| FetchFailure::Store(e.to_string()))?;
    Ok(written)
}

/// Writes every byte of `parts`, in order, with as few syscalls as the
/// kernel allows (`writev`).
fn write_all_vectored(file: &mut std::fs::File, parts: &[Bytes]) -> std::io::Result<()> {
    let (mut i, mut off) = (0, 0);
    while i < parts.len() {
        let mut slices = Vec::with_capacity(parts.len() - i);
        slices.push(std::io::IoSlice::new(&parts[i][off..]));
        slices.extend(parts[i + 1..].iter().map(|p| std::io::IoSlice::new(p)));
        let mut n = file.write_vectored(&slices)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while i < parts.len() && n >= parts[i].len() - off {
            n -= parts[i].len() - off;
            i += 1;
            off = 0;
        }
        off += n;
    }
    Ok(())
}

fn temp_name(digest: &Digest) -> String {
    format!("temp file of {digest}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn vectored_writes_keep_every_byte_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = std::fs::File::create(&path).unwrap();
        let parts: Vec<Bytes> = (0..50u8)
            .map(|i| Bytes::from(vec![i; (i as usize * 977) % 70_000 + 1]))
            .collect();
        write_all_vectored(&mut f, &parts).unwrap();
        let mut got = Vec::new();
        std::fs::File::open(&path)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, parts.concat());
    }
}
