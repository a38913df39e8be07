//! The OCI distribution vocabulary: repository names, tags, digests, media
//! types, byte ranges of a blob, and the error document every failure is
//! reported in.
//!
//! Everything here is pure parsing with no I/O, so it can be unit-tested and
//! fuzzed on its own. A value that parsed is safe to use in a filesystem path:
//! the grammars below admit no `/`-leading, `.`-leading or percent-encoded
//! component, so no request can name a path outside the store.

mod digest;
mod error;
mod media;
mod name;
mod range;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::{ErrorCode, RegistryError};
pub use media::{default_manifest_accept, is_manifest_media_type, sniff_manifest_media_type};
pub use name::{NameError, Reference, ReferenceError, RepoName, Tag, MAX_NAME_LEN};
pub use range::{resolve as resolve_range, ByteRange, Parts, RangeRequest, RangeSet};
