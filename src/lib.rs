//! # ferry — a streaming pull-through cache for OCI registries
//!
//! Container runtimes use ferry as a registry mirror. ferry fetches what it
//! lacks from the upstream registry, keeps it, and serves it again. A blob
//! that is not cached yet is fetched upstream exactly once, however many
//! clients ask for it at the same time; its bytes reach every client while
//! they are still arriving, and they are stored only once their digest has
//! been verified.
//!
//! ## Map of the house
//!
//! Dependencies point one way, top to bottom; no module imports one above
//! it (`python3 tools/modcycles.py src`-style checks find no cycle).
//!
//! | layer | module | owns |
//! | --- | --- | --- |
//! | wiring | [`server`] | `ferry serve`: app + listener + background tasks, started and stopped together |
//! | | [`sync`], [`prefetch`] | periodic `pollInterval` sync and `ferry prefetch`, on top of the service |
//! | transport | [`listener`] | listeners, connection limits, header limits, TLS, shutdown; calls a [`listener::Handler`] |
//! | | [`http`] | the HTTP adapter: routing a path, Range, responses, the access log, health, metrics, status page |
//! | service | [`app`] | the application state, manifests and tag freshness, referrers, listings, who may read what, background tasks |
//! | | [`access`] | client credentials: htpasswd users, static tokens, repository policies |
//! | coordination | [`coordinator`] | the in-flight map, fetch tasks (source, transfer, spool), readers, memberships, memory caches |
//! | | [`routing`] | registries, `ns=`, path style, content prefixes, Docker Hub's `library/` |
//! | | [`lifecycle`] | the store's index, size cap and LRU eviction, free space, scrub |
//! | | [`metrics`] | every Prometheus metric, with typed labels ([`metrics::CacheStatus`]) |
//! | | [`cluster`] | replicas that share fetches: membership and probes, rendezvous ownership, signed peer requests |
//! | storage | [`upstream`] | the registry client: pooled HTTP/1.1 + HTTP/2 over rustls, auth, retries, listings |
//! | | [`store`] | the content-addressed filesystem store; only a [`store::VerifiedBlob`] is published |
//! | | [`shared`] | the bucket several replicas share (S3 or a directory): uploads while fetching, upkeep |
//! | leaves | [`config`], [`oci`], [`clock`] | the config file and defaults; names, digests, media types, OCI errors; time |
//!
//! ## The flow of one cold blob
//!
//! ```text
//! client ─GET /v2/<name>/blobs/<digest>─▶ http::handle ─▶ Coordinator::open_blob
//!    in memory / stored? ── yes ─▶ (belongs to <name>?) ─▶ BlobHandle::Memory / Stored
//!    in flight? ─ yes ─▶ join: BlobHandle::InFlight ─▶ BlobStream::following
//!    else ─▶ spawn fetch task (detached): fetch (source: store, bucket, owning peer,
//!              upstream) ─▶ transfer (pump, resume at the upstream)
//!              └▶ spool writer thread: TempBlob::append (writes + hashes), Progress::Streaming
//!              └▶ end: length check ─▶ TempBlob::verify ─▶ VerifiedBlob ─▶ publish ─▶ Done
//!                 failure: temp deleted ─▶ Failed(reason) ─▶ readers abort
//! ```
//!
//! docs/internals.md has the store layout and the invariants in full.

pub mod access;
pub mod app;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod http;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod oci;
pub mod prefetch;
pub mod routing;
pub mod server;
pub mod shared;
pub mod store;
pub mod sync;
pub mod upstream;

pub use app::{App, Error, Hooks};
pub use config::Config;
pub use server::Server;
