//! The manifest record: how a manifest is kept, locally and in the shared
//! tier alike — its media type on the first line, then its bytes exactly as
//! the digest covers them. Written and read here only, with one set of
//! checks, so a record one place accepts every other place accepts too.

use bytes::Bytes;

use crate::oci::{Digest, Hasher};

/// The record of a manifest of `media_type` (a valid header value, so it
/// holds no line break).
pub fn encode(media_type: &str, bytes: &[u8]) -> Vec<u8> {
    debug_assert!(http::HeaderValue::from_str(media_type).is_ok() && !media_type.contains('\n'));
    let mut record = Vec::with_capacity(media_type.len() + 1 + bytes.len());
    record.extend_from_slice(media_type.as_bytes());
    record.push(b'\n');
    record.extend_from_slice(bytes);
    record
}

/// The media type and bytes of the record of `digest`; the error says why
/// the record is damaged (no media type line, a media type that is no
/// header value, bytes that do not match the digest).
pub fn decode(digest: &Digest, record: Bytes) -> Result<(String, Bytes), String> {
    let nl = record
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no media type line")?;
    let media_type = std::str::from_utf8(&record[..nl])
        .ok()
        .filter(|t| http::HeaderValue::from_str(t).is_ok())
        .ok_or("the media type is not a header value")?
        .to_string();
    let bytes = record.slice(nl + 1..);
    let mut h = Hasher::new(digest.algorithm());
    h.update(&bytes);
    if h.finish() != *digest {
        return Err("its bytes do not match the digest".into());
    }
    Ok((media_type, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_every_damage_is_named() {
        let m = br#"{"schemaVersion":2}"#;
        let d = Digest::sha256_of(m);
        let t = "application/vnd.oci.image.manifest.v1+json";
        let record = Bytes::from(encode(t, m));
        assert_eq!(
            decode(&d, record.clone()).unwrap(),
            (t.to_string(), Bytes::from(&m[..]))
        );
        assert!(decode(&d, Bytes::from(&m[..]))
            .unwrap_err()
            .contains("media type line"));
        let bad_type = [&b"a\x01b\n"[..], m].concat();
        assert!(decode(&d, bad_type.into())
            .unwrap_err()
            .contains("header value"));
        let mut flipped = record.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(decode(&d, flipped.into()).unwrap_err().contains("digest"));
    }
}
