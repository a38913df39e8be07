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
//! Dependencies point one way, top to bottom: no module imports one above
//! it, and inside `coordinator`, `store`, `lifecycle`, `oci`, `cluster`,
//! `routing` and `listener` no child uses its parent's own items either.
//! `tests/integration/house.rs` checks both, that files say what they own
//! (a `//!` first) and stay under 600 lines, and that only the store
//! removes files under its root.
//!
//! | layer | module | owns |
//! | --- | --- | --- |
//! | wiring | [`server`] | `ferry serve`: app + listener + background tasks, started and stopped together |
//! | | [`sync`] | periodic `pollInterval` sync, on top of the service |
//! | | [`node`] | `ferry configure containerd`: a node's `certs.d` written from ferry's routing, and containerd's config checked |
//! | transport | [`listener`] | listeners, connection limits, header limits, TLS, shutdown; calls a [`listener::Handler`] |
//! | | [`http`] | the HTTP adapter: routing a path, `Range`/`If-Range` headers, rendering answers, the access log, health, metrics, status page, the operations API (`/ferry/v1/prewarm`, admin tokens); it decides nothing about where bytes come from |
//! | service | [`app`] | the application state (the coordinator and the cluster side by side), manifests and tag freshness, tags from the owning peer, referrers, listings, who may read what, background tasks, [`prefetch`] (an image's blobs ahead of time) and prewarm jobs (`app::prewarm`) |
//! | | [`access`] | client credentials: htpasswd users, static tokens, repository policies |
//! | coordination | [`coordinator`] | what answers a blob request (`answer`), opening it (`open`), the in-flight map, the fetch task (`fetch`: which source) and the one fill every source goes through (`fill`, `transfer`, `pump`, `spool`), the owning peer and its successor when it dies (`peer_fill`, `ask`), an upstream download kept within its lead of the peers it feeds (`pace`), readers, memberships, memory caches |
//! | | [`routing`] | registries, `ns=`, path style, content prefixes, Docker Hub's `library/`; a request's [`routing::Origin`] (client or peer); fetch slots; how a peer request names a repository ([`routing::PeerRoute`]) and each registry's routing fingerprint ([`routing::fingerprint`]) |
//! | | [`lifecycle`] | the store's index, size cap and LRU eviction, free space, scrub |
//! | | [`metrics`] | the Prometheus registry and every metric family, typed labels ([`metrics::CacheStatus`]); the per-registry families (bytes, retries, resumes, latency, health) are collected at scrape time from [`upstream`]'s stats |
//! | | [`cluster`] | replicas that share fetches: membership and probes, who owns a blob or a tag ([`cluster::OwnerKey`], rendezvous), signed peer requests and answers built in one place, replays refused, peers over HTTPS behind `http.tls` |
//! | storage | [`upstream`] | the registry client: pooled HTTP/1.1 + HTTP/2 over rustls, auth, retries, listings |
//! | | [`store`] | the content-addressed filesystem store: only a [`store::VerifiedBlob`] is published; it alone lists and removes its files and tells one removal listener; the manifest record codec |
//! | | [`shared`] | the bucket several replicas share (S3 or a directory): uploads while fetching, upkeep; [`shared::tiered::Tiered`], local-then-shared for small records |
//! | leaves | [`config`], [`oci`], [`clock`] | the config file and defaults; names, digests, byte ranges, media types, OCI errors; time |
//!
//! ## The flow of one cold blob
//!
//! ```text
//! client ─GET /v2/<name>/blobs/<digest>─▶ http::handle ─▶ Coordinator::get_blob (answer)
//!    shared tier: redirect or ranged read? ─ yes ─▶ BlobAnswer::Redirect / Part
//!    open_blob (open): in memory / stored? ── yes ─▶ (belongs to <name>?) ─▶ BlobHandle::Memory / Stored
//!    in flight? ─ yes ─▶ join: BlobHandle::InFlight ─▶ BlobStream::following
//!    else ─▶ spawn fetch task (detached): fetch opens a source (store, bucket, owning
//!              peer, upstream) ─▶ fill: room, transfer (pump; a dead owner's successor,
//!              or resume at the upstream)
//!              └▶ spool writer thread: TempBlob::append (writes + hashes), Progress::Streaming
//!              └▶ end: length check ─▶ TempBlob::verify ─▶ VerifiedBlob ─▶ publish ─▶ Done
//!                 failure: temp deleted ─▶ Failed(reason) ─▶ readers abort
//!    ─▶ BlobAnswer::Whole / Part / Unsatisfiable ─▶ http::blobs renders it
//! ```
//!
//! The `ferry` binary's subcommands other than `serve` (`check-config`,
//! `configure`, `prewarm`) are command lines around this library, in
//! `src/commands/`.
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
pub mod node;
pub mod oci;
pub use app::prefetch;
pub mod routing;
pub mod server;
pub mod shared;
pub mod store;
pub mod sync;
pub mod upstream;

pub use app::{App, Error, Hooks};
pub use config::Config;
pub use server::Server;
