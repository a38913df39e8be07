//! The one rule both readers of unverified bytes follow: **the last byte
//! of a blob is released only once its digest matched.** A connection that
//! has sent all of `Content-Length` counts as complete, so an error after
//! that would come too late; holding back one byte keeps a failed digest
//! able to end the response with an error, never cleanly.
//!
//! [`releasable`] is the rule for a reader that follows a spool by offset
//! (`reader`); [`LastByte`] is the same rule for a body checked as it
//! streams past (`passthrough`).

use bytes::Bytes;

/// How far (exclusive) a response ending at `end` may be sent now, given
/// `limit` (what is written and asked for) and the blob's length: short of
/// the blob's last byte while it is not `verified`, when the response
/// reaches that byte.
pub(super) fn releasable(
    limit: u64,
    end: Option<u64>,
    blob_end: Option<u64>,
    verified: bool,
) -> u64 {
    match blob_end {
        Some(b) if !verified && end.is_some_and(|e| e >= b) => limit.min(b.saturating_sub(1)),
        _ => limit,
    }
}

/// Holds back the last byte of a stream of chunks until [`LastByte::release`].
#[derive(Debug, Default)]
pub(super) struct LastByte {
    held: Option<Bytes>,
}

impl LastByte {
    /// What of `chunk` may be sent now, in order: the byte held before (if
    /// any), then all of `chunk` but its last byte, which is held instead.
    pub(super) fn pass(&mut self, chunk: Bytes) -> (Option<Bytes>, Option<Bytes>) {
        if chunk.is_empty() {
            return (None, None);
        }
        let before = self.held.take();
        let n = chunk.len();
        self.held = Some(chunk.slice(n - 1..));
        let now = (n > 1).then(|| chunk.slice(..n - 1));
        (before, now)
    }

    /// The held byte, once the digest matched.
    pub(super) fn release(&mut self) -> Option<Bytes> {
        self.held.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_byte_waits_for_verification() {
        // A response reaching the blob's end (100 bytes), 100 written.
        assert_eq!(releasable(100, Some(100), Some(100), false), 99);
        assert_eq!(releasable(100, Some(100), Some(100), true), 100);
        // To the end of a blob whose size is known, asked as "all".
        assert_eq!(releasable(100, Some(100), Some(100), false), 99);
        // A range that stops short of the end is not held back.
        assert_eq!(releasable(50, Some(50), Some(100), false), 50);
        // Size unknown: nothing to hold back by offset.
        assert_eq!(releasable(70, None, None, false), 70);
    }

    #[test]
    fn a_stream_keeps_exactly_one_byte_until_released() {
        let mut l = LastByte::default();
        let mut out = Vec::new();
        for c in [&b"abc"[..], b"d", b"", b"ef"] {
            let (a, b) = l.pass(Bytes::copy_from_slice(c));
            out.extend(a.into_iter().chain(b).flat_map(|b| b.to_vec()));
        }
        assert_eq!(out, b"abcde");
        assert_eq!(l.release().as_deref(), Some(&b"f"[..]));
        assert_eq!(l.release(), None);
    }
}
