//! A peer that lies about a blob, caught by one replica while another is
//! still receiving the same lie: the one that caught it tells the others
//! (a signed lie report), whose fills from the liar end at once, so a
//! client that retries on any replica starts a fresh fill instead of
//! joining a doomed one.

use super::*;

use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_catches_a_liar_tells_the_others() {
    let up = FakeRegistry::start().await;
    let size: usize = 2 << 20;
    let addrs = free_addrs(2);
    let blob = Arc::new(std::sync::Mutex::new(Bytes::new()));
    let b = blob.clone();
    let c_addr = addrs[1].to_string();
    // The liar, holding the secret: to B the whole blob with a byte
    // flipped; to C the first half of that, then nothing.
    let liar = RawUpstream::start(move |req| {
        if req.path == "/readyz" {
            let empty = RawBody::Bytes(Bytes::new());
            return RawReply::new("200 OK", &[("Content-Length", "0".into())], empty);
        }
        let mut wrong = b.lock().unwrap().to_vec();
        let middle = wrong.len() / 2 - 1;
        wrong[middle] ^= 1;
        let wrong = Bytes::from(wrong);
        let mut headers = vec![
            ("Content-Length", wrong.len().to_string()),
            (ferry::cluster::signature::HAVE, wrong.len().to_string()),
        ];
        headers.push(signed_answer(req, 200, &headers));
        let to_c = req.head.contains(&format!("ferry-peer: {c_addr}"));
        let body = match (req.method.as_str(), to_c) {
            ("HEAD", _) => RawBody::Bytes(Bytes::new()),
            (_, true) => RawBody::ThenHang(wrong.slice(..wrong.len() / 2)),
            (_, false) => RawBody::Bytes(wrong),
        };
        RawReply::new("200 OK", &headers, body)
    })
    .await;
    let liar_addr = liar.addr.to_string();
    let mut peers = vec![liar_addr.clone()];
    peers.extend(addrs.iter().map(|a| a.to_string()));
    let (d, data) = (7000..)
        .map(|seed| blob_bytes(size, seed))
        .map(|data| (sha256(&data), data))
        .find(|(d, _)| owner_of(&peers, d) == peers[0])
        .unwrap();
    up.add_blob(data.clone());
    *blob.lock().unwrap() = data;
    let mut replicas = Vec::new();
    for i in 1..3 {
        let mut c = cluster_config(&peers, &peers[i], Duration::from_millis(100));
        // Long enough that only the lie report ends C's fill.
        c.peer_timeout = Duration::from_secs(600);
        let addr = addrs[i - 1];
        replicas.push(
            Ferry::start_with(&up.url(), move |cfg| {
                cfg.listen = addr;
                cfg.cluster = Some(c);
                cfg.timeouts.idle_read = Duration::from_secs(600);
            })
            .await,
        );
    }
    all_live(&replicas, 2).await;
    let (b_replica, c_replica) = (&replicas[0], &replicas[1]);
    let path = format!("/v2/x/blobs/{d}");
    let at_c = tokio::spawn({
        let url = c_replica.url(&path);
        async move { try_get(&url).await }
    });
    // C is receiving the lie before B asks.
    until(|| c_replica.app.metrics.cluster.peer_bytes.get() >= size as u64 / 2).await;
    // B catches the lie: its client's download fails, or, when it failed
    // before the client's first byte, B fetches again (the liar out) and
    // serves the real blob. Never the lie as a complete answer.
    let w = within(try_get(&b_replica.url(&path))).await;
    assert!(
        w.map_or(true, |w| w.body_error.is_some()
            || w.status != StatusCode::OK
            || sha256(&w.body) == d),
        "B served the lie as the blob"
    );
    // C was told: its fill from the liar ended (its client's download
    // failed), and it left the liar out too.
    let first = within(at_c).await.unwrap();
    assert!(first.map_or(true, |w| sha256(&w.body) != d));
    let lied = |f: &Ferry| {
        let labels = ferry::metrics::PeerReasonLabels {
            peer: liar_addr.clone(),
            reason: "lied",
        };
        f.app
            .metrics
            .cluster
            .peer_failures
            .get_or_create(&labels)
            .get()
    };
    assert_eq!((lied(b_replica), lied(c_replica)), (1, 1));
    // A retry on either replica gets the blob.
    for r in [c_replica, b_replica] {
        let w = within(get(&r.url(&path))).await;
        assert_eq!(w.status, StatusCode::OK);
        assert_eq!(sha256(&w.body), d);
    }
}
