//! `GET /v2/<name>/tags/list` and `GET /v2/_catalog`, with the spec's
//! pagination (`n`, `last`, lexical order, a `Link` header to the next page).
//!
//! Tags come from the upstream when it answers (all of its pages), else from
//! the tags ferry holds. The catalog lists the repositories ferry holds.

use std::collections::BTreeSet;
use std::sync::Arc;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LINK};
use http::{HeaderMap, Method, Response, StatusCode};

use super::response::{self, Body, API_VERSION_HEADER};
use super::{query_param, App};
use crate::oci::{ErrorCode, RegistryError, Tag};
use crate::routing::{Resolved, Target};
use crate::store;
use crate::upstream::UpstreamError;

/// Upstream tag-list pages followed at most.
const MAX_PAGES: usize = 50;

pub async fn tags(
    app: &Arc<App>,
    repo: &Resolved,
    query: Option<&str>,
    head: bool,
) -> Result<Response<Body>, RegistryError> {
    let tags = match repo.first(upstream_tags).await {
        Ok((t, _)) => t,
        Err(e) if e.is_unavailable() => {
            let mut held = BTreeSet::new();
            for target in &repo.targets {
                let store = app.coordinator.store().clone();
                let (r, n) = (target.registry.name.clone(), target.upstream_name.clone());
                if let Ok(t) = store::blocking(move || store.list_tags(&r, &n)).await {
                    held.extend(t);
                }
            }
            if held.is_empty() {
                return Err(e.to_registry_error(ErrorCode::NameUnknown));
            }
            tracing::warn!(repo = %repo.local, error = %e, "upstream unavailable; listing the tags ferry holds");
            held
        }
        Err(e) => return Err(e.to_registry_error(ErrorCode::NameUnknown)),
    };
    let (page, more) = paginate(tags.into_iter().collect(), query);
    let body = serde_json::json!({ "name": repo.local.as_str(), "tags": page });
    let link = more.map(|(n, last)| {
        format!(
            "</v2/{}/tags/list?n={n}&last={last}>; rel=\"next\"",
            repo.local
        )
    });
    Ok(json_response(body, link, head))
}

pub async fn catalog(
    app: &Arc<App>,
    query: Option<&str>,
    head: bool,
    visible: impl Fn(&str) -> bool,
) -> Result<Response<Body>, RegistryError> {
    let store = app.coordinator.store().clone();
    let mut repos = store::blocking(move || store.list_repositories())
        .await
        .map_err(|e| {
            RegistryError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Unknown,
                format!("cannot list the store's repositories: {e}"),
            )
        })?;
    repos.retain(|r| visible(r));
    let (page, more) = paginate(repos, query);
    let body = serde_json::json!({ "repositories": page });
    let link = more.map(|(n, last)| format!("</v2/_catalog?n={n}&last={last}>; rel=\"next\""));
    Ok(json_response(body, link, head))
}

/// Applies `n` and `last` to a sorted list; returns the page and, when more
/// follow, the `n` and `last` of the next page.
pub fn paginate(items: Vec<String>, query: Option<&str>) -> (Vec<String>, Option<(usize, String)>) {
    let n = query
        .and_then(|q| query_param(q, "n"))
        .and_then(|n| n.parse::<usize>().ok());
    let last = query.and_then(|q| query_param(q, "last"));
    let mut rest: Vec<String> = match &last {
        Some(l) => items.into_iter().filter(|t| t > l).collect(),
        None => items,
    };
    match n {
        Some(n) if rest.len() > n => {
            rest.truncate(n);
            let next = rest.last().cloned().map(|l| (n, l));
            (rest, next)
        }
        _ => (rest, None),
    }
}

fn json_response(body: serde_json::Value, link: Option<String>, head: bool) -> Response<Body> {
    let bytes = serde_json::to_vec(&body).expect("json serializes");
    let mut r = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, bytes.len())
        .header(API_VERSION_HEADER, "registry/2.0");
    if let Some(l) = link {
        r = r.header(LINK, l);
    }
    r.body(if head {
        response::empty()
    } else {
        response::full(bytes)
    })
    .expect("valid headers")
}

/// Every tag of a repository at one registry, following `Link` pages;
/// only tags ferry could serve (which also keeps them safe in headers).
async fn upstream_tags(target: &Target) -> Result<BTreeSet<String>, UpstreamError> {
    let path = format!("/v2/{}/tags/list", target.upstream_name);
    let tags = paged_list(&target.registry.upstream, &path, "tags").await?;
    Ok(tags.into_iter().filter(|t| Tag::parse(t).is_ok()).collect())
}

/// A list the distribution-spec pages with `Link` headers (`tags` of a
/// tag list, `repositories` of a catalog), all pages concatenated.
pub async fn paged_list(
    upstream: &crate::upstream::Upstream,
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
        let body = upstream.read_body(&url, resp.into_body(), 16 << 20).await?;
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

/// The path of a `Link: <...>; rel="next"` header.
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

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pagination() {
        let all = v(&["a", "b", "c", "d"]);
        assert_eq!(paginate(all.clone(), None), (all.clone(), None));
        assert_eq!(
            paginate(all.clone(), Some("n=2")),
            (v(&["a", "b"]), Some((2, "b".into())))
        );
        assert_eq!(
            paginate(all.clone(), Some("n=2&last=b")),
            (v(&["c", "d"]), None)
        );
        assert_eq!(paginate(all.clone(), Some("last=c")), (v(&["d"]), None));
        assert_eq!(paginate(all, Some("n=0")), (v(&[]), None));
    }

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
}
