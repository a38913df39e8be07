//! Request routing: a method and a raw (still percent-encoded) path become
//! a [`Route`] with validated parts, or an OCI error.
//!
//! The path is never decoded: `%2e%2e` stays literal and fails the name
//! grammar. The reference or digest is always the last segment and the
//! keyword (`manifests`, `blobs`, ...) the one before it, so repository
//! names may themselves contain those words.

use http::{Method, StatusCode};

use crate::oci::{Digest, ErrorCode, Reference, ReferenceError, RegistryError, MAX_NAME_LEN};

/// A request ferry knows how to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `name` is raw: routing validates it (it may start with a registry
    /// host, path style).
    Manifest {
        name: String,
        reference: Reference,
    },
    Blob {
        name: String,
        digest: Digest,
    },
    TagsList {
        name: String,
    },
    Referrers {
        name: String,
        digest: Digest,
    },
    /// `/v2/_catalog`: the repositories ferry holds.
    Catalog,
}

/// Routes `method` + `path`. Write methods on any `/v2` path are refused
/// with 405 `UNSUPPORTED`.
pub fn route(method: &Method, path: &str) -> Result<Route, RegistryError> {
    let rest = if path == "/v2" {
        ""
    } else if let Some(r) = path.strip_prefix("/v2/") {
        r
    } else {
        return Err(not_found(path));
    };
    let readonly = method == Method::GET || method == Method::HEAD;
    if !readonly {
        return Err(RegistryError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            format!("{method} is not supported: ferry is a read-only pull-through cache"),
        ));
    }
    if rest.is_empty() {
        return Ok(Route::Base);
    }
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    if n < 3 {
        return Err(not_found(path));
    }
    let name_of = |upto: usize| -> Result<String, RegistryError> {
        let name = segments[..upto].join("/");
        if name.is_empty() || name.len() > MAX_NAME_LEN + 256 {
            // Full grammar checks happen in routing; this only bounds work.
            return Err(RegistryError::bad_request(
                ErrorCode::NameInvalid,
                format!("repository name is empty or {} bytes long", name.len()),
            ));
        }
        Ok(name)
    };
    let last = segments[n - 1];
    match segments[n - 2] {
        "manifests" => {
            let name = name_of(n - 2)?;
            let reference = Reference::parse(last).map_err(|e| match e {
                ReferenceError::Digest(d) => RegistryError::bad_request(
                    ErrorCode::DigestInvalid,
                    format!("manifest digest {:?}: {d}", truncate(last)),
                ),
                ReferenceError::Tag(m) => {
                    RegistryError::bad_request(ErrorCode::ManifestInvalid, m.to_string())
                }
            })?;
            Ok(Route::Manifest { name, reference })
        }
        "blobs" => {
            let name = name_of(n - 2)?;
            let digest = last.parse().map_err(|e| {
                RegistryError::bad_request(
                    ErrorCode::DigestInvalid,
                    format!("blob digest {:?}: {e}", truncate(last)),
                )
            })?;
            Ok(Route::Blob { name, digest })
        }
        "tags" if last == "list" => Ok(Route::TagsList {
            name: name_of(n - 2)?,
        }),
        "referrers" => {
            let name = name_of(n - 2)?;
            let digest = last.parse().map_err(|e| {
                RegistryError::bad_request(
                    ErrorCode::DigestInvalid,
                    format!("referrers digest {:?}: {e}", truncate(last)),
                )
            })?;
            Ok(Route::Referrers { name, digest })
        }
        _ => Err(not_found(path)),
    }
}

fn not_found(path: &str) -> RegistryError {
    RegistryError::not_found(
        ErrorCode::Unsupported,
        format!("no such endpoint: {}", truncate(path)),
    )
}

fn truncate(s: &str) -> &str {
    let max = 200;
    if s.len() <= max {
        return s;
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn get(path: &str) -> Result<Route, RegistryError> {
        route(&Method::GET, path)
    }

    #[test]
    fn routes_the_read_api() {
        assert_eq!(get("/v2/").unwrap(), Route::Base);
        assert_eq!(get("/v2").unwrap(), Route::Base);
        match get(&format!("/v2/a/b/c/blobs/{D}")).unwrap() {
            Route::Blob { name, digest } => {
                assert_eq!(name, "a/b/c");
                assert_eq!(digest.to_string(), D);
            }
            r => panic!("{r:?}"),
        }
        match get("/v2/library/alpine/manifests/3.20").unwrap() {
            Route::Manifest { name, reference } => {
                assert_eq!(name, "library/alpine");
                assert_eq!(reference.to_string(), "3.20");
            }
            r => panic!("{r:?}"),
        }
        // A repository may be called "manifests" or "blobs".
        match get(&format!("/v2/blobs/manifests/blobs/{D}")).unwrap() {
            Route::Blob { name, .. } => assert_eq!(name, "blobs/manifests"),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn bad_input_gets_the_right_code() {
        let code = |p: &str| get(p).unwrap_err();
        // The name grammar is checked by routing (see tests/integration/input.rs).
        assert_eq!(
            code(&format!("/v2//blobs/{D}")).code,
            ErrorCode::NameInvalid
        );
        assert_eq!(
            code("/v2/a/blobs/sha256:xyz").code,
            ErrorCode::DigestInvalid
        );
        assert_eq!(code("/v2/a/blobs/..").code, ErrorCode::DigestInvalid);
        assert_eq!(
            code("/v2/a/manifests/.bad").code,
            ErrorCode::ManifestInvalid
        );
        assert_eq!(
            code("/v2/a/manifests/sha256:zz").code,
            ErrorCode::DigestInvalid
        );
        let long = format!("/v2/{}/manifests/latest", "a".repeat(600));
        assert_eq!(code(&long).code, ErrorCode::NameInvalid);
        assert_eq!(code("/v2/a/unknown/x").status, StatusCode::NOT_FOUND);
        assert_eq!(code("/etc/passwd").status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn writes_are_refused() {
        for m in [Method::PUT, Method::POST, Method::PATCH, Method::DELETE] {
            let e = route(&m, "/v2/a/blobs/uploads/").unwrap_err();
            assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(e.code, ErrorCode::Unsupported);
        }
    }
}
