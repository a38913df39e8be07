//! Start-up and shutdown: leftovers of a crash are cleaned, and a shutdown
//! stops accepting but lets responses in flight finish.

mod support;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_removes_temp_files_and_keeps_stored_blobs() {
    let up = FakeRegistry::start().await;
    let data = blob_bytes(200_000, 20);
    let digest = up.add_blob(data.clone());
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url(&format!("/v2/a/blobs/{digest}"));
    assert_eq!(sha256(&within(get(&url)).await.body), digest);
    ferry.settle().await;
    let dir = ferry.stop().await;

    // A crash mid-download leaves a temp file behind.
    let tmp = dir.path().join("store/tmp");
    std::fs::write(tmp.join("deadbeef-1.0.part"), b"half a blob").unwrap();
    let ferry = Ferry::start_in(dir, &up.url(), |_| {}).await;
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "leftover temp file survived start-up"
    );
    let again = within(get(&ferry.url(&format!("/v2/a/blobs/{digest}")))).await;
    assert_eq!(again.body, data);
    assert_eq!(
        up.blob_gets(&digest),
        1,
        "the stored blob survived the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_responses_in_flight_finish_and_refuses_new_connections() {
    let up = FakeRegistry::start().await;
    let gate = Gate::new();
    let data = blob_bytes(3 << 20, 21);
    let digest = up.add_blob_with(data.clone(), Fault::PauseAt(1 << 20, gate.clone()));
    let ferry = Ferry::start(&up.url()).await;
    let addr = ferry.addr;
    let resp = within(send(
        Method::GET,
        &ferry.url(&format!("/v2/a/blobs/{digest}")),
        &[],
    ))
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    gate.reached().await;

    let stopping = tokio::spawn(ferry.stop());
    // The listener closes while the response is still held by the upstream.
    within(async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        !stopping.is_finished(),
        "shutdown must wait for the response in flight"
    );
    gate.open();
    let body = within(resp.into_body().collect()).await.unwrap().to_bytes();
    assert_eq!(sha256(&body), digest);
    within(stopping).await.unwrap();
}
