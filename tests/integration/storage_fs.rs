//! The storage conformance suite (`support/conformance.rs`) against the
//! local store and the `filesystem` shared-tier driver. The S3 run is
//! `storage_s3.rs`.

use crate::support;

use ferry::config::SharedStorage;
use ferry::shared::Shared;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filesystem_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::open(&SharedStorage::Filesystem {
        root: dir.path().join("bucket"),
    })
    .unwrap();
    support::conformance::run_all(&shared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = ferry::store::FsStore::open(dir.path()).unwrap();
    support::conformance::run_local(&std::sync::Arc::new(store)).await;
}
