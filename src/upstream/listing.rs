//! Lists the distribution-spec pages with `Link` headers: the `tags` of a
//! tag list and the `repositories` of a catalog, every page concatenated.
//! Used by the tag-list endpoint and by the periodic sync.

use http::{HeaderMap, Method, StatusCode};

use super::headers::next_link;
use super::{Upstream, UpstreamError};

/// Upstream pages followed at most.
pub const MAX_PAGES: usize = 50;

/// The largest page read.
pub const MAX_PAGE_BYTES: usize = 16 << 20;

/// `field` of every page, from `first` on, following `Link: rel="next"`.
pub async fn paged_list(
    upstream: &Upstream,
    first: &str,
    field: &str,
) -> Result<Vec<String>, UpstreamError> {
    let mut path = first.to_string();
    let mut out = Vec::new();
    for _ in 0..MAX_PAGES {
        let url = upstream.url(&path).to_string();
        let resp = upstream
            .request(Method::GET, &path, HeaderMap::new())
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(UpstreamError::Status {
                url,
                status: resp.status(),
            });
        }
        let next = next_link(resp.headers());
        let body = upstream
            .read_body(&url, resp.into_body(), MAX_PAGE_BYTES)
            .await?;
        let page: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| UpstreamError::Protocol {
                url: url.clone(),
                cause: format!("not a {field} list: {e}"),
            })?;
        let items = page
            .get(field)
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten();
        out.extend(items.filter_map(|v| v.as_str().map(str::to_owned)));
        match next {
            Some(p) => path = p,
            None => break,
        }
    }
    Ok(out)
}
