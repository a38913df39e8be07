//! The two file-system steps every store write ends with: a rename into
//! place followed by an fsync of the directory, and errors that name the
//! path they concern.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Renames `from` to `to` (creating `to`'s directory) and fsyncs the
/// directory, so the new name survives a power cut.
pub(super) fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    let dir = to.parent().expect("store paths have a parent");
    fs::create_dir_all(dir).map_err(|e| annotate(e, "cannot create directory", dir))?;
    fs::rename(from, to).map_err(|e| annotate(e, "cannot rename into place", to))?;
    // The file is in place (and was fsynced): a failed directory fsync only
    // weakens durability across a power cut, so it is reported, not fatal.
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot fsync directory");
    }
    Ok(())
}

/// `e`, with what was being done and to which path.
pub(super) fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}
