//! A read-only memory mapping of a blob file, as `Bytes` whose slices share
//! it, so a stored blob or a verified fetch is served without copying.
//!
//! Mapping is sound here because ferry never truncates or rewrites a blob
//! file: a temp file only grows until it is renamed into place or unlinked,
//! a published blob is immutable, unlinking leaves a mapping valid, and a
//! reader only touches bytes below what the writer reported written.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;

/// A read-only mapping of a file, as `Bytes` (slices share it).
#[derive(Clone)]
pub(crate) struct Mapping {
    bytes: Bytes,
    raw: Arc<memmap2::Mmap>,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mapping({} bytes)", self.bytes.len())
    }
}

struct Owner(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Mapping {
    pub(super) fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub(super) fn slice(&self, from: u64, to: u64) -> Bytes {
        self.bytes.slice(from as usize..to as usize)
    }

    /// Drops this mapping's page-table entries for `[from, to)` so the
    /// pages a reader has passed stop counting in ferry's resident size;
    /// they stay in the page cache, and a later touch maps them again.
    pub(super) fn release(&self, from: u64, to: u64) {
        if to > from {
            // SAFETY: MADV_DONTNEED on a read-only shared file mapping only
            // unmaps pages; their content comes back from the file on the
            // next access, so no slice handed out can observe a change.
            let _ = unsafe {
                self.raw.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    from as usize,
                    (to - from) as usize,
                )
            };
        }
    }
}

/// Maps the first `len` bytes of `file` read-only, advising sequential
/// access; `None` when it cannot (then reads use `pread`).
pub(super) fn map(file: &File, len: u64) -> Option<Mapping> {
    if len == 0 || usize::try_from(len).is_err() {
        return None;
    }
    // SAFETY: see the module comment: blob files are never truncated or
    // rewritten while ferry runs, and readers stay below the written length.
    let m = unsafe { memmap2::MmapOptions::new().len(len as usize).map(file) }.ok()?;
    let _ = m.advise(memmap2::Advice::Sequential);
    let raw = Arc::new(m);
    Some(Mapping {
        bytes: Bytes::from_owner(Owner(raw.clone())),
        raw,
    })
}
