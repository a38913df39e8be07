//! The shared tier: one bucket (or shared directory) that several ferry
//! replicas behind a load balancer use as a common cache.
//!
//! Each replica keeps its own local store as a spool and a cache of its
//! own. The shared tier sits between that and the upstreams: a blob this
//! replica lacks is read from the bucket when another replica put it there,
//! and a blob fetched from upstream is uploaded to the bucket while it
//! arrives (see [`upload`]), becoming visible under its final key only
//! after its digest matched. Manifests, tag records and repository
//! memberships are small objects beside the blobs, so a tag one replica
//! resolved is fresh for every replica within its TTL.
//!
//! Like the local store, this module only moves bytes; the coordinator
//! decides when. Keys, under the configured prefix:
//!
//! ```text
//! blobs/sha256/<hex>                           the blob
//! manifests/sha256/<hex>                       "<media type>\n<bytes>"
//! repositories/<registry>/<repo>/_tags/<tag>   TagRecord JSON
//! repositories/<registry>/<repo>/_<kind>/<key> an empty marker
//! ```
//!
//! Backends are `object_store` implementations: S3 (AWS, Garage, MinIO,
//! Ceph RGW, GCS's S3 API) and a local directory.

pub mod maintenance;
mod records;
pub mod tiered;
pub mod upload;

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use crate::config::SharedStorage;
use crate::oci::Digest;

/// A blob in the shared tier, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedBlob {
    pub digest: Digest,
    pub size: u64,
    pub modified: SystemTime,
}

/// The shared tier of one ferry: a bucket (or directory) and a key prefix.
pub struct Shared {
    store: Arc<dyn ObjectStore>,
    #[cfg(feature = "s3")]
    signer: Option<Arc<dyn object_store::signer::Signer>>,
    /// The one HTTP client of the requests object_store does not wrap
    /// (ListMultipartUploads, AbortMultipartUpload), kept for its pool.
    #[cfg(feature = "s3")]
    raw: Option<reqwest::Client>,
    prefix: String,
    describe: String,
    /// Answer hits with a 307 to a presigned URL (`redirect: true`).
    redirect: bool,
    /// Uploads running at once (each holds up to three parts in memory).
    pub(crate) upload_permits: Arc<tokio::sync::Semaphore>,
}

/// A small operation (HEAD, a manifest, a tag, a marker) that takes longer
/// than this counts as failed: the request falls back to the upstream
/// instead of waiting on a stuck bucket.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Uploads to the tier at once per replica.
const UPLOADS_AT_ONCE: usize = 8;

/// Small objects (manifests, tag records) larger than this are damaged.
const SMALL_MAX: u64 = 8 << 20;

async fn bounded<T>(
    key: &Key,
    f: impl std::future::Future<Output = object_store::Result<T>>,
) -> object_store::Result<T> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(object_store::Error::Generic {
            store: "shared tier",
            source: format!("{key}: no answer in {} s", OP_TIMEOUT.as_secs()).into(),
        }),
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

impl Shared {
    /// Connects to the configured tier (no request is made yet).
    pub fn open(cfg: &SharedStorage) -> io::Result<Shared> {
        match cfg {
            SharedStorage::Filesystem { root } => {
                std::fs::create_dir_all(root).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot create shared directory {}: {e}", root.display()),
                    )
                })?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(root)
                    .map_err(io::Error::other)?;
                Ok(Shared::with_store(
                    Arc::new(fs),
                    "",
                    format!("directory {}", root.display()),
                ))
            }
            #[cfg(feature = "s3")]
            SharedStorage::S3(s) => s3::open(s),
            #[cfg(not(feature = "s3"))]
            SharedStorage::S3(_) => Err(io::Error::other(
                "this ferry was built without the `s3` feature",
            )),
        }
    }

    /// A tier over any object store (tests, other backends).
    pub fn with_store(store: Arc<dyn ObjectStore>, prefix: &str, describe: String) -> Shared {
        Shared {
            store,
            #[cfg(feature = "s3")]
            signer: None,
            #[cfg(feature = "s3")]
            raw: None,
            prefix: prefix.trim_matches('/').to_string(),
            describe,
            redirect: false,
            upload_permits: Arc::new(tokio::sync::Semaphore::new(UPLOADS_AT_ONCE)),
        }
    }

    /// True when blob hits are answered with a redirect to the bucket.
    pub fn redirects(&self) -> bool {
        self.redirect
    }

    /// For logs: which bucket or directory.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    fn key(&self, rel: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn blob_prefix(&self) -> String {
        self.key("blobs").to_string()
    }

    fn blob_key(&self, d: &Digest) -> Key {
        self.key(&format!("blobs/{}/{}", d.algorithm().as_str(), d.hex()))
    }

    /// The size of the blob in the tier, or None.
    pub async fn blob_size(&self, d: &Digest) -> io::Result<Option<u64>> {
        let key = self.blob_key(d);
        match bounded(&key, self.store.head(&key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(named(&key, e)),
        }
    }

    /// Bytes `range` of a blob, streamed (one ranged GET).
    pub async fn read_blob(
        &self,
        d: &Digest,
        range: Range<u64>,
    ) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
        let key = self.blob_key(d);
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..Default::default()
        };
        let got = bounded(&key, self.store.get_opts(&key, opts))
            .await
            .map_err(|e| named(&key, e))?;
        let k = key.clone();
        Ok(got.into_stream().map_err(move |e| named(&k, e)).boxed())
    }

    /// Starts an upload of `d`; the object appears only on
    /// [`upload::BlobUpload::commit`].
    pub fn begin_blob(&self, d: &Digest) -> upload::BlobUpload {
        upload::BlobUpload::new(self.store.clone(), self.blob_key(d))
    }

    pub async fn delete_blob(&self, d: &Digest) -> io::Result<()> {
        let key = self.blob_key(d);
        match self.store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(named(&key, e)),
        }
    }

    /// Every blob in the tier. Keys that are not a blob's are skipped.
    pub fn list_blobs(&self) -> BoxStream<'_, io::Result<SharedBlob>> {
        let prefix = self.key("blobs");
        self.store
            .list(Some(&prefix))
            .filter_map(|m| async move {
                match m {
                    Err(e) => Some(Err(io::Error::other(format!(
                        "listing the shared tier failed: {e}"
                    )))),
                    Ok(meta) => {
                        let mut parts = meta.location.parts().collect::<Vec<_>>();
                        let hex = parts.pop()?;
                        let algo = parts.pop()?;
                        let d: Digest =
                            format!("{}:{}", algo.as_ref(), hex.as_ref()).parse().ok()?;
                        Some(Ok(SharedBlob {
                            digest: d,
                            size: meta.size,
                            modified: meta.last_modified.into(),
                        }))
                    }
                }
            })
            .boxed()
    }

    /// A URL that lets a client GET the blob straight from the bucket for
    /// `ttl`; None when the backend cannot sign (a directory).
    pub async fn presign(&self, d: &Digest, ttl: Duration) -> io::Result<Option<String>> {
        #[cfg(feature = "s3")]
        if let Some(signer) = &self.signer {
            let key = self.blob_key(d);
            let url = signer
                .signed_url(http::Method::GET, &key, ttl)
                .await
                .map_err(|e| named(&key, e))?;
            return Ok(Some(url.to_string()));
        }
        let _ = (d, ttl);
        Ok(None)
    }

    /// Incomplete multipart uploads under the prefix (S3's
    /// ListMultipartUploads, first 1,000); none for a directory.
    pub async fn pending_uploads(&self) -> io::Result<Vec<maintenance::PendingUpload>> {
        #[cfg(feature = "s3")]
        if let Some(signer) = &self.signer {
            use object_store::signer::SignedUrlOptions;
            // Only ferry's own blob uploads, never another application's.
            let prefix = format!("{}/", self.blob_prefix());
            let opts = SignedUrlOptions::new()
                .with_query([("uploads", String::new()), ("prefix", prefix)]);
            let text = self
                .presigned(signer, http::Method::GET, &Key::from(""), &opts)
                .await?;
            return Ok(maintenance::parse_uploads(&text));
        }
        Ok(Vec::new())
    }

    /// Sends one request object_store does not wrap, signed by its signer;
    /// the body of a 2xx answer.
    #[cfg(feature = "s3")]
    async fn presigned(
        &self,
        signer: &Arc<dyn object_store::signer::Signer>,
        method: http::Method,
        key: &Key,
        opts: &object_store::signer::SignedUrlOptions,
    ) -> io::Result<String> {
        let url = signer
            .signed_url_opts(method.clone(), key, Duration::from_secs(60), opts)
            .await
            .map_err(|e| io::Error::other(format!("shared object {key}: cannot sign: {e}")))?;
        let method =
            reqwest::Method::from_bytes(method.as_str().as_bytes()).map_err(io::Error::other)?;
        let client = self
            .raw
            .as_ref()
            .ok_or_else(|| io::Error::other("shared tier: no client for signed requests"))?;
        s3::send(client, method, url).await
    }

    /// Aborts one incomplete multipart upload.
    pub async fn abort_upload(&self, up: &maintenance::PendingUpload) -> io::Result<()> {
        #[cfg(feature = "s3")]
        if let Some(signer) = &self.signer {
            use object_store::signer::SignedUrlOptions;
            let opts = SignedUrlOptions::new().with_query([("uploadId", up.upload_id.clone())]);
            self.presigned(
                signer,
                http::Method::DELETE,
                &Key::from(up.key.as_str()),
                &opts,
            )
            .await?;
            return Ok(());
        }
        let _ = up;
        Ok(())
    }
}

/// An object store error as an io::Error naming the key.
fn named(key: &Key, e: object_store::Error) -> io::Error {
    let kind = match &e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("shared object {key}: {e}"))
}

#[cfg(feature = "s3")]
mod s3 {
    //! Building the S3 client from zot's keys, the AWS environment or the
    //! AWS credentials file.

    use std::io;
    use std::sync::Arc;

    use object_store::aws::AmazonS3Builder;
    use object_store::ClientOptions;

    use super::Shared;
    use crate::config::S3Settings;

    pub fn open(s: &S3Settings) -> io::Result<Shared> {
        // reqwest is built without a crypto provider of its own; ferry's
        // is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::from_env()
            .with_retry(object_store::RetryConfig {
                max_retries: 2,
                retry_timeout: std::time::Duration::from_secs(10),
                ..Default::default()
            })
            .with_bucket_name(&s.bucket)
            .with_region(&s.region)
            .with_virtual_hosted_style_request(!s.path_style)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_invalid_certificates(s.skip_verify)
                    .with_timeout_disabled()
                    .with_connect_timeout(std::time::Duration::from_secs(10)),
            );
        if let Some(e) = &s.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        match (&s.access_key, &s.secret_key) {
            (Some(k), Some(secret)) => {
                b = b
                    .with_access_key_id(k)
                    .with_secret_access_key(secret.expose());
            }
            _ => {
                if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                    if let Some((k, secret)) = credentials_file() {
                        b = b.with_access_key_id(k).with_secret_access_key(secret);
                    }
                }
            }
        }
        let s3 = Arc::new(b.build().map_err(|e| {
            io::Error::other(format!("storage.storageDriver (bucket {}): {e}", s.bucket))
        })?);
        let describe = format!(
            "s3 bucket {} at {}",
            s.bucket,
            s.endpoint.as_deref().unwrap_or("AWS")
        );
        let mut shared = Shared::with_store(s3.clone(), &s.prefix, describe);
        shared.signer = Some(s3);
        shared.redirect = s.redirect;
        shared.raw = Some(
            reqwest::Client::builder()
                .danger_accept_invalid_certs(s.skip_verify)
                .timeout(super::OP_TIMEOUT)
                .build()
                .map_err(|e| io::Error::other(format!("shared tier HTTP client: {e}")))?,
        );
        Ok(shared)
    }

    /// Sends one presigned request; the body of a 2xx answer.
    pub(super) async fn send(
        client: &reqwest::Client,
        method: reqwest::Method,
        url: object_store::signer::Url,
    ) -> io::Result<String> {
        let shown = format!("{method} {}", url.path());
        let fail = |e: String| io::Error::other(format!("shared tier {shown}: {e}"));
        let resp = client
            .request(method, url.as_str())
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| fail(e.to_string()))?;
        if !status.is_success() {
            return Err(fail(format!(
                "{status}: {}",
                text.chars().take(300).collect::<String>()
            )));
        }
        Ok(text)
    }

    /// The access key pair of `AWS_PROFILE` (or `default`) in the AWS
    /// credentials file (`AWS_SHARED_CREDENTIALS_FILE` or
    /// `~/.aws/credentials`).
    fn credentials_file() -> Option<(String, String)> {
        let path = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|h| std::path::PathBuf::from(h).join(".aws/credentials"))
            })?;
        let text = std::fs::read_to_string(path).ok()?;
        let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
        parse_credentials(&text, &profile)
    }

    pub(super) fn parse_credentials(text: &str, profile: &str) -> Option<(String, String)> {
        let (mut section, mut key, mut secret) = (String::new(), None, None);
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') && line.ends_with(']') {
                section = line[1..line.len() - 1].trim().to_string();
                continue;
            }
            if section != profile {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                match k.trim() {
                    "aws_access_key_id" => key = Some(v.trim().to_string()),
                    "aws_secret_access_key" => secret = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        Some((key?, secret?))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_named_profile_of_a_credentials_file_is_read() {
            let text = "[default]\naws_access_key_id = A1\naws_secret_access_key = S1\n\n[ci]\naws_access_key_id=A2\naws_secret_access_key=S2\n";
            assert_eq!(
                super::parse_credentials(text, "ci"),
                Some(("A2".into(), "S2".into()))
            );
            assert_eq!(
                super::parse_credentials(text, "default"),
                Some(("A1".into(), "S1".into()))
            );
            assert_eq!(super::parse_credentials(text, "other"), None);
        }
    }
}
