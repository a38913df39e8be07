//! Lists the distribution-spec pages with `Link` headers: the `tags` of a
//! tag list and the `repositories` of a catalog, every page concatenated.
//! Used by the tag-list endpoint and by the periodic sync.
//!
//! One anonymous request can make ferry read a list, so a list is bounded
//! as a whole ([`ListLimits`]: bytes and names over all pages, and at most
//! [`MAX_PAGES`] pages): an upstream that sends more gets a clear error
//! (`TooLarge`, a 502 for the client) instead of ferry's memory. A page is
//! read within what is left of the byte budget, and parsed straight into
//! the names it carries, skipping everything else without building a tree.

use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;

use super::headers::next_link;
use super::{Upstream, UpstreamError};
use crate::config::ListLimits;

/// Upstream pages followed at most.
pub const MAX_PAGES: usize = 50;

/// The names of one page; any other key is skipped unread.
#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    repositories: Option<Vec<String>>,
}

/// `field` (`tags` or `repositories`) of every page, from `first` on,
/// following `Link: rel="next"`, within `limits`.
pub async fn paged_list(
    upstream: &Upstream,
    first: &str,
    field: &str,
    limits: ListLimits,
) -> Result<Vec<String>, UpstreamError> {
    let mut path = first.to_string();
    let mut out = Vec::new();
    let mut bytes_left = limits.bytes;
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
            .read_body(&url, resp.into_body(), bytes_left)
            .await
            .map_err(|e| match e {
                UpstreamError::TooLarge { url, .. } => UpstreamError::TooLarge {
                    url: format!("{url} (the {field} list, all pages; ferry.maxListSize)"),
                    limit: limits.bytes,
                },
                e => e,
            })?;
        bytes_left -= body.len();
        let page: Page = serde_json::from_slice(&body).map_err(|e| UpstreamError::Protocol {
            url: url.clone(),
            cause: format!("not a {field} list: {e}"),
        })?;
        drop(body);
        let names = if field == "tags" {
            page.tags
        } else {
            page.repositories
        };
        let names = names.unwrap_or_default();
        if out.len() + names.len() > limits.entries {
            return Err(UpstreamError::TooManyNames {
                url: format!("{url} (the {field} list, all pages)"),
                limit: limits.entries,
            });
        }
        out.extend(names);
        match next {
            Some(p) => path = p,
            None => return Ok(out),
        }
    }
    Err(UpstreamError::TooManyPages {
        url: format!("{} (the {field} list)", upstream.url(first)),
        limit: MAX_PAGES,
    })
}
