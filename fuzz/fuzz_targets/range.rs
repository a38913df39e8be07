//! `Range` headers from clients, against blobs of every size: a partial
//! answer always lies inside the blob.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap());
    if let Ok(header) = std::str::from_utf8(&data[8..]) {
        for size in [size, size % 1000, 0] {
            if let ferry::http::RangeRequest::Partial { start, last } =
                ferry::http::resolve_range(Some(header), Some(size))
            {
                assert!(start <= last && last < size);
            }
        }
    }
});
