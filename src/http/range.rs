//! The `Range` request header as it arrives: which one to honour, and
//! `If-Range`. Parsing and resolving the range itself is
//! [`crate::oci::ByteRange`].
//!
//! Several `Range` headers and malformed ones are ignored, as RFC 9110
//! allows: the client then gets the whole blob with a 200. One header with
//! several ranges is a [`RangeSet`] (a multipart answer). A blob's entity tag is its digest (`"sha256:..."`, strong), so an
//! `If-Range` naming it keeps the range, and any other `If-Range` (another
//! tag, a weak one, a date: ferry sends no `Last-Modified`) asks for the
//! whole blob.

use http::header::{IF_RANGE, RANGE};
use http::HeaderMap;

use crate::oci::{ByteRange, Digest, RangeSet};

/// The range to honour for a blob request, if any (see the module comment
/// for when one is ignored).
pub fn requested(headers: &HeaderMap, digest: &Digest) -> Option<ByteRange> {
    ByteRange::parse(header(headers, digest)?)
}

/// Several ranges to honour for a blob request, if that is what was asked
/// (`If-Range` and several headers as for one).
pub fn requested_set(headers: &HeaderMap, digest: &Digest) -> Option<RangeSet> {
    RangeSet::parse(header(headers, digest)?)
}

/// The `Range` header's value, unless ignored.
fn header<'a>(headers: &'a HeaderMap, digest: &Digest) -> Option<&'a str> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(header(&h, &d), Some("bytes=0-1"));
        let h = with(&[("range", "bytes=0-1"), ("if-range", &tag)]);
        assert_eq!(header(&h, &d), Some("bytes=0-1"), "our own tag");
        let other = etag(&Digest::sha256_of(b"other"));
        for v in [
            other.as_str(),
            &format!("W/{tag}"),
            "Wed, 21 Oct 2015 07:28:00 GMT",
        ] {
            let h = with(&[("range", "bytes=0-1"), ("if-range", v)]);
            assert_eq!(header(&h, &d), None, "If-Range {v}: the whole blob");
        }
        let h = with(&[("range", "bytes=0-1"), ("range", "bytes=5-6")]);
        assert_eq!(header(&h, &d), None, "two Range headers: ignored");
        assert_eq!(header(&HeaderMap::new(), &d), None);
    }
}
