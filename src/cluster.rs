//! The cluster: replicas that share one upstream fetch per blob, on the
//! model of groupcache's peer picker. Every blob digest has one owner among
//! the live peers ([`rendezvous`] hashing). A replica that lacks a blob it
//! does not own asks the owner for it over ferry's own HTTP, with a signed
//! peer request ([`signature`]); the owner serves it exactly as it serves a
//! client (its own in-flight dedup, store and upstream fetch) and never
//! forwards a peer request again. The asking replica streams the owner's
//! bytes to its clients at once and verifies and stores them as it would
//! an upstream's (see the coordinator's fetch).
//!
//! This module answers "who owns this key?" ([`Cluster::owner`], in
//! `state`), signs and checks peer requests and answers ([`signature`],
//! `replay`), asks peers (`asking`), and keeps the membership fresh
//! ([`Cluster::run`] in `probing`: DNS, readiness probes, routing
//! fingerprints). A replica feeding `fanout` peers a blob points further
//! askers to one of them ([`tree`]).

mod asking;
mod key;
pub mod membership;
mod prewarm;
mod probing;
pub mod rendezvous;
mod replay;
pub mod signature;
mod state;
pub mod tree;

pub use asking::{BlobAsk, PeerError, LIED_PATH};
pub use key::OwnerKey;
pub use membership::PeerState;
pub use prewarm::{body_binding, PREWARM_PATH};
pub use signature::Signed;
pub use state::{Cluster, PeerCheck, Refusal};
