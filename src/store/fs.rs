//! Filesystem backend: a content-addressed tree under one root directory.
//!
//! ```text
//! <root>/blobs/sha256/ab/<hex>              blob bytes, verified
//! <root>/manifests/sha256/ab/<hex>          "<media type>\n" + manifest bytes, verified
//! <root>/repositories/<registry>/<name>/_tags/<tag>    {"digest": .., "mediaType": ..}
//! <root>/tmp/                                temp files; emptied at start-up
//! ```
//!
//! Path components come only from validated [`Digest`], [`RepoName`] and
//! [`Tag`] values, whose grammars exclude `..`, `/`-leading and `%` forms,
//! and `_tags` cannot collide with a repository component (those start with
//! a letter or digit).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::durable::{annotate, rename_durably};
use super::temp::{TempBlob, VerifiedBlob};
use crate::oci::{Digest, RepoName, Tag};

/// A content-addressed store in a local directory.
#[derive(Debug)]
pub struct FsStore {
    root: PathBuf,
    tmp: PathBuf,
    seq: AtomicU64,
    /// Tag records written by this process: a repository listing taken at
    /// one count is current while the count holds.
    tags_written: AtomicU64,
    /// The store's lock, held by the process that cleaned tmp/ at start-up.
    _lock: Option<File>,
    /// Who hears of the blobs this store removes (see `contents`).
    pub(super) removals: super::removals::Removals,
}

/// What start-up recovery found and cleaned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub temp_files_removed: usize,
    /// Another process holds the store (its temp files were left alone).
    pub shared_with_another_process: bool,
}

/// The stored meaning of a tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: String,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// When the upstream last confirmed this mapping (ms since the epoch).
    #[serde(rename = "fetchedAt", default)]
    pub fetched_at_ms: u64,
}

/// The store's directories (see docs/internals.md for what each holds).
const STORE_DIRS: [&str; 4] = ["blobs", "manifests", "repositories", "tmp"];

/// Whether [`FsStore::open`] could create and write the store at `root`,
/// without creating it: `root` is a directory this process can write in,
/// or the nearest directory above it that exists is one it can create a
/// directory in (tried with a directory made and removed at once).
/// `ferry check-config` refuses what `serve` would refuse.
pub fn check_root(root: &std::path::Path) -> io::Result<()> {
    let mut at = root;
    let existing = loop {
        match fs::metadata(at) {
            Ok(m) if m.is_dir() => break at,
            Ok(_) => {
                let e = io::Error::new(io::ErrorKind::AlreadyExists, "not a directory");
                return Err(annotate(e, "cannot create store directory", at));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match at.parent() {
                Some(up) if !up.as_os_str().is_empty() => at = up,
                _ => break std::path::Path::new("."),
            },
            Err(e) => return Err(annotate(e, "cannot read", at)),
        }
    };
    let probe = existing.join(format!(".ferry-check-{}", std::process::id()));
    fs::create_dir(&probe)
        .map_err(|e| annotate(e, "cannot create store directory", &root.join("blobs")))?;
    let _ = fs::remove_dir(&probe);
    Ok(())
}

impl FsStore {
    /// Opens (creating) the store at `root`, removes what a crashed run left
    /// in `tmp/`, and checks that every directory can be written: a store
    /// ferry cannot write is an error at start, not a surprise later.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<(FsStore, RecoveryReport)> {
        let root = root.into();
        let tmp = root.join("tmp");
        for dir in STORE_DIRS {
            let p = root.join(dir);
            fs::create_dir_all(&p).map_err(|e| annotate(e, "cannot create store directory", &p))?;
        }
        let mut report = RecoveryReport::default();
        // Another ferry process (a server beside `ferry prefetch`) holding
        // the store's lock has downloads in tmp/: leave them alone.
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| annotate(e, "cannot open", &lock_path))?;
        let owner =
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok();
        report.shared_with_another_process = !owner;
        let leftovers = if owner {
            fs::read_dir(&tmp)
                .map_err(|e| annotate(e, "cannot list", &tmp))?
                .collect()
        } else {
            Vec::new()
        };
        for entry in leftovers {
            let entry = entry?;
            let p = entry.path();
            let removed = if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            removed.map_err(|e| annotate(e, "cannot remove leftover temp file", &p))?;
            report.temp_files_removed += 1;
        }
        let store = FsStore {
            root,
            tmp,
            seq: AtomicU64::new(0),
            tags_written: AtomicU64::new(0),
            _lock: owner.then_some(lock),
            removals: Default::default(),
        };
        store.check_writable()?;
        Ok((store, report))
    }

    /// The store at `root` for reading only (`ferry check-config`):
    /// nothing is created, cleaned or locked.
    pub fn read_only(root: impl Into<PathBuf>) -> FsStore {
        let root = root.into();
        FsStore {
            tmp: root.join("tmp"),
            root,
            seq: AtomicU64::new(0),
            tags_written: AtomicU64::new(0),
            _lock: None,
            removals: Default::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.addressed("blobs", digest)
    }

    fn manifest_path(&self, digest: &Digest) -> PathBuf {
        self.addressed("manifests", digest)
    }

    pub(super) fn addressed(&self, kind: &str, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join(kind)
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn tag_path(&self, registry: &str, repo: &RepoName, tag: &Tag) -> PathBuf {
        self.root
            .join("repositories")
            .join(registry_dir(registry))
            .join(repo.as_str())
            .join("_tags")
            .join(tag.as_str())
    }

    /// Opens a stored blob and returns it with its size, or `None`.
    /// Creates and removes a file in each of the store's directories: an
    /// error names the directory that cannot be written, and why.
    pub fn check_writable(&self) -> io::Result<()> {
        // Checks may run at once (readiness probes from a kubelet and from
        // cluster peers): each writes its own file.
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        for dir in STORE_DIRS {
            let name = format!(".write-check-{}-{n}", std::process::id());
            let p = self.root.join(dir).join(name);
            fs::write(&p, b"")
                .and_then(|()| fs::remove_file(&p))
                .map_err(|e| {
                    annotate(e, "cannot write in store directory", &self.root.join(dir))
                })?;
        }
        Ok(())
    }

    pub fn open_blob(&self, digest: &Digest) -> io::Result<Option<(File, u64)>> {
        let path = self.blob_path(digest);
        match File::open(&path) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(annotate(e, "cannot open blob", &path)),
        }
    }

    /// Creates a temp file for the blob `digest` in the store's temp folder.
    pub fn create_temp(&self, digest: &Digest) -> io::Result<TempBlob> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!(
            "{}-{}.{}.part",
            digest.hex(),
            std::process::id(),
            n
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| annotate(e, "cannot create temp file", &path))?;
        Ok(TempBlob::new(path, file, digest.clone()))
    }

    /// Makes a verified temp file the stored blob: fsync the file, rename
    /// it into place, fsync the directory. Only a [`VerifiedBlob`] can be
    /// published, and only [`TempBlob::verify`] makes one.
    pub fn publish_blob(&self, blob: VerifiedBlob) -> io::Result<PathBuf> {
        let dest = self.blob_path(blob.digest());
        blob.publish_to(&dest)?;
        Ok(dest)
    }

    /// Stores a verified manifest with its media type.
    pub fn put_manifest(&self, digest: &Digest, media_type: &str, bytes: &[u8]) -> io::Result<()> {
        let record = super::record::encode(media_type, bytes);
        self.write_atomically(&self.manifest_path(digest), &record, digest.hex())
    }

    /// A stored manifest: its media type and bytes, checked against its
    /// digest (see [`super::record`]).
    pub fn get_manifest(&self, digest: &Digest) -> io::Result<Option<(String, Bytes)>> {
        let path = self.manifest_path(digest);
        let record = match fs::read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(annotate(e, "cannot read manifest", &path)),
        };
        super::record::decode(digest, record.into())
            .map(Some)
            .map_err(|why| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("manifest record {} is damaged: {why}", path.display()),
                )
            })
    }

    /// Records what `tag` of `repo` at `registry` (its `host[:port]`) means.
    pub fn put_tag(
        &self,
        registry: &str,
        repo: &RepoName,
        tag: &Tag,
        record: &TagRecord,
    ) -> io::Result<()> {
        let json = serde_json::to_vec(record).map_err(io::Error::other)?;
        self.write_atomically(&self.tag_path(registry, repo, tag), &json, tag.as_str())?;
        self.tags_written.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// How many tag records this process has written (see
    /// [`FsStore::list_repositories`]'s callers).
    pub fn tags_written(&self) -> u64 {
        self.tags_written.load(Ordering::SeqCst)
    }

    pub fn get_tag(
        &self,
        registry: &str,
        repo: &RepoName,
        tag: &Tag,
    ) -> io::Result<Option<TagRecord>> {
        let path = self.tag_path(registry, repo, tag);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("tag record {} is damaged: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(annotate(e, "cannot read tag record", &path)),
        }
    }

    /// The tags stored for `repo` at `registry`, sorted.
    pub fn list_tags(&self, registry: &str, repo: &RepoName) -> io::Result<Vec<String>> {
        let dir = self
            .root
            .join("repositories")
            .join(registry_dir(registry))
            .join(repo.as_str())
            .join("_tags");
        let mut tags = Vec::new();
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for e in entries {
                    let name = e?.file_name().to_string_lossy().into_owned();
                    if Tag::parse(&name).is_ok() {
                        tags.push(name);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(annotate(e, "cannot list tags in", &dir)),
        }
        tags.sort();
        Ok(tags)
    }

    /// Every repository with at least one stored tag, sorted, deduplicated
    /// across registries.
    pub fn list_repositories(&self) -> io::Result<Vec<String>> {
        let mut out = std::collections::BTreeSet::new();
        let top = self.root.join("repositories");
        let registries = match fs::read_dir(&top) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(annotate(e, "cannot list", &top)),
        };
        for reg in registries {
            let reg = reg?.path();
            let mut stack = vec![(reg.clone(), String::new())];
            while let Some((dir, name)) = stack.pop() {
                for e in fs::read_dir(&dir)? {
                    let e = e?;
                    if !e.file_type()?.is_dir() {
                        continue;
                    }
                    let seg = e.file_name().to_string_lossy().into_owned();
                    if seg == "_tags" {
                        if RepoName::parse(&name).is_ok() {
                            out.insert(name.clone());
                        }
                    } else if !seg.starts_with('_') && name.len() < 512 {
                        let child = if name.is_empty() {
                            seg
                        } else {
                            format!("{name}/{seg}")
                        };
                        stack.push((e.path(), child));
                    }
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// A small cached document about a repository (e.g. a referrers list).
    pub fn put_record(
        &self,
        registry: &str,
        repo: &RepoName,
        kind: &str,
        key: &str,
        bytes: &[u8],
    ) -> io::Result<()> {
        let path = self.record_path(registry, repo, kind, key);
        self.write_atomically(&path, bytes, key)
    }

    pub fn get_record(
        &self,
        registry: &str,
        repo: &RepoName,
        kind: &str,
        key: &str,
    ) -> io::Result<Option<Vec<u8>>> {
        let path = self.record_path(registry, repo, kind, key);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(annotate(e, "cannot read", &path)),
        }
    }

    /// Leaves an empty marker record (not fsynced: markers are hints that
    /// can be established again).
    pub fn mark(&self, registry: &str, repo: &RepoName, kind: &str, key: &str) -> io::Result<()> {
        let path = self.record_path(registry, repo, kind, key);
        match fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let dir = path.parent().expect("records live in a directory");
                fs::create_dir_all(dir).map_err(|e| annotate(e, "cannot create", dir))?;
                fs::File::create(&path)
                    .map(|_| ())
                    .map_err(|e| annotate(e, "cannot create", &path))
            }
            Err(e) => Err(annotate(e, "cannot create", &path)),
        }
    }

    pub fn is_marked(&self, registry: &str, repo: &RepoName, kind: &str, key: &str) -> bool {
        self.record_path(registry, repo, kind, key).exists()
    }

    /// `kind` and `key` come from ferry itself (e.g. `_referrers`,
    /// `sha256-<hex>`), never from a request.
    fn record_path(&self, registry: &str, repo: &RepoName, kind: &str, key: &str) -> PathBuf {
        debug_assert!(kind.starts_with('_') && !key.contains('/') && !key.starts_with('.'));
        self.root
            .join("repositories")
            .join(registry_dir(registry))
            .join(repo.as_str())
            .join(kind)
            .join(key)
    }

    pub(super) fn write_atomically(&self, dest: &Path, bytes: &[u8], hint: &str) -> io::Result<()> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .tmp
            .join(format!("{hint}-{}.{}.small", std::process::id(), n));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(|e| annotate(e, "cannot create", &tmp))?;
            f.write_all(bytes)
                .map_err(|e| annotate(e, "cannot write", &tmp))?;
            f.sync_all()
                .map_err(|e| annotate(e, "cannot fsync", &tmp))?;
            rename_durably(&tmp, dest)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// A registry's `host[:port]` as one safe directory name.
fn registry_dir(registry: &str) -> String {
    let mut d: String = registry
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if d.is_empty() || d.starts_with('.') {
        d.insert(0, '_');
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn writability_checks_at_once_do_not_trip_over_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FsStore::open(dir.path()).unwrap();
        let store = std::sync::Arc::new(store);
        let checks: Vec<_> = (0..8)
            .map(|_| {
                let s = store.clone();
                std::thread::spawn(move || (0..200).try_for_each(|_| s.check_writable()))
            })
            .collect();
        for c in checks {
            c.join().unwrap().expect("a concurrent check failed");
        }
    }

    #[test]
    fn publish_then_open() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FsStore::open(dir.path()).unwrap();
        let data = b"hello blob";
        let d = Digest::sha256_of(data);
        assert!(store.open_blob(&d).unwrap().is_none());
        let mut t = store.create_temp(&d).unwrap();
        t.append(&[Bytes::from_static(data)]).unwrap();
        store.publish_blob(t.verify().unwrap()).unwrap();
        let (mut f, len) = store.open_blob(&d).unwrap().unwrap();
        assert_eq!(len, data.len() as u64);
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        assert!(store
            .blob_path(&d)
            .starts_with(dir.path().join("blobs/sha256")));
    }

    #[test]
    fn dropped_temp_is_removed_and_restart_cleans_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FsStore::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"x");
        let t = store.create_temp(&d).unwrap();
        let p = t.path().to_path_buf();
        drop(t);
        assert!(!p.exists());
        fs::write(dir.path().join("tmp/leftover.part"), b"junk").unwrap();
        fs::write(dir.path().join("tmp/other.small"), b"junk").unwrap();
        // While another opener holds the store, its temp files stay.
        let (_, shared) = FsStore::open(dir.path()).unwrap();
        assert!(shared.shared_with_another_process);
        assert_eq!(shared.temp_files_removed, 0);
        drop(store);
        let (_, report) = FsStore::open(dir.path()).unwrap();
        assert_eq!(report.temp_files_removed, 2);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn manifests_and_tags_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FsStore::open(dir.path()).unwrap();
        let m = br#"{"schemaVersion":2}"#;
        let d = Digest::sha256_of(m);
        store
            .put_manifest(&d, "application/vnd.oci.image.manifest.v1+json", m)
            .unwrap();
        let (mt, bytes) = store.get_manifest(&d).unwrap().unwrap();
        assert_eq!(mt, "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(&bytes[..], m);
        let repo = RepoName::parse("a/b").unwrap();
        let repo_a = RepoName::parse("a").unwrap();
        let tag = Tag::parse("b").unwrap();
        let rec = TagRecord {
            digest: d.to_string(),
            media_type: mt,
            fetched_at_ms: 42,
        };
        let r = "r.example:5000";
        store.put_tag(r, &repo, &tag, &rec).unwrap();
        // Repository `a` with tag `b` must not collide with repository `a/b`.
        store.put_tag(r, &repo_a, &tag, &rec).unwrap();
        assert_eq!(store.get_tag(r, &repo, &tag).unwrap(), Some(rec.clone()));
        assert_eq!(store.get_tag(r, &repo_a, &tag).unwrap(), Some(rec));
        assert_eq!(
            store.get_tag("other", &repo, &tag).unwrap(),
            None,
            "tags are per registry"
        );
        let c = Tag::parse("c").unwrap();
        assert_eq!(store.get_tag(r, &repo, &c).unwrap(), None);
        assert_eq!(store.list_tags(r, &repo).unwrap(), vec!["b".to_string()]);
        assert_eq!(
            store.list_repositories().unwrap(),
            vec!["a".to_string(), "a/b".to_string()]
        );
        assert_eq!(registry_dir("../x"), "_.._x");
        assert_eq!(registry_dir("[::1]:5000"), "___1__5000");
    }
}
