//! The storage conformance suite (`support/conformance.rs`) against a real
//! S3 server. Built only with `--features s3-tests`; `.ci/run` starts
//! Garage and passes its address and key in `FERRY_TEST_S3_*`. Without
//! them this test fails rather than passing without having run.

use crate::support;

use ferry::config::{S3Settings, Secret, SharedStorage};
use ferry::shared::Shared;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start an S3 server (tests/e2e/garage.sh) and export FERRY_TEST_S3_ENDPOINT, _BUCKET, _KEY and _SECRET")
    })
}

fn settings(prefix: &str) -> SharedStorage {
    SharedStorage::S3(S3Settings {
        bucket: env("FERRY_TEST_S3_BUCKET"),
        prefix: prefix.into(),
        region: std::env::var("FERRY_TEST_S3_REGION").unwrap_or_else(|_| "garage".into()),
        endpoint: Some(env("FERRY_TEST_S3_ENDPOINT")),
        access_key: Some(env("FERRY_TEST_S3_KEY")),
        secret_key: Some(Secret::new(env("FERRY_TEST_S3_SECRET"))),
        skip_verify: false,
        path_style: true,
        redirect: false,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_backend_conforms() {
    // A fresh prefix: the suite lists and caps everything under it.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let shared = Shared::open(&settings(&format!("conformance-{run}"))).unwrap();
    assert!(shared.describe().starts_with("s3 bucket"));
    support::conformance::run_all(&shared).await;
}
