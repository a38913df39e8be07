//! Wiring a node's container runtime to ferry: `ferry configure
//! containerd` writes containerd's `hosts.toml` for every registry ferry
//! routes ([`containerd`]) and checks that containerd reads them
//! ([`containerd_config`]). It runs where the runtime runs (an init
//! container of the per-node DaemonSet, or a person on the node), from
//! the same config file ferry serves with, so the two cannot disagree on
//! which registries go through ferry.

pub mod containerd;
pub mod containerd_config;
