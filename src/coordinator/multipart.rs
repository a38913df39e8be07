//! Several ranges of a blob in one answer: a `206` with a
//! `multipart/byteranges` body (RFC 9110 §14.6), as podman's partial pulls
//! of `zstd:chunked` layers ask for them.
//!
//! Each part is read exactly as a single range is — from memory, the store,
//! or a download in flight as its bytes arrive — so a blob not cached yet
//! starts downloading and every part is sent as soon as its bytes are in.
//! The body's length is known in advance (parts and their headers), so the
//! answer carries a `Content-Length`.

use bytes::Bytes;
use futures::StreamExt;

use super::handle::BlobHandle;
use super::reader::BlobStream;

/// A multipart body: its stream, its length, and its boundary.
pub struct Multipart {
    pub body: BlobStream,
    pub length: u64,
    pub boundary: String,
}

/// The parts `[start, last]` (sorted, disjoint) of a blob of `size` bytes
/// opened as `handle`; `None` for a blob served uncached (it streams
/// whole, once: the caller answers 200). With `verified_only`, a part of a
/// blob in flight ends cleanly only once the blob was verified.
pub fn body(
    handle: BlobHandle,
    parts: &[(u64, u64)],
    size: u64,
    verified_only: bool,
) -> Option<Multipart> {
    let boundary = format!("ferry-{:016x}", fastrand::u64(..));
    let head = |start: u64, last: u64| {
        Bytes::from(format!(
            "\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {start}-{last}/{size}\r\n\r\n"
        ))
    };
    let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
    let length = parts
        .iter()
        .map(|&(s, l)| head(s, l).len() as u64 + (l - s + 1))
        .sum::<u64>()
        + tail.len() as u64;
    let (streams, holding): (Vec<BlobStream>, Box<dyn std::any::Any + Send + Sync>) = match handle {
        BlobHandle::Memory { bytes } => {
            let streams = parts
                .iter()
                .map(|&(s, l)| {
                    let part = bytes.slice(s as usize..=l as usize);
                    BlobStream::from_stream(futures::stream::once(async move { Ok(part) }))
                })
                .collect();
            (streams, Box::new(()))
        }
        BlobHandle::Stored { file, guard, .. } => {
            let streams = parts
                .iter()
                .map(|&(s, l)| BlobStream::stored(file.clone(), s, l + 1))
                .collect();
            (streams, Box::new(guard))
        }
        BlobHandle::InFlight {
            flight,
            file,
            client,
            ..
        } => {
            let streams = parts
                .iter()
                .map(|&(s, l)| {
                    BlobStream::following_with(
                        flight.clone(),
                        file.clone(),
                        s,
                        Some(l + 1),
                        verified_only,
                    )
                })
                .collect();
            (streams, Box::new(client))
        }
        BlobHandle::Uncached { .. } => return None,
    };
    let pieces: Vec<_> = parts
        .iter()
        .zip(streams)
        .map(|(&(s, l), stream)| {
            futures::stream::once(futures::future::ready(Ok(head(s, l)))).chain(stream)
        })
        .collect();
    let all = futures::stream::iter(pieces)
        .flatten()
        .chain(futures::stream::once(futures::future::ready(Ok(tail))));
    Some(Multipart {
        // The guard (an eviction guard, or the download's client count)
        // lives until the last part is sent.
        body: BlobStream::from_stream(all).holding(holding),
        length,
        boundary,
    })
}
