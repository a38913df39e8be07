//! Config files: any text is a config or an error message, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(file) = ferry::config::FileConfig::parse(text) {
            let o = ferry::config::Overrides { listen: None, storage: None, upstream: None };
            if let Ok(config) = ferry::Config::resolve(file, &o) {
                let _ = ferry::routing::Router::new(&config);
            }
        }
    }
});
