//! Property tests (proptest) for the arithmetic and parsing every request
//! goes through: Range resolution against a reference model, digests that
//! do not depend on how the bytes were chunked, and routing that gives one
//! deterministic candidate list per name and never panics or escapes the
//! store, whatever the input.

use ferry::config::{Config, FileConfig, Overrides};
use ferry::http::{resolve_range, RangeRequest};
use ferry::oci::{Algorithm, Digest, Hasher, RepoName};
use ferry::routing::Router;
use proptest::prelude::*;

/// What RFC 9110 says a single byte range means, written plainly.
fn model(header: &str, size: u64) -> RangeRequest {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    let spec = spec.trim();
    let Some((a, b)) = spec.split_once('-') else {
        return RangeRequest::Full;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let (a, b) = (a.trim(), b.trim());
    if spec.contains(',') || (!a.is_empty() && !digits(a)) || (!b.is_empty() && !digits(b)) {
        return RangeRequest::Full;
    }
    let (Ok(first), Ok(last)) = (
        if a.is_empty() {
            Ok(u64::MAX)
        } else {
            a.parse::<u64>()
        },
        if b.is_empty() {
            Ok(u64::MAX)
        } else {
            b.parse::<u64>()
        },
    ) else {
        return RangeRequest::Full;
    };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeRequest::Full,
        (true, false) if last == 0 || size == 0 => RangeRequest::Unsatisfiable,
        (true, false) => RangeRequest::Partial {
            start: size.saturating_sub(last),
            last: size - 1,
        },
        (false, _) if !b.is_empty() && first > last => RangeRequest::Full,
        (false, _) if first >= size => RangeRequest::Unsatisfiable,
        (false, _) => RangeRequest::Partial {
            start: first,
            last: last.min(size - 1),
        },
    }
}

fn range_header() -> impl Strategy<Value = String> {
    let n = prop_oneof![0u64..64, any::<u64>()];
    prop_oneof![
        (n.clone(), n.clone()).prop_map(|(a, b)| format!("bytes={a}-{b}")),
        n.clone().prop_map(|a| format!("bytes={a}-")),
        n.clone().prop_map(|b| format!("bytes=-{b}")),
        (n.clone(), n).prop_map(|(a, b)| format!("bytes={a}-{b}, {b}-")),
        "[ -~]{0,24}",
        "bytes=[0-9 -]{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn range_resolution_matches_the_model(header in range_header(), size in prop_oneof![0u64..100, any::<u64>()]) {
        let got = resolve_range(Some(&header), Some(size));
        prop_assert_eq!(got, model(&header, size), "header {:?} size {}", header, size);
        if let RangeRequest::Partial { start, last } = got {
            prop_assert!(start <= last && last < size);
        }
        prop_assert_eq!(resolve_range(Some(&header), None), RangeRequest::Full);
    }

    #[test]
    fn chunking_never_changes_a_digest(
        data in proptest::collection::vec(any::<u8>(), 0..4096),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut whole = Hasher::new(Algorithm::Sha256);
        whole.update(&data);
        let whole = whole.finish();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Hasher::new(Algorithm::Sha256);
        let mut from = 0;
        for p in points.into_iter().chain([data.len()]) {
            pieces.update(&data[from..p]);
            from = p;
        }
        prop_assert_eq!(pieces.finish(), whole.clone());
        // The text form parses back to the same digest.
        prop_assert_eq!(whole.to_string().parse::<Digest>().unwrap(), whole);
    }

    #[test]
    fn names_never_panic_and_never_escape(raw in "[a-z0-9._/%-]{0,80}|\\PC{0,40}") {
        if let Ok(name) = RepoName::parse(&raw) {
            let s = name.to_string();
            prop_assert!(!s.starts_with('/') && !s.ends_with('/'));
            prop_assert!(s.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != ".."));
            prop_assert!(!s.contains('%') && !s.contains('\\'));
        }
    }

    #[test]
    fn a_name_routes_to_one_deterministic_candidate_list(
        raw in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}|[ -~]{0,30}",
        ns in proptest::option::of(prop_oneof![
            Just("docker.io".to_string()), Just("ghcr.io".to_string()),
            Just("quay.io".to_string()), "[a-z.]{0,12}"
        ]),
    ) {
        let router = router();
        let first = router.resolve(&raw, ns.as_deref(), ferry::routing::Origin::background());
        let again = router.resolve(&raw, ns.as_deref(), ferry::routing::Origin::background());
        match (first, again) {
            (Ok(a), Ok(b)) => {
                let names = |r: &ferry::routing::Resolved| -> Vec<(String, String)> {
                    r.targets.iter().map(|t| (t.registry.name.clone(), t.upstream_name.to_string())).collect()
                };
                prop_assert_eq!(names(&a), names(&b));
                prop_assert!(!a.targets.is_empty());
                // No registry appears twice in one candidate list.
                let mut regs: Vec<String> = a.targets.iter().map(|t| t.registry.name.clone()).collect();
                regs.sort();
                let n = regs.len();
                regs.dedup();
                prop_assert_eq!(regs.len(), n);
            }
            (Err(a), Err(b)) => {
                prop_assert_eq!(a.status, b.status);
                prop_assert!(a.status.is_client_error(), "{:?}", a);
            }
            (a, b) => prop_assert!(false, "{:?} then {:?}", a.is_ok(), b.is_ok()),
        }
    }
}

/// Three registries with prefixes, as in `examples/many-registries.json`.
fn router() -> Router {
    let json = r#"{"extensions": {"sync": {"registries": [
        {"urls": ["https://ghcr.io"], "content": [{"prefix": "ghcr/**", "destination": "/", "stripPrefix": true}]},
        {"urls": ["https://quay.io"], "content": [{"prefix": "quay/**", "destination": "/", "stripPrefix": true}]},
        {"urls": ["https://registry-1.docker.io"], "content": [{"prefix": "**"}]}
    ]}}}"#;
    let file = FileConfig::parse(json).unwrap();
    let overrides = Overrides {
        listen: None,
        storage: None,
        upstream: None,
    };
    let config = Config::resolve(file, &overrides).unwrap();
    Router::new(&config).unwrap()
}
