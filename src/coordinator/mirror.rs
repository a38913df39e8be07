//! Uploading a blob to the shared tier while it is fetched: one more
//! reader of the fetch, following the spool like a late client (see
//! `shared::upload`), in its own task, counted in the shared-tier metrics.

use std::sync::Arc;

use super::flight::Flight;
use super::reader::BlobStream;

/// Uploads the blob being fetched to the shared tier, as one more reader
/// of the fetch (see `shared::upload`).
pub(super) fn start(
    shared: Arc<crate::shared::Shared>,
    flight: &Arc<Flight>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let Some(file) = flight.file() else {
        return;
    };
    let stream = BlobStream::following(flight.clone(), file, 0, None);
    let digest = flight.digest.clone();
    tokio::spawn(async move {
        match crate::shared::upload::mirror(&shared, &digest, stream).await {
            Ok(m) => {
                if let crate::shared::upload::Mirrored::Uploaded(_) = m {
                    metrics.shared_uploads.inc();
                }
                tracing::debug!(%digest, outcome = ?m, "shared tier upload");
            }
            Err(e) => {
                metrics.shared_upload_failures.inc();
                tracing::warn!(%digest, error = %e, "shared tier upload failed");
            }
        }
    });
}
