//! Uploading a blob to the shared tier while it is being fetched.
//!
//! The uploader is one more reader of the fetch in flight: it follows the
//! spool file exactly as a late-joining client does, so a slow bucket never
//! slows the upstream transfer or the clients. Bytes go up as a multipart
//! upload in parts of [`PART_SIZE`], at most [`PARTS_IN_FLIGHT`] at once,
//! so memory stays bounded whatever the blob's size. The reader's stream
//! ends cleanly only once the fetch verified the digest; only then is the
//! upload completed, which is the moment the object appears under its
//! key. A failed fetch ends the stream in an error and the upload is
//! aborted; an upload dropped half-way is aborted in the background.
//! Blobs smaller than one part go up with a single `PUT`.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use super::Shared;
use crate::oci::Digest;

/// Parts are this large (S3 wants 5 MiB or more for all but the last).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Parts being uploaded at once per blob.
pub const PARTS_IN_FLIGHT: usize = 2;

/// An upload whose object appears only on [`BlobUpload::commit`].
pub struct BlobUpload {
    store: Arc<dyn ObjectStore>,
    key: Key,
    /// Bytes not yet in a multipart upload (less than one part).
    pending: Vec<Bytes>,
    pending_len: usize,
    multipart: Option<WriteMultipart>,
    written: u64,
}

impl BlobUpload {
    pub(super) fn new(store: Arc<dyn ObjectStore>, key: Key) -> BlobUpload {
        BlobUpload {
            store,
            key,
            pending: Vec::new(),
            pending_len: 0,
            multipart: None,
            written: 0,
        }
    }

    /// Bytes handed over so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub async fn write(&mut self, b: Bytes) -> io::Result<()> {
        self.written += b.len() as u64;
        if let Some(w) = &mut self.multipart {
            if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
                return Err(self.failed("uploading a part", e));
            }
            w.put(b);
            return Ok(());
        }
        self.pending_len += b.len();
        self.pending.push(b);
        if self.pending_len >= PART_SIZE {
            let up = self
                .store
                .put_multipart(&self.key)
                .await
                .map_err(|e| self.failed("starting a multipart upload", e))?;
            let mut w = WriteMultipart::new_with_chunk_size(up, PART_SIZE);
            for p in self.pending.drain(..) {
                w.put(p);
            }
            self.pending_len = 0;
            self.multipart = Some(w);
        }
        Ok(())
    }

    /// Makes the object visible under its key.
    pub async fn commit(mut self) -> io::Result<u64> {
        let written = self.written;
        match self.multipart.take() {
            Some(w) => w
                .finish()
                .await
                .map_err(|e| self.failed("completing the multipart upload", e))?,
            None => {
                let payload: PutPayload = std::mem::take(&mut self.pending).into_iter().collect();
                self.store
                    .put(&self.key, payload)
                    .await
                    .map_err(|e| self.failed("putting the object", e))?
            }
        };
        Ok(written)
    }

    /// Drops what was uploaded; nothing appears under the key.
    pub async fn abort(mut self) {
        if let Some(w) = self.multipart.take() {
            if let Err(e) = w.abort().await {
                tracing::warn!(key = %self.key, error = %e, "aborting a shared upload failed; the bucket's lifecycle rule or the next cleanup removes its parts");
            }
        }
    }

    fn failed(&self, what: &str, e: object_store::Error) -> io::Error {
        io::Error::other(format!("shared object {}: {what}: {e}", self.key))
    }
}

impl Drop for BlobUpload {
    fn drop(&mut self) {
        if let Some(w) = self.multipart.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = w.abort().await;
                });
            }
        }
    }
}

/// How a mirror of one blob ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Mirrored {
    /// Uploaded and committed: this many bytes.
    Uploaded(u64),
    /// The tier had it already (another replica was first).
    Present,
}

/// Uploads `digest` from `stream` (a reader of the fetch in flight) and
/// commits once the stream ends cleanly, that is once the fetch verified
/// the bytes. An error in the stream aborts the upload.
pub async fn mirror(
    shared: &Shared,
    digest: &Digest,
    stream: impl futures::Stream<Item = io::Result<Bytes>> + Send,
) -> io::Result<Mirrored> {
    let mut stream = std::pin::pin!(stream);
    // Bounded uploads at once: a slow bucket makes mirrors wait (reading
    // nothing meanwhile), never pile up memory.
    let _permit = shared
        .upload_permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| io::Error::other("shared tier closed"))?;
    if shared.blob_size(digest).await?.is_some() {
        return Ok(Mirrored::Present);
    }
    let mut up = shared.begin_blob(digest);
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => {
                if let Err(e) = up.write(b).await {
                    up.abort().await;
                    return Err(e);
                }
            }
            Err(e) => {
                up.abort().await;
                return Err(io::Error::new(
                    e.kind(),
                    format!("the fetch of {digest} failed, upload aborted: {e}"),
                ));
            }
        }
    }
    let written = up.written();
    match up.commit().await {
        Ok(n) => Ok(Mirrored::Uploaded(n)),
        // Another replica's upload of the same digest may win the race
        // (some stores, Garage among them, cancel the older of two
        // uploads to one key): the same bytes are there, all is well.
        Err(e) => match shared.blob_size(digest).await {
            Ok(Some(size)) if size == written => Ok(Mirrored::Present),
            _ => Err(e),
        },
    }
}
