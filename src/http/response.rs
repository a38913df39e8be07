//! Response bodies and the headers every registry response carries.

use std::io;

use bytes::Bytes;
use futures::TryStreamExt;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;

use crate::coordinator::BlobStream;
use crate::oci::RegistryError;

/// The body of every ferry response. A stream that yields an error makes
/// hyper abort the connection, which is how a failed fetch reaches clients.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";
pub const DIGEST_HEADER: &str = "docker-content-digest";

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn stream(s: BlobStream) -> Body {
    StreamBody::new(s.map_ok(Frame::data)).boxed_unsync()
}

/// An upstream body passed through as it is (errors abort the response).
pub fn passthrough(body: crate::upstream::PassedBody) -> Body {
    body.boxed_unsync()
}

/// An OCI error response; a `HEAD` gets the headers only.
pub fn error(e: &RegistryError, head: bool) -> Response<Body> {
    let json = e.to_json();
    let mut r = Response::builder()
        .status(e.status)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, json.len())
        .header(API_VERSION_HEADER, "registry/2.0");
    if e.status == StatusCode::METHOD_NOT_ALLOWED {
        r = r.header(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    if let Some(secs) = e.retry_after {
        r = r.header(http::header::RETRY_AFTER, secs);
    }
    let body = if head { empty() } else { full(json) };
    r.body(body).expect("static headers are valid")
}
