//! Prewarm jobs: `POST /ferry/v1/prewarm` starts one (a list of images,
//! optionally only some platforms), `GET /ferry/v1/prewarm/<id>` reads its
//! progress. A job is [`super::prefetch`] run in the background, image by
//! image, with its events counted: blobs and bytes done of those planned,
//! and every failure with its image. In a cluster each blob is fetched by
//! its owner, as any pull's is (the coordinator asks the owner; the owner
//! fetches once), so a job on one replica warms the whole cluster.
//!
//! The last [`KEEP`] jobs are remembered; older ones are forgotten (their
//! id answers 404). Who may start one is the HTTP adapter's business
//! (`ferry.adminTokens`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::prefetch::{self, Event, Options};
use super::App;

/// Jobs remembered, newest first.
pub const KEEP: usize = 64;
/// Images in one job at most.
pub const MAX_IMAGES: usize = 256;

/// What `POST /ferry/v1/prewarm` takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Request {
    /// `repo:tag` or `repo@digest` (a registry host first for another
    /// registry than the first).
    pub images: Vec<String>,
    /// `os/arch[/variant]`; empty: every platform.
    #[serde(default)]
    pub platforms: Vec<String>,
}

impl Request {
    /// Why this request cannot be run, naming what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.images.is_empty() || self.images.len() > MAX_IMAGES {
            return Err(format!(
                "images: give 1 to {MAX_IMAGES} images, not {}",
                self.images.len()
            ));
        }
        for image in &self.images {
            prefetch::parse_image(image).map_err(|e| format!("images: {image:?}: {e}"))?;
        }
        if let Some(p) = self.platforms.iter().find(|p| !prefetch::valid_platform(p)) {
            return Err(format!(
                "platforms: {p:?} is not os/architecture[/variant] (linux/amd64, linux/arm64/v8)"
            ));
        }
        Ok(())
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    /// Every blob of every image is stored.
    Done,
    /// Finished, with failures.
    Failed,
}

/// One prewarm job and its counters.
#[derive(Debug)]
pub struct Job {
    pub id: String,
    request: Request,
    state: AtomicU8,
    blobs_total: AtomicU64,
    blobs_done: AtomicU64,
    bytes_total: AtomicU64,
    bytes_done: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// A job's progress as `GET /ferry/v1/prewarm/<id>` answers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    pub id: String,
    pub state: String,
    pub images: Vec<String>,
    pub platforms: Vec<String>,
    pub blobs: Count,
    pub bytes: Count,
    pub failures: Vec<String>,
}

/// Done of total.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Count {
    pub done: u64,
    pub total: u64,
}

impl Job {
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            0 => State::Running,
            1 => State::Done,
            _ => State::Failed,
        }
    }

    pub fn progress(&self) -> Progress {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let state = serde_json::to_value(self.state())
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        Progress {
            id: self.id.clone(),
            state,
            images: self.request.images.clone(),
            platforms: self.request.platforms.clone(),
            blobs: Count {
                done: n(&self.blobs_done),
                total: n(&self.blobs_total),
            },
            bytes: Count {
                done: n(&self.bytes_done),
                total: n(&self.bytes_total),
            },
            failures: self
                .failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn count(&self, event: Event) {
        match event {
            Event::Planned { blobs, bytes } => {
                self.blobs_total.fetch_add(blobs as u64, Ordering::Relaxed);
                self.bytes_total.fetch_add(bytes, Ordering::Relaxed);
            }
            Event::Started { .. } => {}
            Event::Progress { bytes, .. } => {
                self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
            }
            Event::Done { size, cached, .. } => {
                self.blobs_done.fetch_add(1, Ordering::Relaxed);
                if cached {
                    self.bytes_done.fetch_add(size, Ordering::Relaxed);
                }
            }
        }
    }

    fn failed(&self, why: String) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(why);
    }
}

/// The jobs this replica runs or ran (the last [`KEEP`]).
#[derive(Debug, Default)]
pub struct Prewarms {
    jobs: Mutex<VecDeque<Arc<Job>>>,
}

impl Prewarms {
    fn add(&self, job: Arc<Job>) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.push_front(job);
        jobs.truncate(KEEP);
    }

    /// The job `id`, if it is remembered.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.iter().find(|j| j.id == id).cloned()
    }
}

impl App {
    /// Starts a prewarm job for `request` (already [`Request::check`]ed)
    /// and returns it at once; it runs in the background.
    pub fn start_prewarm(self: &Arc<Self>, request: Request) -> Arc<Job> {
        let job = Arc::new(Job {
            id: format!("{:016x}", fastrand::u64(..)),
            request,
            state: AtomicU8::new(0),
            blobs_total: AtomicU64::new(0),
            blobs_done: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
        });
        self.prewarms.add(job.clone());
        tracing::info!(id = %job.id, images = job.request.images.len(), "prewarm started");
        let (app, running) = (self.clone(), job.clone());
        tokio::spawn(async move {
            let options = Options {
                parallel: prefetch::DEFAULT_PARALLEL,
                platforms: running.request.platforms.clone(),
            };
            for image in &running.request.images {
                let counted = |e: Event| running.count(e);
                if let Err(e) = prefetch::prefetch_for(&app, image, &options, &counted).await {
                    tracing::warn!(id = %running.id, %image, error = %e, "prewarm: an image failed");
                    running.failed(format!("{image}: {e}"));
                }
            }
            let failed = !running.progress().failures.is_empty();
            running
                .state
                .store(if failed { 2 } else { 1 }, Ordering::Release);
            let p = running.progress();
            tracing::info!(
                id = %running.id,
                blobs = p.blobs.done,
                bytes = p.bytes.done,
                failures = p.failures.len(),
                "prewarm finished"
            );
        });
        job
    }
}
