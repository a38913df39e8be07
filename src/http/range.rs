//! The `Range` request header: parsing one `bytes=` range and resolving it
//! against a blob's size, and `If-Range`.
//!
//! Multiple ranges, several `Range` headers and malformed headers are
//! ignored, as RFC 9110 allows: the client then gets the whole blob with a
//! 200. A blob's entity tag is its digest (`"sha256:..."`, strong), so an
//! `If-Range` naming it keeps the range, and any other `If-Range` (another
//! tag, a weak one, a date: ferry sends no `Last-Modified`) asks for the
//! whole blob.

use http::header::{IF_RANGE, RANGE};
use http::HeaderMap;

use crate::oci::Digest;

/// The `Range` header to honour for a blob request, if any (see the module
/// comment for when one is ignored).
pub fn requested<'a>(headers: &'a HeaderMap, digest: &Digest) -> Option<&'a str> {
    let mut ranges = headers.get_all(RANGE).iter();
    let range = ranges.next()?.to_str().ok()?;
    if ranges.next().is_some() {
        return None;
    }
    if let Some(validator) = headers.get(IF_RANGE) {
        let strong = validator.to_str().ok()?.trim();
        if strong != etag(digest) {
            return None;
        }
    }
    Some(range)
}

/// A blob's entity tag: its digest, quoted (a strong validator).
pub fn etag(digest: &Digest) -> String {
    format!("\"{digest}\"")
}

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

/// Resolves a `Range` header value against a blob of `size` bytes; with an
/// unknown size, ranges are ignored.
pub fn resolve(header: Option<&str>, size: Option<u64>) -> RangeRequest {
    let (Some(h), Some(size)) = (header, size) else {
        return RangeRequest::Full;
    };
    let Some(spec) = parse(h) else {
        return RangeRequest::Full;
    };
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
    fn if_range_and_several_range_headers() {
        let d = Digest::sha256_of(b"blob");
        let with = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        let tag = etag(&d);
        let h = with(&[("range", "bytes=0-1")]);
        assert_eq!(requested(&h, &d), Some("bytes=0-1"));
        let h = with(&[("range", "bytes=0-1"), ("if-range", &tag)]);
        assert_eq!(requested(&h, &d), Some("bytes=0-1"), "our own tag");
        let other = etag(&Digest::sha256_of(b"other"));
        for v in [
            other.as_str(),
            &format!("W/{tag}"),
            "Wed, 21 Oct 2015 07:28:00 GMT",
        ] {
            let h = with(&[("range", "bytes=0-1"), ("if-range", v)]);
            assert_eq!(requested(&h, &d), None, "If-Range {v}: the whole blob");
        }
        let h = with(&[("range", "bytes=0-1"), ("range", "bytes=5-6")]);
        assert_eq!(requested(&h, &d), None, "two Range headers: ignored");
        assert_eq!(requested(&HeaderMap::new(), &d), None);
    }
}
