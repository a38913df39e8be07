//! [`OwnerKey`]: what a replica asks its peers about, and the bytes the
//! owner of each is picked by (rendezvous hashing). Built here only, so a
//! blob's and a tag's owner are the same replica whoever asks (a blob's
//! bytes are its digest alone, whatever registry it is wanted from).

use crate::oci::{Digest, Tag};
use crate::routing::Target;

/// A thing that has one owner among the live replicas.
#[derive(Debug, Clone, Copy)]
pub enum OwnerKey<'a> {
    /// A blob, by digest (wanted from `target`'s registry): its owner
    /// fetches it upstream once.
    Blob {
        digest: &'a Digest,
        target: &'a Target,
    },
    /// A tag of a repository at one registry: its owner revalidates it.
    Tag { target: &'a Target, tag: &'a Tag },
}

impl OwnerKey<'_> {
    /// The registry it comes from: only peers that route it as this
    /// replica does may own it.
    pub fn registry(&self) -> &str {
        match self {
            OwnerKey::Blob { target, .. } | OwnerKey::Tag { target, .. } => &target.registry.name,
        }
    }

    /// The bytes rendezvous hashing ranks the peers by.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            OwnerKey::Blob { digest, .. } => digest.to_string().into_bytes(),
            OwnerKey::Tag { target, tag } => {
                format!("tag {}:{tag}", target.peer_route()).into_bytes()
            }
        }
    }
}
