//! Reading the few response headers ferry relies on from an upstream:
//! `Content-Length`, `Content-Range` and `Link` (the distribution-spec's
//! pagination). Pure functions of a header map, so the fetch task, the
//! manifest path and the listings read them the same way.

use http::header::{CONTENT_LENGTH, CONTENT_RANGE, LINK};
use http::HeaderMap;

/// The `Content-Length` header as a number.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The first and last bytes of a `Content-Range: bytes a-b/n` header.
pub fn content_range(headers: &HeaderMap) -> Option<(u64, u64)> {
    let v = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    let range = v.trim().strip_prefix("bytes ")?.split('/').next()?;
    let (a, b) = range.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// The first byte of a `Content-Range: bytes a-b/n` header.
pub fn content_range_start(headers: &HeaderMap) -> Option<u64> {
    content_range(headers).map(|(a, _)| a)
}

/// The whole length `n` of a `Content-Range: bytes a-b/n` header (not
/// when it is `*`).
pub fn content_range_total(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    v.trim().rsplit_once('/')?.1.trim().parse().ok()
}

/// The path of a `Link: <...>; rel="next"` header, when it stays under
/// `/v2/` (an absolute URL is reduced to its path: ferry asks the same
/// registry, never another host).
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(LINK)?.to_str().ok()?;
    let (target, params) = v.split_once(';')?;
    if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
        return None;
    }
    let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
    let uri: http::Uri = target.parse().ok()?;
    let pq = uri.path_and_query()?.as_str().to_string();
    pq.starts_with("/v2/").then_some(pq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            LINK,
            "</v2/a/tags/list?n=2&last=b>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/a/tags/list?n=2&last=b"));
        h.insert(
            LINK,
            "<https://r.example/v2/a/tags/list?last=x>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/a/tags/list?last=x"));
        h.insert(LINK, "</etc/passwd>; rel=\"next\"".parse().unwrap());
        assert_eq!(next_link(&h), None);
    }

    #[test]
    fn ranges_and_lengths() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_RANGE, "bytes 10-19/100".parse().unwrap());
        h.insert(CONTENT_LENGTH, "10".parse().unwrap());
        assert_eq!(content_range(&h), Some((10, 19)));
        assert_eq!(content_range_start(&h), Some(10));
        assert_eq!(content_length(&h), Some(10));
        h.insert(CONTENT_RANGE, "bytes */100".parse().unwrap());
        assert_eq!(content_range(&h), None);
    }
}
