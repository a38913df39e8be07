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
//! | module | owns |
//! | --- | --- |
//! | [`config`] | the config file (zot's shape + a `ferry` section), flags, defaults |
//! | [`oci`] | names, tags, digests, media types, OCI error documents: pure parsing |
//! | [`listener`] | listeners, connection limits, header limits, TLS reload, forwarded-for, shutdown |
//! | [`http`] | request dispatch, blob and manifest handlers, Range, listings, status page, health |
//! | [`access`] | client access control: htpasswd users, static tokens, repository policies |
//! | [`coordinator`] | the in-flight map, fetch tasks, progress, readers that follow a file, memberships |
//! | [`routing`] | registries, `ns=`, path style, content prefixes, Docker Hub's `library/` |
//! | [`upstream`] | the registry client: pooled HTTP/1.1 + HTTP/2 over rustls, auth, retries, stats |
//! | [`store`] | the content-addressed filesystem store, atomic publish, crash recovery |
//! | [`shared`] | the bucket several replicas share (S3 or a directory): uploads while fetching, upkeep |
//! | [`lifecycle`] | the store's index, size cap and LRU eviction, free space, scrub |
//! | [`metrics`] | the Prometheus registry |
//! | [`sync`], [`prefetch`] | background `pollInterval` sync and `ferry prefetch` |
//!
//! ## The flow of one cold blob
//!
//! ```text
//! client ─GET /v2/<name>/blobs/<digest>─▶ http::route ─▶ Coordinator::open_blob
//!    stored? ── yes ─▶ BlobStream::stored (pread, Range)
//!    in flight? ─ yes ─▶ join: BlobStream::following (temp file, watch)
//!    else ─▶ spawn fetch task (detached) ─▶ upstream GET
//!              └▶ writer thread: temp file + SHA-256, Progress::Streaming{written}
//!              └▶ end: length + digest check ─▶ fsync ─▶ rename ─▶ Done ─▶ leave map
//!                 failure: temp deleted ─▶ Failed(reason) ─▶ readers abort
//! ```

pub mod access;
pub mod clock;
pub mod config;
pub mod coordinator;
pub mod http;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod oci;
pub mod prefetch;
pub mod routing;
pub mod shared;
pub mod stats;
pub mod store;
pub mod sync;
pub mod upstream;

pub use config::Config;
pub use http::{App, Hooks};
pub use listener::Server;
