//! `ferry prefetch` fetches an image's blobs a few at a time, not one by
//! one, and no more at once than asked.

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_fetched_in_parallel_up_to_the_limit() {
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let layers: Vec<(String, usize)> = (0..8)
        .map(|i| {
            let size = 200_000;
            let d = up.add_blob_with(
                blob_bytes(size, 1200 + i),
                Fault::PauseAt(1000, gate.clone()),
            );
            (d, size)
        })
        .collect();
    let config = Bytes::from_static(br#"{"architecture":"amd64","os":"linux"}"#);
    let config_len = config.len();
    let cd = up.add_blob(config);
    let descs: Vec<String> = layers
        .iter()
        .map(|(d, s)| {
            format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{s}}}"#)
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{config_len}}},"layers":[{}]}}"#,
        descs.join(",")
    );
    up.add_manifest(
        "team/app",
        Some("v1"),
        "application/vnd.oci.image.manifest.v1+json",
        manifest.into(),
    );
    let ferry = Ferry::start(&up.url()).await;
    let app = ferry.app.clone();
    let task = tokio::spawn(async move {
        ferry::prefetch::prefetch_with(&app, "team/app:v1", 3, &|_| {}).await
    });
    // Three layers stall at their gate at once: three downloads in
    // parallel, and a fourth waits for one of them (none can finish).
    let started = || layers.iter().map(|(d, _)| up.blob_gets(d)).sum::<usize>();
    within(async {
        while started() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(started(), 3, "more than --parallel 3 at once");
    gate.open();
    let report = within(task).await.unwrap().unwrap();
    assert_eq!(report.blobs, 9);
    assert_eq!(started(), 8);
    for (d, _) in &layers {
        assert!(ferry.has_blob(d));
    }
}
