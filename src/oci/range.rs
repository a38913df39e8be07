//! Byte ranges of a blob: one `bytes=` range parsed from a `Range` header
//! ([`ByteRange`]) and resolved against the blob's size ([`RangeRequest`]),
//! as RFC 9110 says. Pure, so the coordinator decides with it and the fuzz
//! target and property tests hold it against a model.
//!
//! Multiple ranges and malformed values are ignored, as RFC 9110 allows: the
//! client then gets the whole blob with a 200.

/// What a `Range` header asks for, once the blob's size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No (usable) range: send everything.
    Full,
    /// Bytes `start..=last`.
    Partial { start: u64, last: u64 },
    /// A range that lies outside the blob: 416.
    Unsatisfiable,
}

/// One `bytes=` range as a client wrote it, not yet held against a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange(Spec);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    FromTo(u64, u64),
    From(u64),
    Suffix(u64),
}

fn parse(header: &str) -> Option<Spec> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => None,
        (true, false) => num(b).map(Spec::Suffix),
        (false, true) => num(a).map(Spec::From),
        (false, false) => {
            let (a, b) = (num(a)?, num(b)?);
            (a <= b).then_some(Spec::FromTo(a, b))
        }
    }
}

impl ByteRange {
    /// A `Range` header's value; `None` for what ferry ignores (several
    /// ranges, other units, nonsense): the whole blob is sent then.
    pub fn parse(header: &str) -> Option<ByteRange> {
        parse(header).map(ByteRange)
    }

    /// This range held against a blob of `size` bytes.
    pub fn resolve(self, size: u64) -> RangeRequest {
        resolve_spec(self.0, size)
    }
}

/// Resolves a `Range` header value against a blob of `size` bytes; with an
/// unknown size, ranges are ignored.
pub fn resolve(header: Option<&str>, size: Option<u64>) -> RangeRequest {
    match (header.and_then(ByteRange::parse), size) {
        (Some(range), Some(size)) => range.resolve(size),
        _ => RangeRequest::Full,
    }
}

fn resolve_spec(spec: Spec, size: u64) -> RangeRequest {
    match spec {
        Spec::FromTo(start, last) if start < size => RangeRequest::Partial {
            start,
            last: last.min(size - 1),
        },
        Spec::From(start) if start < size => RangeRequest::Partial {
            start,
            last: size - 1,
        },
        Spec::Suffix(n) if n > 0 && size > 0 => RangeRequest::Partial {
            start: size - n.min(size),
            last: size - 1,
        },
        _ => RangeRequest::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn resolves_ranges() {
        let r = |h: &str, size: u64| resolve(Some(h), Some(size));
        assert_eq!(r("bytes=0-9", 100), Partial { start: 0, last: 9 });
        assert_eq!(
            r("bytes=90-200", 100),
            Partial {
                start: 90,
                last: 99
            }
        );
        assert_eq!(
            r("bytes=10-", 100),
            Partial {
                start: 10,
                last: 99
            }
        );
        assert_eq!(
            r("bytes=-10", 100),
            Partial {
                start: 90,
                last: 99
            }
        );
        assert_eq!(r("bytes=-1000", 100), Partial { start: 0, last: 99 });
        assert_eq!(r("bytes=100-", 100), Unsatisfiable);
        assert_eq!(r("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(r("bytes=-0", 100), Unsatisfiable);
        assert_eq!(r("bytes=0-0", 0), Unsatisfiable);
        // Ignored: several ranges, nonsense, reversed, other units.
        for h in [
            "bytes=0-1,5-6",
            "bytes=x-y",
            "bytes=9-1",
            "items=0-1",
            "bytes=-",
            "bytes=+1-2",
        ] {
            assert_eq!(r(h, 100), Full, "{h}");
        }
        assert_eq!(resolve(Some("bytes=0-1"), None), Full);
        assert_eq!(resolve(None, Some(5)), Full);
    }
}
