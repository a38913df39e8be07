//! Byte ranges of a blob: one `bytes=` range parsed from a `Range` header
//! ([`ByteRange`]) and resolved against the blob's size ([`RangeRequest`]),
//! as RFC 9110 says. Pure, so the coordinator decides with it and the fuzz
//! target and property tests hold it against a model.
//!
//! Several ranges in one header are a [`RangeSet`]: resolved, sorted, and
//! coalesced where they overlap or touch, and bounded ([`MAX_PARTS`]) by
//! merging the closest ones. Malformed values are ignored, as RFC 9110
//! allows: the client then gets the whole blob with a 200.

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
    parse_one(spec)
}

fn parse_one(spec: &str) -> Option<Spec> {
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

    /// The first byte asked for, when it is known without the blob's size
    /// (`bytes=N-` and `bytes=N-M`; not a suffix).
    pub fn first_byte(self) -> Option<u64> {
        match self.0 {
            Spec::FromTo(start, _) | Spec::From(start) => Some(start),
            Spec::Suffix(_) => None,
        }
    }
}

/// A multipart answer has at most this many parts: more ranges are merged
/// with their nearest neighbours (sending the bytes between them). As many
/// as containers/storage asks for at most (`maxNumberMissingChunks`):
/// containers/image takes a multipart answer only with one part per range
/// it asked for.
pub const MAX_PARTS: usize = 1024;

/// A header with more ranges than this is ignored (the whole blob).
const MAX_SPECS: usize = 4096;

/// Several `bytes=` ranges in one header (`bytes=0-9,20-29,-5`), as
/// podman's partial pulls send them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(Vec<Spec>);

/// A [`RangeSet`] held against a blob's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parts {
    /// What is left after coalescing is one range: a plain `206`.
    One { start: u64, last: u64 },
    /// Sorted, disjoint, not touching, at most [`MAX_PARTS`]: a
    /// `multipart/byteranges` answer.
    Many(Vec<(u64, u64)>),
    /// No range lies inside the blob: 416.
    Unsatisfiable,
}

impl RangeSet {
    /// A `Range` value with two ranges or more; `None` for a single one
    /// (see [`ByteRange`]) and for anything malformed.
    pub fn parse(header: &str) -> Option<RangeSet> {
        let specs = header.trim().strip_prefix("bytes=")?;
        if !specs.contains(',') {
            return None;
        }
        let specs: Option<Vec<Spec>> = specs
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(parse_one)
            .collect();
        let specs = specs?;
        (specs.len() >= 2 && specs.len() <= MAX_SPECS).then_some(RangeSet(specs))
    }

    /// The ranges held against a blob of `size` bytes: those outside it
    /// dropped, the rest coalesced where they overlap or touch (then
    /// sorted), at most [`MAX_PARTS`]. Disjoint ranges within the bound
    /// keep the order they were asked in (RFC 9110 §14.6).
    pub fn resolve(&self, size: u64) -> Parts {
        let asked: Vec<(u64, u64)> = self
            .0
            .iter()
            .filter_map(|s| match resolve_spec(*s, size) {
                RangeRequest::Partial { start, last } => Some((start, last)),
                _ => None,
            })
            .collect();
        let mut parts = asked.clone();
        parts.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(parts.len());
        for (start, last) in parts {
            match merged.last_mut() {
                Some(prev) if start <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
                _ => merged.push((start, last)),
            }
        }
        while merged.len() > MAX_PARTS {
            // The two neighbours with the smallest gap between them.
            let i = (0..merged.len() - 1)
                .min_by_key(|&i| merged[i + 1].0 - merged[i].1)
                .expect("more than one part");
            merged[i].1 = merged[i + 1].1;
            merged.remove(i + 1);
        }
        if merged.len() == asked.len() && asked.len() > 1 {
            // Nothing merged: the client's order.
            merged = asked;
        }
        match merged.as_slice() {
            [] => Parts::Unsatisfiable,
            [(start, last)] => Parts::One {
                start: *start,
                last: *last,
            },
            _ => Parts::Many(merged),
        }
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

    #[test]
    fn several_ranges_are_sorted_coalesced_and_bounded() {
        let set = |h: &str| RangeSet::parse(h).unwrap();
        assert_eq!(
            RangeSet::parse("bytes=0-9"),
            None,
            "one range is a ByteRange"
        );
        assert_eq!(RangeSet::parse("bytes=0-9,x"), None, "malformed: ignored");
        assert_eq!(RangeSet::parse("items=0-9,20-29"), None);
        assert_eq!(
            set("bytes=20-29, 0-9,-5").resolve(100),
            Parts::Many(vec![(20, 29), (0, 9), (95, 99)]),
            "disjoint: in the order asked"
        );
        // Overlapping and touching ranges become one.
        assert_eq!(
            set("bytes=0-9,5-14,15-19").resolve(100),
            Parts::One { start: 0, last: 19 }
        );
        // Ranges outside the blob are dropped; none inside is a 416.
        assert_eq!(
            set("bytes=0-9,200-300").resolve(100),
            Parts::One { start: 0, last: 9 }
        );
        assert_eq!(set("bytes=200-300,400-").resolve(100), Parts::Unsatisfiable);
        // More than MAX_PARTS: the closest neighbours merge first, and
        // every byte asked for is still sent.
        let many: Vec<String> = (0..2000u64)
            .map(|i| format!("{}-{}", i * 100, i * 100 + 9 + (i % 7)))
            .collect();
        let Parts::Many(parts) = set(&format!("bytes={}", many.join(","))).resolve(1 << 20) else {
            panic!("parts");
        };
        assert_eq!(parts.len(), MAX_PARTS);
        for i in 0..2000u64 {
            let (a, b) = (i * 100, i * 100 + 9 + (i % 7));
            assert!(parts.iter().any(|&(s, l)| s <= a && b <= l), "{a}-{b}");
        }
        assert!(parts.windows(2).all(|w| w[0].1 + 1 < w[1].0));
    }
}
