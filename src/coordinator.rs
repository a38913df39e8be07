//! The request coordinator: one upstream fetch per blob, shared by every
//! client that wants it.
//!
//! A blob request finds the blob in the store (a hit), or joins the fetch
//! already in flight for its digest, or starts that fetch. The fetch is a
//! task detached from every client ([`fetch`]); it streams the upstream body
//! into a temp file while hashing it and publishes its [`Progress`] on a
//! `watch` channel. Every client, the first as much as a late one, reads
//! the temp file at its own offset and follows the growing tail
//! ([`reader`]), so a slow or vanished client costs nothing to the others
//! and memory per client is one read buffer. The in-flight entry is removed
//! only after the blob was published (verified, fsynced, renamed) or the
//! fetch failed, so a later request sees either the stored blob or nothing.

mod absent;
mod answer;
mod ask;
mod fetch;
mod fill;
mod flight;
mod handle;
mod holdback;
mod hot;
mod mapping;
mod membership;
mod mirror;
mod multipart;
mod open;
mod pace;
mod passthrough;
mod peer_body;
mod peer_fill;
mod pump;
mod reader;
mod spool;
mod state;
mod transfer;
mod tree;

pub use answer::{BlobAnswer, BlobBody, RangePolicy};
pub use flight::{FetchFailure, Flight, LieReport, Progress};
pub use handle::BlobHandle;
pub use reader::{BlobStream, READ_CHUNK};
pub use state::{Coordinator, FetchSettings};
