//! Request paths as a client sends them (names, references, digests, the
//! `ns=` query): routing must answer or refuse, never panic, and never
//! produce a name that could leave the store.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, ns) = match text.split_once("?ns=") {
        Some((p, n)) => (p, Some(n)),
        None => (text, None),
    };
    // What a cluster peer sends as its route: parsed or refused, never a
    // panic, never a name that could leave the store.
    if let Ok(route) = ferry::routing::PeerRoute::parse(text) {
        let s = route.upstream_name.to_string();
        assert!(!s.split('/').any(|seg| seg == ".." || seg == "." || seg.is_empty()));
        assert!(!route.registry.contains('/') && !route.registry.contains(' '));
    }
    for method in [http::Method::GET, http::Method::HEAD, http::Method::PUT] {
        if let Ok(route) = ferry::http::route(&method, path) {
            let name = match &route {
                ferry::http::Route::Blob { name, .. }
                | ferry::http::Route::Manifest { name, .. }
                | ferry::http::Route::TagsList { name }
                | ferry::http::Route::Referrers { name, .. } => Some(name.clone()),
                _ => None,
            };
            if let Some(name) = name {
                let origin = ferry::routing::Origin::background();
                if let Ok(resolved) = router().resolve(&name, ns, origin) {
                    let s = resolved.local.to_string();
                    assert!(!s.split('/').any(|seg| seg == ".." || seg == "." || seg.is_empty()));
                }
            }
        }
    }
});

fn router() -> &'static ferry::routing::Router {
    static R: std::sync::OnceLock<ferry::routing::Router> = std::sync::OnceLock::new();
    R.get_or_init(|| {
        let json = r#"{"extensions": {"sync": {"registries": [
            {"urls": ["https://ghcr.io"], "content": [{"prefix": "ghcr/**", "destination": "/", "stripPrefix": true}]},
            {"urls": ["https://registry-1.docker.io"], "content": [{"prefix": "**"}]}
        ]}}}"#;
        let file = ferry::config::FileConfig::parse(json).unwrap();
        let o = ferry::config::Overrides { listen: None, storage: None, upstream: None };
        ferry::routing::Router::new(&ferry::Config::resolve(file, &o).unwrap()).unwrap()
    })
}
