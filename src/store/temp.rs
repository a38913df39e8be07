//! A blob on its way into the store, and the proof that it may go there.
//!
//! [`TempBlob`] is a temp file that hashes every byte appended to it, so
//! the bytes hashed are exactly the bytes in the file. [`TempBlob::verify`]
//! is the only way to make a [`VerifiedBlob`], and
//! [`FsStore::publish_blob`](super::FsStore::publish_blob) takes nothing
//! else: "nothing unverified reaches a final path" is a matter of types,
//! not of the order of calls in the fetch task. A temp file dropped before
//! it was published is removed.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::durable::{annotate, rename_durably};
use crate::oci::{Digest, Hasher};

/// A temp file being written; removed on drop unless published.
#[derive(Debug)]
pub struct TempBlob {
    path: PathBuf,
    file: File,
    digest: Digest,
    hasher: Hasher,
    written: u64,
    published: bool,
}

/// The bytes of a temp file did not hash to the digest it was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub expected: Digest,
    pub actual: Digest,
}

/// A temp file whose bytes hashed to its digest: ready to publish.
#[derive(Debug)]
pub struct VerifiedBlob {
    temp: TempBlob,
}

impl TempBlob {
    pub(super) fn new(path: PathBuf, file: File, digest: Digest) -> TempBlob {
        TempBlob {
            path,
            file,
            hasher: Hasher::new(digest.algorithm()),
            digest,
            written: 0,
            published: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes appended so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// A second handle on the file, for readers that follow the download.
    pub fn reader(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Appends `parts` in order (one `writev` where the kernel allows) and
    /// hashes them.
    pub fn append(&mut self, parts: &[Bytes]) -> io::Result<()> {
        write_all_vectored(&mut self.file, parts)?;
        for p in parts {
            self.hasher.update(p);
            self.written += p.len() as u64;
        }
        Ok(())
    }

    /// Checks everything appended against the digest the file was created
    /// for. On a mismatch the temp file is removed.
    pub fn verify(self) -> Result<VerifiedBlob, Mismatch> {
        let mut this = self;
        let hasher = std::mem::replace(&mut this.hasher, Hasher::new(this.digest.algorithm()));
        let actual = hasher.finish();
        if actual != this.digest {
            return Err(Mismatch {
                expected: this.digest.clone(),
                actual,
            });
        }
        Ok(VerifiedBlob { temp: this })
    }
}

impl VerifiedBlob {
    pub fn digest(&self) -> &Digest {
        &self.temp.digest
    }

    pub fn size(&self) -> u64 {
        self.temp.written
    }

    /// fsync, then rename to `dest` and fsync its directory.
    pub(super) fn publish_to(mut self, dest: &Path) -> io::Result<()> {
        let t = &mut self.temp;
        t.file
            .sync_all()
            .map_err(|e| annotate(e, "cannot fsync temp file", &t.path))?;
        rename_durably(&t.path, dest)?;
        t.published = true;
        Ok(())
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Writes every byte of `parts`, in order, with as few syscalls as the
/// kernel allows (`writev`).
fn write_all_vectored(file: &mut File, parts: &[Bytes]) -> io::Result<()> {
    let (mut i, mut off) = (0, 0);
    while i < parts.len() {
        let mut slices = Vec::with_capacity(parts.len() - i);
        slices.push(io::IoSlice::new(&parts[i][off..]));
        slices.extend(parts[i + 1..].iter().map(|p| io::IoSlice::new(p)));
        let mut n = file.write_vectored(&slices)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while i < parts.len() && n >= parts[i].len() - off {
            n -= parts[i].len() - off;
            i += 1;
            off = 0;
        }
        off += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FsStore;
    use std::io::Read;

    #[test]
    fn vectored_writes_keep_every_byte_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        let parts: Vec<Bytes> = (0..50u8)
            .map(|i| Bytes::from(vec![i; (i as usize * 977) % 70_000 + 1]))
            .collect();
        write_all_vectored(&mut f, &parts).unwrap();
        let mut got = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got, parts.concat());
    }

    #[test]
    fn only_matching_bytes_are_published() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FsStore::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"hello world");

        let mut wrong = store.create_temp(&d).unwrap();
        wrong.append(&[Bytes::from_static(b"hello there")]).unwrap();
        let path = wrong.path().to_path_buf();
        let m = wrong.verify().unwrap_err();
        assert_eq!(m.expected, d);
        assert_eq!(m.actual, Digest::sha256_of(b"hello there"));
        assert!(!path.exists(), "a mismatched temp file is removed");
        assert!(!store.blob_path(&d).exists());

        let mut right = store.create_temp(&d).unwrap();
        right
            .append(&[Bytes::from_static(b"hello "), Bytes::from_static(b"world")])
            .unwrap();
        let v = right.verify().unwrap();
        assert_eq!(v.size(), 11);
        let dest = store.publish_blob(v).unwrap();
        assert_eq!(std::fs::read(dest).unwrap(), b"hello world");
    }
}
