//! The OCI error document (`{"errors":[{"code","message","detail"}]}`) and the
//! codes ferry answers with.
//!
//! Every failure a client sees goes through [`RegistryError`], so each one has
//! a status, a spec code a runtime can act on, and a message that names the
//! object and the cause.

use http::StatusCode;
use serde::Serialize;

/// Error codes of the distribution-spec, plus `UNAVAILABLE` (used by CNCF
/// Distribution) for upstream trouble.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    RangeInvalid,
    Unavailable,
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }
}

/// One error response: status, code and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Seconds a client should wait before asking again (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl RegistryError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        RegistryError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, asking the client to retry after `secs` seconds.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// The JSON body of the spec's error document.
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Entry<'a> {
            code: &'a str,
            message: &'a str,
        }
        #[derive(Serialize)]
        struct Document<'a> {
            errors: [Entry<'a>; 1],
        }
        serde_json::to_vec(&Document {
            errors: [Entry {
                code: self.code.as_str(),
                message: &self.message,
            }],
        })
        .expect("error document serializes")
    }
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code.as_str(),
            self.message
        )
    }
}

impl std::error::Error for RegistryError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_document_shape() {
        let e = RegistryError::bad_request(ErrorCode::NameInvalid, "bad \"name\"");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["errors"][0]["code"], "NAME_INVALID");
        assert_eq!(v["errors"][0]["message"], "bad \"name\"");
    }
}
