//! `GET /v2/<name>/tags/list` and `GET /v2/_catalog`, with the spec's
//! pagination (`n`, `last`, lexical order, a `Link` header to the next page).
//!
//! What is listed comes from [`crate::app::listing`]; this adapter pages
//! it and writes the JSON.

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LINK};
use http::{Response, StatusCode};

use super::query_param;
use super::response::{self, Body, API_VERSION_HEADER};
use crate::app::App;
use crate::oci::RegistryError;
use crate::routing::Resolved;

pub async fn tags(
    app: &Arc<App>,
    repo: &Resolved,
    query: Option<&str>,
    head: bool,
) -> Result<Response<Body>, RegistryError> {
    let tags = app.tags(repo).await?;
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
    let repos = app.repositories().await?;
    let repos = repos.iter().filter(|r| visible(r)).cloned().collect();
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
}
