//! Out of file descriptors, ferry's listener still accepts: a new
//! connection is closed at once instead of hanging in the kernel's backlog,
//! and ferry serves normally as soon as descriptors are free again.
//!
//! Its own test binary: it lowers this process's open-file limit, which
//! would disturb any test running beside it.

use crate::support;

use std::io::{Read, Write};
use std::time::Duration;

use rustix::process::{getrlimit, setrlimit, Resource};
use support::*;

#[test]
fn out_of_descriptors_new_connections_are_closed_not_left_hanging() {
    crate::alone(scenario());
}

async fn scenario() {
    let up = FakeRegistry::start().await;
    let ferry = Ferry::start(&up.url()).await;
    let addr = ferry.addr;
    let before = ferry.app.metrics.connections_refused.get();

    let limit = getrlimit(Resource::Nofile);
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let mut low = limit;
    low.current = Some(open + 64);
    setrlimit(Resource::Nofile, low).unwrap();

    // Every descriptor taken, then one handed to the client's socket.
    let reply = tokio::task::spawn_blocking(move || {
        let mut fillers = Vec::new();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            fillers.push(f);
        }
        let mut client = loop {
            fillers.pop().expect("a descriptor to give the client");
            if let Ok(c) = std::net::TcpStream::connect(addr) {
                break c;
            }
        };
        client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let _ = client.write_all(b"GET /v2/ HTTP/1.1\r\nHost: ferry\r\n\r\n");
        let mut buf = [0u8; 256];
        // While waiting, any descriptor this process frees meanwhile is
        // taken too: ferry gets none but its spare.
        let mut reply = Err(std::io::ErrorKind::TimedOut.into());
        for _ in 0..200 {
            reply = client.read(&mut buf).map(|n| buf[..n].to_vec());
            match &reply {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    while let Ok(f) = std::fs::File::open("/dev/null") {
                        fillers.push(f);
                    }
                }
                _ => break,
            }
        }
        drop(fillers);
        reply
    })
    .await
    .unwrap();
    setrlimit(Resource::Nofile, limit).unwrap();
    match reply {
        Ok(bytes) => assert!(bytes.is_empty(), "closed at once, not answered: {bytes:?}"),
        Err(e) => assert!(
            e.kind() == std::io::ErrorKind::ConnectionReset,
            "the connection hung instead of being closed: {e}"
        ),
    }
    let refused = ferry.app.metrics.connections_refused.get();
    assert!(refused > before);
    // Descriptors free again: served as before, none refused.
    for _ in 0..3 {
        assert_eq!(
            within(get(&ferry.url("/v2/"))).await.status,
            http::StatusCode::OK
        );
    }
    assert_eq!(ferry.app.metrics.connections_refused.get(), refused);
}
