//! Scrub: re-hash every stored blob and manifest, and take away what no
//! longer matches its digest, so the next request fetches it again.
//! zot's scrub only reports; ferry's repairs.
//!
//! A pass reads at a bounded rate (so it does not starve clients), removes
//! a damaged file or moves it to `<root>/quarantine/`, and writes its report
//! to `<root>/scrub-report.json`. It is blocking code, run on its own thread.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::oci::{Digest, Hasher};
use crate::store::{record, Entry, FsStore, Kind};

/// What one pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScrubReport {
    pub started_ms: u64,
    pub finished_ms: u64,
    pub blobs_checked: u64,
    pub manifests_checked: u64,
    pub bytes_read: u64,
    /// Digests of the damaged files (`blob sha256:...`, `manifest sha256:...`).
    pub damaged: Vec<String>,
    /// Files that could not be read.
    pub errors: Vec<String>,
    /// Where damaged files went (`removed` or `quarantine`).
    pub action: String,
}

/// How a pass behaves.
#[derive(Debug, Clone, Copy)]
pub struct ScrubOptions {
    /// Bytes per second at most; `None`: as fast as the disk goes.
    pub rate: Option<u64>,
    /// Move damaged files to `<root>/quarantine/` instead of deleting.
    pub quarantine: bool,
}

/// Progress: bytes done so far out of the total to check.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// One scrub pass over the store at `root`. `removed` is told about each
/// damaged blob taken away (to drop it from the index).
/// One pass over every stored blob and manifest. A damaged blob leaves
/// through the store, whose removal listener (the index, the memory cache)
/// hears of it.
pub fn scrub(store: &FsStore, options: ScrubOptions, progress: Progress<'_>) -> ScrubReport {
    let mut report = ScrubReport {
        started_ms: super::index::to_ms(std::time::SystemTime::now()),
        action: if options.quarantine {
            "quarantine"
        } else {
            "removed"
        }
        .into(),
        ..ScrubReport::default()
    };
    let mut entries = Vec::new();
    for kind in [Kind::Blob, Kind::Manifest] {
        match store.entries(kind) {
            Ok(e) => entries.extend(e),
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    let total: u64 = entries.iter().map(|e| e.len).sum();
    let mut limiter = RateLimiter::new(options.rate);
    let mut done = 0u64;
    for Entry { kind, digest, .. } in entries {
        let what = format!("{} {digest}", kind.noun());
        match check(store, kind, &digest, &mut limiter) {
            Ok((ok, n)) => {
                done += n;
                report.bytes_read += n;
                match kind {
                    Kind::Blob => report.blobs_checked += 1,
                    Kind::Manifest => report.manifests_checked += 1,
                }
                if !ok {
                    tracing::warn!(%what, action = %report.action, "scrub: content does not match its digest");
                    if let Err(e) = store.discard(kind, &digest, options.quarantine) {
                        report.errors.push(format!("{what}: {e}"));
                    }
                    report.damaged.push(what);
                }
            }
            // A blob evicted mid-pass is no damage.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => report.errors.push(format!("{what}: {e}")),
        }
        progress(done, total);
    }
    report.finished_ms = super::index::to_ms(std::time::SystemTime::now());
    let json = serde_json::to_vec_pretty(&report).expect("report serializes");
    if let Err(e) = store.put_note(REPORT, &json) {
        tracing::warn!(error = %e, "cannot write {REPORT}");
    }
    report
}

/// Where the last pass's report is kept, at the store's root.
const REPORT: &str = "scrub-report.json";

pub fn last_report(store: &FsStore) -> Option<ScrubReport> {
    serde_json::from_slice(&store.get_note(REPORT)?).ok()
}

/// Whether the stored file of `digest` still matches it, and how many
/// bytes were read. A blob is hashed as it streams; a manifest (small) is
/// read whole and checked as every reader checks it ([`record::decode`]).
fn check(
    store: &FsStore,
    kind: Kind,
    digest: &Digest,
    limiter: &mut RateLimiter,
) -> io::Result<(bool, u64)> {
    let mut f = store.open_entry(kind, digest)?;
    if kind == Kind::Manifest {
        let mut whole = Vec::new();
        let n = f.read_to_end(&mut whole)? as u64;
        limiter.consume(n);
        return Ok((record::decode(digest, whole.into()).is_ok(), n));
    }
    let mut h = Hasher::new(digest.algorithm());
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        limiter.consume(n as u64);
        h.update(&buf[..n]);
    }
    Ok((h.finish() == *digest, total))
}

struct RateLimiter {
    rate: Option<u64>,
    start: Instant,
    consumed: u64,
}

impl RateLimiter {
    fn new(rate: Option<u64>) -> RateLimiter {
        RateLimiter {
            rate,
            start: Instant::now(),
            consumed: 0,
        }
    }

    fn consume(&mut self, n: u64) {
        let Some(rate) = self.rate.filter(|r| *r > 0) else {
            return;
        };
        self.consumed += n;
        let due = Duration::from_secs_f64(self.consumed as f64 / rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_removes_damage_and_quarantines_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FsStore::open(dir.path()).unwrap();
        let mut digests = Vec::new();
        for n in 0..3u8 {
            let data = vec![n; 5000];
            let d = Digest::sha256_of(&data);
            let mut t = store.create_temp(&d).unwrap();
            t.append(&[bytes::Bytes::from(data.clone())]).unwrap();
            store.publish_blob(t.verify().unwrap()).unwrap();
            digests.push(d);
        }
        let m = br#"{"schemaVersion":2}"#;
        let md = Digest::sha256_of(m);
        store
            .put_manifest(&md, "application/vnd.oci.image.manifest.v1+json", m)
            .unwrap();
        // Damage one blob.
        let bad = store.blob_path(&digests[1]);
        let mut bytes = std::fs::read(&bad).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&bad, bytes).unwrap();

        let removed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let heard = removed.clone();
        assert!(store.on_removed(move |d| heard.lock().unwrap().push(d.clone())));
        let opts = ScrubOptions {
            rate: None,
            quarantine: false,
        };
        let r = scrub(&store, opts, &|_, _| {});
        assert_eq!((r.blobs_checked, r.manifests_checked), (3, 1));
        assert_eq!(r.damaged, vec![format!("blob {}", digests[1])]);
        assert!(!bad.exists());
        assert_eq!(*removed.lock().unwrap(), vec![digests[1].clone()]);
        assert!(store.blob_path(&digests[0]).exists());
        assert_eq!(last_report(&store).unwrap(), r);

        // A clean pass; then quarantine mode keeps the damaged file aside.
        let again = scrub(&store, opts, &|_, _| {});
        assert!(again.damaged.is_empty());
        let p = store.blob_path(&digests[2]);
        std::fs::write(&p, b"garbage").unwrap();
        let q = scrub(
            &store,
            ScrubOptions {
                rate: None,
                quarantine: true,
            },
            &|_, _| {},
        );
        assert_eq!(q.damaged.len(), 1);
        assert!(dir
            .path()
            .join("quarantine")
            .join(format!("blobs-sha256-{}", digests[2].hex()))
            .exists());
    }
}
