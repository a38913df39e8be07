//! Manifests from an untrusted upstream: media-type sniffing and the
//! digests a manifest references (used to scope blobs to repositories).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ferry::oci::sniff_manifest_media_type(data);
    for d in ferry::app::manifests::referenced_digests(data) {
        assert!(d.to_string().parse::<ferry::oci::Digest>().is_ok());
    }
});
