//! Upkeep of the shared tier: scrub (list, re-hash with ranged GETs,
//! delete what fails), the size cap (oldest objects first: object stores
//! keep no access time, so "least recently uploaded" stands in for LRU),
//! and incomplete multipart uploads left by replicas that died mid-upload.
//!
//! Like the local lifecycle, these functions return what they found and
//! deleted; the caller logs and counts. Several replicas may run them at
//! once: every step is idempotent (deleting a deleted key is fine), so the
//! only cost is repeated work.

use std::io;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};

use super::{Shared, SharedBlob};
use crate::oci::{Digest, Hasher};

/// Ranged GETs of this size re-hash a blob: a broken read costs one range.
const SCRUB_RANGE: u64 = 64 * 1024 * 1024;

#[derive(Debug, Default, Clone)]
pub struct SharedScrubReport {
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    /// Deleted: their bytes did not hash to their key.
    pub damaged: Vec<Digest>,
    pub errors: Vec<String>,
}

/// Re-hashes every blob in the tier, at most `rate` bytes per second, and
/// deletes those whose bytes do not match their digest.
pub async fn scrub(shared: &Shared, rate: Option<u64>) -> SharedScrubReport {
    let mut report = SharedScrubReport::default();
    let blobs: Vec<io::Result<SharedBlob>> = shared.list_blobs().collect().await;
    let started = tokio::time::Instant::now();
    for blob in blobs {
        let blob = match blob {
            Ok(b) => b,
            Err(e) => {
                report.errors.push(e.to_string());
                continue;
            }
        };
        match rehash(shared, &blob).await {
            Ok(actual) if actual == blob.digest => {}
            Ok(actual) => {
                tracing::warn!(digest = %blob.digest, %actual, store = shared.describe(),
                    "shared blob is damaged; deleting it");
                if let Err(e) = shared.delete_blob(&blob.digest).await {
                    report.errors.push(e.to_string());
                }
                report.damaged.push(blob.digest.clone());
            }
            Err(e) => report.errors.push(e.to_string()),
        }
        report.blobs_checked += 1;
        report.bytes_checked += blob.size;
        if let Some(rate) = rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(report.bytes_checked as f64 / rate as f64);
            tokio::time::sleep_until(started + due).await;
        }
    }
    report
}

async fn rehash(shared: &Shared, blob: &SharedBlob) -> io::Result<Digest> {
    let mut hasher = Hasher::new(blob.digest.algorithm());
    let mut at = 0;
    while at < blob.size {
        let end = (at + SCRUB_RANGE).min(blob.size);
        let mut body = shared.read_blob(&blob.digest, at..end).await?;
        while let Some(chunk) = body.try_next().await? {
            hasher.update(&chunk);
        }
        at = end;
    }
    Ok(hasher.finish())
}

#[derive(Debug, Default, Clone)]
pub struct SharedCapReport {
    pub deleted: Vec<Digest>,
    pub freed: u64,
    /// Bytes of blobs left in the tier.
    pub total: u64,
}

/// Deletes the oldest blobs until the tier holds at most 90% of
/// `max_bytes`, skipping those `keep` says are in use here.
pub async fn enforce_cap(
    shared: &Shared,
    max_bytes: u64,
    keep: impl Fn(&Digest) -> bool,
) -> io::Result<SharedCapReport> {
    let mut blobs: Vec<SharedBlob> = shared.list_blobs().try_collect().await?;
    let mut report = SharedCapReport {
        total: blobs.iter().map(|b| b.size).sum(),
        ..Default::default()
    };
    if report.total <= max_bytes {
        return Ok(report);
    }
    let target = max_bytes / 10 * 9;
    blobs.sort_by_key(|b| (b.modified, b.digest.clone()));
    for b in blobs {
        if report.total <= target {
            break;
        }
        if keep(&b.digest) {
            continue;
        }
        shared.delete_blob(&b.digest).await?;
        report.total -= b.size;
        report.freed += b.size;
        report.deleted.push(b.digest);
    }
    Ok(report)
}

/// An incomplete multipart upload in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: SystemTime,
}

/// Aborts incomplete multipart uploads under the tier's prefix that were
/// started more than `older_than` ago; returns how many. Only ferry's
/// blob keys are looked at (the first 1,000 pending uploads per pass). A
/// directory has none to list: staged files of a replica that crashed
/// mid-upload stay behind (see the README).
pub async fn clean_uploads(shared: &Shared, older_than: Duration) -> io::Result<usize> {
    let pending = shared.pending_uploads().await?;
    let now = SystemTime::now();
    let mut aborted = 0;
    for up in pending {
        let age = now.duration_since(up.initiated).unwrap_or_default();
        if age < older_than {
            continue;
        }
        match shared.abort_upload(&up).await {
            Ok(()) => {
                tracing::info!(key = %up.key, age_s = age.as_secs(), "aborted a leftover shared upload");
                aborted += 1;
            }
            Err(e) => {
                tracing::warn!(key = %up.key, error = %e, "cannot abort a leftover shared upload")
            }
        }
    }
    Ok(aborted)
}

/// The `<Upload>` entries of a ListMultipartUploads answer (quick-xml);
/// entries without a key, an upload id or a readable date are skipped.
pub(super) fn parse_uploads(xml: &str) -> Vec<PendingUpload> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Upload", default)]
        uploads: Vec<Upload>,
    }
    #[derive(serde::Deserialize)]
    struct Upload {
        #[serde(rename = "Key")]
        key: Option<String>,
        #[serde(rename = "UploadId")]
        upload_id: Option<String>,
        #[serde(rename = "Initiated")]
        initiated: Option<String>,
    }
    let answer: Answer = match quick_xml::de::from_str(xml) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a ListMultipartUploads answer");
            return Vec::new();
        }
    };
    answer
        .uploads
        .into_iter()
        .filter_map(|u| {
            Some(PendingUpload {
                key: u.key?,
                upload_id: u.upload_id?,
                initiated: humantime::parse_rfc3339_weak(u.initiated?.trim_end_matches('Z'))
                    .ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_multipart_uploads_answers_parse() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?><ListMultipartUploadsResult><Bucket>ferry</Bucket>
<Upload><Key>p/blobs/sha256/ab</Key><UploadId>u1</UploadId><Initiated>2026-11-28T04:20:16.185Z</Initiated></Upload>
<Upload><Key>p/a&amp;b</Key><UploadId>u2</UploadId><Initiated>2026-11-27T00:00:00Z</Initiated></Upload>
<Upload><Key>no-id</Key></Upload></ListMultipartUploadsResult>"#;
        let ups = parse_uploads(xml);
        assert_eq!(ups.len(), 2);
        assert_eq!(ups[0].key, "p/blobs/sha256/ab");
        assert_eq!(ups[0].upload_id, "u1");
        assert_eq!(ups[1].key, "p/a&b");
        let day = ups[0].initiated.duration_since(ups[1].initiated).unwrap();
        assert_eq!(day.as_secs(), 24 * 3600 + 4 * 3600 + 20 * 60 + 16);
    }
}
