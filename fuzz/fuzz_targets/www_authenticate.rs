//! `WWW-Authenticate` headers from an untrusted upstream.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = std::str::from_utf8(data) {
        for c in ferry::upstream::parse_challenges(header) {
            let _ = c.param("realm");
            let _ = c.param("scope");
        }
    }
});
