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
    /// In a cluster, every live replica also takes a copy (the per-node
    /// shape: each node's pulls then read their own store).
    #[serde(default, rename = "everyReplica")]
    pub every_replica: bool,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    /// Every blob of every image is stored.
    Done,
    /// Finished, with failures.
    Failed,
}

impl State {
    /// As the progress answer says it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Done => "done",
            State::Failed => "failed",
        }
    }
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
    /// With `everyReplica`: the same job on each other replica.
    replicas: Mutex<Vec<Replica>>,
}

/// This job's share on another replica, as last heard.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Replica {
    pub peer: String,
    /// Its job's id there, once started.
    pub id: Option<String>,
    pub state: String,
    pub blobs: Count,
    pub bytes: Count,
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
    /// With `everyReplica`: each other replica's share (its counts are not
    /// in `blobs` and `bytes`, which are this replica's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<Replica>,
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
        Progress {
            id: self.id.clone(),
            state: self.state().as_str().to_string(),
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
            replicas: self
                .replicas
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

/// With `everyReplica` in a cluster: starts the job on every other live
/// replica and follows each until it ends; a replica that cannot be asked
/// or whose job failed is a failure of this job.
async fn replicas(app: &App, job: &Job) {
    let Some(cluster) = app.cluster.as_ref().filter(|_| job.request.every_replica) else {
        return;
    };
    // Live peers, not this replica (before it knows its own address, its
    // peer list may hold it).
    let me = cluster.me();
    let peers: Vec<String> = cluster
        .peers()
        .into_iter()
        .filter(|p| p.live && Some(&p.addr) != me.as_ref())
        .map(|p| p.addr)
        .collect();
    let body = Request {
        every_replica: false,
        ..job.request.clone()
    };
    let body = bytes::Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "images": body.images, "platforms": body.platforms,
        }))
        .unwrap_or_default(),
    );
    let set = |peer: &str, f: &dyn Fn(&mut Replica)| {
        let mut r = job.replicas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(one) = r.iter_mut().find(|x| x.peer == peer) {
            f(one);
        }
    };
    *job.replicas.lock().unwrap_or_else(|e| e.into_inner()) = peers
        .iter()
        .map(|p| Replica {
            peer: p.clone(),
            id: None,
            state: "starting".into(),
            blobs: Count { done: 0, total: 0 },
            bytes: Count { done: 0, total: 0 },
        })
        .collect();
    let follow = peers.iter().map(|peer| {
        let body = body.clone();
        async move {
            let id = match cluster.start_prewarm(peer, body).await {
                Ok(id) => id,
                Err(e) => {
                    set(peer, &|r| r.state = "failed".into());
                    job.failed(format!("replica {peer}: {e}"));
                    return;
                }
            };
            set(peer, &|r| {
                r.id = Some(id.clone());
                r.state = "running".into();
            });
            let mut misses = 0;
            loop {
                tokio::time::sleep(PEER_POLL).await;
                match cluster.prewarm_progress(peer, &id).await {
                    Ok(v) => {
                        misses = 0;
                        let p: Progress = match serde_json::from_value(v) {
                            Ok(p) => p,
                            Err(e) => {
                                job.failed(format!("replica {peer}: {e}"));
                                return;
                            }
                        };
                        set(peer, &|r| {
                            r.state = p.state.clone();
                            r.blobs = p.blobs;
                            r.bytes = p.bytes;
                        });
                        if p.state != "running" {
                            for f in &p.failures {
                                job.failed(format!("replica {peer}: {f}"));
                            }
                            return;
                        }
                    }
                    Err(e) if misses < PEER_MISSES => {
                        misses += 1;
                        tracing::debug!(%peer, error = %e, "prewarm: a replica's progress did not come");
                    }
                    Err(e) => {
                        set(peer, &|r| r.state = "failed".into());
                        job.failed(format!("replica {peer}: {e}"));
                        return;
                    }
                }
            }
        }
    });
    futures::future::join_all(follow).await;
}

/// How often another replica's share is asked for.
const PEER_POLL: std::time::Duration = std::time::Duration::from_millis(250);
/// Answers in a row a replica may miss (a restart) before its share fails.
const PEER_MISSES: u32 = 20;

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
            replicas: Mutex::new(Vec::new()),
        });
        self.prewarms.add(job.clone());
        tracing::info!(id = %job.id, images = job.request.images.len(), "prewarm started");
        let (app, running) = (self.clone(), job.clone());
        tokio::spawn(async move {
            let options = Options {
                parallel: prefetch::DEFAULT_PARALLEL,
                platforms: running.request.platforms.clone(),
            };
            let here = async {
                for image in &running.request.images {
                    let counted = |e: Event| running.count(e);
                    if let Err(e) = prefetch::prefetch_for(&app, image, &options, &counted).await {
                        tracing::warn!(id = %running.id, %image, error = %e, "prewarm: an image failed");
                        running.failed(format!("{image}: {e}"));
                    }
                }
            };
            // Each blob is fetched by its owner either way: the replicas'
            // jobs ask it, as this one does.
            futures::join!(here, replicas(&app, &running));
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
