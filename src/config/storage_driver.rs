//! zot's `storage.storageDriver` block: where the shared tier lives when
//! several replicas share one cache.
//!
//! zot's S3 keys are accepted as they are (`name: "s3"`, `rootdirectory`
//! as the key prefix, `region`, `regionendpoint`, `bucket`, `accesskey`,
//! `secretkey`, `secure`, `skipverify`, `forcepathstyle`); zot's other S3
//! tuning keys are accepted and ignored with a warning. ferry adds
//! `redirect` (answer hits with a 307 to a presigned URL) and a
//! `filesystem` driver, a shared directory (an NFS mount, or a test's
//! temp dir). With a driver, `storage.rootDirectory` is the local spool.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Secret};

/// The block as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub struct StorageDriverSection {
    pub name: String,
    pub rootdirectory: Option<String>,
    pub region: Option<String>,
    pub regionendpoint: Option<String>,
    pub bucket: Option<String>,
    pub accesskey: Option<String>,
    pub secretkey: Option<String>,
    pub secure: Option<bool>,
    pub skipverify: Option<bool>,
    pub forcepathstyle: Option<bool>,
    pub redirect: Option<bool>,
    /// zot's other keys (chunksize, storageclass, encrypt, …).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Where the shared tier lives, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SharedStorage {
    S3(S3Settings),
    /// A directory every replica mounts.
    Filesystem {
        root: PathBuf,
    },
}

impl SharedStorage {
    /// Hits answered with a 307 to a presigned URL.
    pub fn redirect(&self) -> bool {
        matches!(self, SharedStorage::S3(s) if s.redirect)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    /// Key prefix inside the bucket (zot's `rootdirectory`), no slashes at
    /// either end; empty for the bucket's root.
    pub prefix: String,
    pub region: String,
    /// `scheme://host[:port]`; None for AWS itself.
    pub endpoint: Option<String>,
    /// None: from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` or the AWS
    /// credentials file.
    pub access_key: Option<String>,
    pub secret_key: Option<Secret>,
    pub skip_verify: bool,
    pub path_style: bool,
    pub redirect: bool,
}

/// Resolves the block; `warnings` collects keys accepted but not used.
pub fn resolve(
    s: &StorageDriverSection,
    warnings: &mut Vec<String>,
) -> Result<SharedStorage, ConfigError> {
    let err = |m: String| ConfigError(format!("storage.storageDriver.{m}"));
    for key in s.other.keys() {
        warnings.push(format!(
            "storage.storageDriver.{key} is a zot/distribution tuning key ferry does not use; ignored"
        ));
    }
    let prefix = s
        .rootdirectory
        .as_deref()
        .unwrap_or("")
        .trim_matches('/')
        .to_string();
    match s.name.as_str() {
        "s3" => {
            let bucket = s
                .bucket
                .clone()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| err("bucket: required for the s3 driver".into()))?;
            let secure = s.secure.unwrap_or(true);
            let endpoint = s.regionendpoint.as_deref().map(|e| {
                if e.contains("://") {
                    e.trim_end_matches('/').to_string()
                } else {
                    let scheme = if secure { "https" } else { "http" };
                    format!("{scheme}://{}", e.trim_end_matches('/'))
                }
            });
            if let Some(e) = &endpoint {
                e.parse::<http::Uri>()
                    .map_err(|x| err(format!("regionendpoint: {e:?} is not a URL: {x}")))?;
            }
            if s.accesskey.is_some() != s.secretkey.is_some() {
                return Err(err(
                    "accesskey/secretkey: give both or neither (then the AWS environment or credentials file is used)".into(),
                ));
            }
            Ok(SharedStorage::S3(S3Settings {
                bucket,
                prefix,
                region: s.region.clone().unwrap_or_else(|| "us-east-1".into()),
                endpoint,
                access_key: s.accesskey.clone(),
                secret_key: s.secretkey.clone().map(Secret::new),
                skip_verify: s.skipverify.unwrap_or(false),
                path_style: s.forcepathstyle.unwrap_or(false),
                redirect: s.redirect.unwrap_or(false),
            }))
        }
        "filesystem" => {
            if prefix.is_empty() {
                return Err(err(
                    "rootdirectory: the filesystem driver needs the shared directory".into(),
                ));
            }
            Ok(SharedStorage::Filesystem {
                root: PathBuf::from(format!("/{prefix}")),
            })
        }
        other => Err(err(format!(
            "name: {other:?} is not a driver ferry has (\"s3\" or \"filesystem\")"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<SharedStorage, ConfigError> {
        let s: StorageDriverSection = serde_json::from_str(json).unwrap();
        resolve(&s, &mut Vec::new())
    }

    #[test]
    fn zot_s3_blocks_load_as_written() {
        let s = parse(
            r#"{"name": "s3", "rootdirectory": "/zot", "region": "us-east-2",
                "regionendpoint": "localhost:3900", "bucket": "zot-storage",
                "secure": false, "skipverify": false, "forcepathstyle": true,
                "accesskey": "GK1", "secretkey": "s3cret", "chunksize": 10485760}"#,
        )
        .unwrap();
        let SharedStorage::S3(s) = s else {
            panic!("not s3")
        };
        assert_eq!(s.prefix, "zot");
        assert_eq!(s.endpoint.as_deref(), Some("http://localhost:3900"));
        assert!(s.path_style);
        assert_eq!(s.secret_key.as_ref().unwrap().expose(), "s3cret");
        assert!(!format!("{s:?}").contains("s3cret"), "secret in Debug");
    }

    #[test]
    fn missing_bucket_half_credentials_and_unknown_drivers_are_errors() {
        let e = parse(r#"{"name": "s3"}"#).unwrap_err().to_string();
        assert!(e.contains("storageDriver.bucket"), "{e}");
        let e = parse(r#"{"name": "s3", "bucket": "b", "accesskey": "a"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("accesskey/secretkey"), "{e}");
        let e = parse(r#"{"name": "gcs"}"#).unwrap_err().to_string();
        assert!(e.contains("not a driver"), "{e}");
    }
}
