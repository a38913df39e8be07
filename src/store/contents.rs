//! What the store holds, walked and taken away by the store alone: the
//! listing of its content-addressed files, their removal (evicted, found
//! damaged, quarantined), and the one listener told of every blob that
//! leaves.
//!
//! Nothing outside `src/store/` names a store path or removes a file in
//! it (`tests/integration/house.rs` checks): the index, the memory cache
//! and anything else that mirrors the store hear of a removal from
//! [`FsStore::on_removed`], whoever asked for it.

use std::fs::{self, File};
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use super::durable::annotate;
use super::fs::FsStore;
use crate::oci::Digest;

/// The two kinds of content-addressed file the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Blob bytes, exactly as the digest covers them.
    Blob,
    /// A manifest record: its media type line, then the manifest's bytes.
    Manifest,
}

impl Kind {
    /// The store's folder for this kind.
    pub(super) fn dir(self) -> &'static str {
        match self {
            Kind::Blob => "blobs",
            Kind::Manifest => "manifests",
        }
    }

    /// `blob` or `manifest`, for reports and logs.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Blob => "blob",
            Kind::Manifest => "manifest",
        }
    }
}

/// One stored content-addressed file.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    pub digest: Digest,
    /// The file's length (a manifest's includes its media type line).
    pub len: u64,
    /// When it was last read, as far as the store has been told (see
    /// [`FsStore::record_access`]); its publish time before that.
    pub accessed: Option<SystemTime>,
}

impl FsStore {
    /// Sets the listener told of every blob this store removes. There is
    /// one: a second call is refused (false), so no mirror of the store is
    /// silently left unheard.
    pub fn on_removed(&self, listener: impl Fn(&Digest) + Send + Sync + 'static) -> bool {
        self.removals.set(Box::new(listener))
    }

    /// Every stored file of `kind`; files whose names are not digests (a
    /// stray file, a write check) are skipped.
    pub fn entries(&self, kind: Kind) -> io::Result<Vec<Entry>> {
        let top = self.root().join(kind.dir());
        let mut out = Vec::new();
        let algs = match fs::read_dir(&top) {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(annotate(e, "cannot list", &top)),
        };
        for alg in algs.flatten() {
            let Ok(shards) = fs::read_dir(alg.path()) else {
                continue;
            };
            for shard in shards.flatten() {
                let Ok(files) = fs::read_dir(shard.path()) else {
                    continue;
                };
                for file in files.flatten() {
                    let name = format!(
                        "{}:{}",
                        alg.file_name().to_string_lossy(),
                        file.file_name().to_string_lossy()
                    );
                    let Ok(digest) = name.parse::<Digest>() else {
                        continue;
                    };
                    // Removed since it was listed: not an entry.
                    let Ok(meta) = file.metadata() else {
                        continue;
                    };
                    out.push(Entry {
                        kind,
                        digest,
                        len: meta.len(),
                        accessed: meta.modified().ok(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Opens a stored file of `kind` for reading it whole (the scrub).
    pub fn open_entry(&self, kind: Kind, digest: &Digest) -> io::Result<File> {
        File::open(self.addressed(kind.dir(), digest))
    }

    /// The stored blob's length, without opening it; `None` when absent.
    pub fn blob_len(&self, digest: &Digest) -> io::Result<Option<u64>> {
        let path = self.addressed(Kind::Blob.dir(), digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(annotate(e, "cannot read the metadata of blob", &path)),
        }
    }

    /// Removes a stored blob and tells the listener. `Ok(false)` when it
    /// was not there (removed meanwhile); the listener hears of it anyway,
    /// so a mirror that still held it lets go.
    pub fn remove_blob(&self, digest: &Digest) -> io::Result<bool> {
        self.take_away(Kind::Blob, digest, None)
    }

    /// Takes a damaged file out of the store: into `<root>/quarantine/`
    /// with `quarantine`, removed otherwise. A blob's listener is told.
    pub fn discard(&self, kind: Kind, digest: &Digest, quarantine: bool) -> io::Result<bool> {
        let to = quarantine.then(|| {
            let name = format!(
                "{}-{}-{}",
                kind.dir(),
                digest.algorithm().as_str(),
                digest.hex()
            );
            self.root().join("quarantine").join(name)
        });
        self.take_away(kind, digest, to)
    }

    fn take_away(&self, kind: Kind, digest: &Digest, to: Option<PathBuf>) -> io::Result<bool> {
        let path = self.addressed(kind.dir(), digest);
        let done = match &to {
            Some(dest) => {
                let dir = dest.parent().expect("quarantine is a folder");
                fs::create_dir_all(dir).map_err(|e| annotate(e, "cannot create", dir))?;
                fs::rename(&path, dest)
            }
            None => fs::remove_file(&path),
        };
        let removed = match done {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(annotate(e, "cannot take away", &path)),
        };
        if kind == Kind::Blob {
            self.removals.tell(digest);
        }
        Ok(removed)
    }

    /// Writes a blob's last read time to its file (its mtime), so the
    /// order of last reads survives a restart. A blob removed meanwhile is
    /// no error.
    pub fn record_access(&self, digest: &Digest, at: SystemTime) -> io::Result<()> {
        let path = self.addressed(Kind::Blob.dir(), digest);
        match File::open(&path).and_then(|f| f.set_modified(at)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(annotate(e, "cannot record the last access of", &path))
            }
            _ => Ok(()),
        }
    }

    /// A small document about the store itself (`scrub-report.json`),
    /// written atomically at its root.
    pub fn put_note(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        debug_assert!(!name.contains('/') && !name.starts_with('.'));
        self.write_atomically(&self.root().join(name), bytes, name)
    }

    /// A document [`FsStore::put_note`] wrote, if any.
    pub fn get_note(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.root().join(name)).ok()
    }

    /// True when `root` holds a ferry store (its `blobs/` folder), without
    /// opening (and so creating) one.
    pub fn is_store(root: &std::path::Path) -> bool {
        root.join(Kind::Blob.dir()).is_dir()
    }
}
