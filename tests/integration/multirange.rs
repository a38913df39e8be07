//! Several ranges in one request (`Range: bytes=a-b,c-d,…`), as podman's
//! partial pulls of `zstd:chunked` layers send them (containers/image's
//! `GetBlobAt`): a `206 multipart/byteranges` of exactly those bytes, for
//! a stored blob and for one still downloading; overlapping and touching
//! ranges coalesced, the parts bounded, `If-Range` honoured.

use crate::support;

use http::{Method, StatusCode};
use support::*;

/// The parts of a `multipart/byteranges` answer: `(Content-Range, bytes)`.
fn parts(w: &Whole) -> Vec<(String, Vec<u8>)> {
    let ct = w.header("content-type").expect("a content type");
    let boundary = ct
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("not multipart: {ct}"));
    let delimiter = format!("\r\n--{boundary}");
    let body = &w.body[..];
    let mut out = Vec::new();
    let mut rest = body;
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|x| x == needle);
    let start = find(rest, delimiter.as_bytes()).expect("a first delimiter");
    rest = &rest[start + delimiter.len()..];
    loop {
        if rest.starts_with(b"--") {
            assert_eq!(&rest[2..], b"\r\n", "the closing delimiter ends the body");
            return out;
        }
        let head_end = find(rest, b"\r\n\r\n").expect("part headers");
        let head = std::str::from_utf8(&rest[..head_end]).unwrap();
        let range = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Range: bytes "))
            .unwrap_or_else(|| panic!("no Content-Range in {head:?}"))
            .to_string();
        let (span, _) = range.split_once('/').unwrap();
        let (a, b) = span.split_once('-').unwrap();
        let len = b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1;
        let data_start = head_end + 4;
        out.push((range, rest[data_start..data_start + len].to_vec()));
        rest = &rest[data_start + len..];
        assert!(
            rest.starts_with(delimiter.as_bytes()),
            "a delimiter after each part"
        );
        rest = &rest[delimiter.len()..];
    }
}

fn ranged(url: &str, range: &str) -> impl std::future::Future<Output = Whole> {
    let (url, range) = (url.to_string(), range.to_string());
    async move { request(Method::GET, &url, &[("range", &range)]).await }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_ranges_of_a_stored_blob_are_a_multipart_answer_of_exactly_those_bytes() {
    let up = FakeRegistry::start().await;
    let size = 100_000;
    let data = blob_bytes(size, 501);
    let d = up.add_blob(data.clone());
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url(&format!("/v2/x/blobs/{d}"));
    within(get(&url)).await;
    ferry.settle().await;
    assert!(ferry.has_blob(&d));

    let w = within(ranged(&url, "bytes=500-999, 10-19,-7")).await;
    assert_eq!(w.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        w.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        w.body.len()
    );
    let got = parts(&w);
    let want = [(500, 999), (10, 19), (size - 7, size - 1)];
    assert_eq!(got.len(), 3, "one part per range, in the order asked");
    for ((range, bytes), (a, b)) in got.iter().zip(want) {
        assert_eq!(range, &format!("{a}-{b}/{size}"));
        assert_eq!(&bytes[..], &data[a..=b], "{range}");
    }

    // Overlapping and touching ranges coalesce: one part is a plain 206.
    let w = within(ranged(&url, "bytes=0-9,5-14,15-19")).await;
    assert_eq!(w.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        w.header("content-range"),
        Some(&*format!("bytes 0-19/{size}"))
    );
    assert_eq!(&w.body[..], &data[..20]);

    // What containers/storage sends for a zstd:chunked partial pull: up to
    // 1024 ranges, no spaces, at least 1 KiB apart (it merges closer ones
    // itself), and containers/image takes the answer only with one part
    // per range, in the order asked.
    let big = blob_bytes(2 << 20, 503);
    let d2 = up.add_blob(big.clone());
    let url2 = ferry.url(&format!("/v2/x/blobs/{d2}"));
    let chunks: Vec<(usize, usize)> = (0..1024)
        .map(|i| (i * 2000 + 7, i * 2000 + 7 + 80))
        .collect();
    let header: Vec<String> = chunks.iter().map(|(a, b)| format!("{a}-{b}")).collect();
    let w = within(ranged(&url2, &format!("bytes={}", header.join(",")))).await;
    assert_eq!(w.status, StatusCode::PARTIAL_CONTENT);
    let got = parts(&w);
    assert_eq!(got.len(), 1024, "one part per range asked");
    for ((_, bytes), &(a, b)) in got.iter().zip(&chunks) {
        assert_eq!(&bytes[..], &big[a..=b]);
    }

    // Past the bound, neighbours merge: every byte asked for still comes.
    let many: Vec<String> = (0..1100)
        .map(|i| format!("{}-{}", i * 80, i * 80 + 9))
        .collect();
    let w = within(ranged(&url, &format!("bytes={}", many.join(",")))).await;
    let got = parts(&w);
    assert!(got.len() <= 1024, "{} parts", got.len());
    for i in 0..1100usize {
        let (a, b) = (i * 80, i * 80 + 9);
        let covering = got.iter().find(|(r, _)| {
            let (s, l) = r.split_once('/').unwrap().0.split_once('-').unwrap();
            s.parse::<usize>().unwrap() <= a && b <= l.parse::<usize>().unwrap()
        });
        let (r, bytes) = covering.unwrap_or_else(|| panic!("{a}-{b} not sent"));
        let s: usize = r.split_once('-').unwrap().0.parse().unwrap();
        assert_eq!(&bytes[a - s..=b - s], &data[a..=b]);
    }

    // None inside the blob: 416.
    let w = within(ranged(
        &url,
        &format!("bytes={size}-,{}-{}", size + 10, size + 20),
    ))
    .await;
    assert_eq!(w.status, StatusCode::RANGE_NOT_SATISFIABLE);

    // If-Range with another validator: the whole blob; with the blob's own
    // tag: the parts.
    let other = [("range", "bytes=0-1,5-6"), ("if-range", "\"sha256:other\"")];
    let w = within(request(Method::GET, &url, &other)).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(w.body, data);
    let tag = format!("\"{d}\"");
    let own = [("range", "bytes=0-1,5-6"), ("if-range", tag.as_str())];
    let w = within(request(Method::GET, &url, &own)).await;
    assert_eq!(parts(&w).len(), 2);

    // HEAD answers for the whole blob.
    let w = within(request(Method::HEAD, &url, &[("range", "bytes=0-1,5-6")])).await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(w.header("content-length"), Some(&*size.to_string()));
    assert_eq!(up.blob_gets(&d), 1, "one upstream fetch for all of it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_ranges_of_a_blob_still_downloading_are_sent_as_their_bytes_arrive() {
    let up = FakeRegistry::start().await;
    let size = 4 << 20;
    let data = blob_bytes(size, 502);
    let gate = Gate::new();
    let d = up.add_blob_with(data.clone(), Fault::PauseAt(1 << 20, gate.clone()));
    let ferry = Ferry::start(&up.url()).await;
    let url = ferry.url(&format!("/v2/x/blobs/{d}"));
    // The first part is below the pause, the second beyond it.
    let resp = within(send(
        Method::GET,
        &url,
        &[("range", "bytes=100-199,3000000-3000099")],
    ))
    .await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    let mut body = resp.into_body();
    // The first part arrives while the download waits at 1 MiB.
    let first = within(read_at_least(&mut body, 150)).await;
    assert!(
        first.windows(100).any(|w| w == &data[100..200]),
        "the first part before the rest of the blob"
    );
    gate.open();
    let mut all = first;
    all.extend(
        within(async {
            let mut rest = Vec::new();
            while let Some(f) = http_body_util::BodyExt::frame(&mut body).await {
                if let Ok(d) = f.unwrap().into_data() {
                    rest.extend_from_slice(&d);
                }
            }
            rest
        })
        .await,
    );
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", ct.parse().unwrap());
    let w = Whole {
        status: StatusCode::PARTIAL_CONTENT,
        headers,
        body: all.into(),
        body_error: None,
    };
    let got = parts(&w);
    assert_eq!(got.len(), 2);
    assert_eq!(&got[0].1[..], &data[100..200]);
    assert_eq!(&got[1].1[..], &data[3_000_000..3_000_100]);
    ferry.settle().await;
    assert!(ferry.has_blob(&d), "the download went on to store the blob");
    assert_eq!(up.blob_gets(&d), 1);
}
