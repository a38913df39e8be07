//! Unit tests of the router: candidates and their order, `ns=`, path
//! style, prefixes, Docker Hub's `library/`, and the remembered registry.

use super::*;
use crate::config::{FileConfig, Overrides};

fn router(json: &str) -> Router {
    let c = Config::resolve(FileConfig::parse(json).unwrap(), &Overrides::default()).unwrap();
    Router::new(&c).unwrap()
}

fn order(r: &Router, name: &str, ns: Option<&str>) -> Vec<(usize, String)> {
    r.resolve(name, ns, Origin::background())
        .unwrap()
        .targets
        .iter()
        .map(|t| (t.registry.index, t.upstream_name.to_string()))
        .collect()
}

#[tokio::test]
async fn seed_config_routes_like_zot() {
    let r = router(include_str!("../../tests/fixtures/seed-config.json"));
    assert_eq!(
        order(&r, "lank8s/pause", None),
        vec![
            (0, "lank8s/pause".into()),
            (1, "lank8s/pause".into()),
            (2, "lank8s/pause".into())
        ]
    );
    assert_eq!(
        order(&r, "pause", None),
        vec![(1, "pause".into()), (2, "pause".into())]
    );
    r.remember(&RepoName::parse("pause").unwrap(), 2);
    assert_eq!(
        order(&r, "pause", None)[0].0,
        2,
        "remembered registry goes first"
    );
}

#[tokio::test]
async fn the_memory_of_served_repositories_is_bounded() {
    let r = router(include_str!("../../tests/fixtures/seed-config.json"));
    for i in 0..3 * REMEMBERED_NAMES {
        r.remember(&RepoName::parse(&format!("invented/n{i}")).unwrap(), 2);
    }
    assert!(
        r.remembered.len() <= REMEMBERED_NAMES,
        "{} names remembered",
        r.remembered.len()
    );
}

#[tokio::test]
async fn ns_path_style_and_docker_hub() {
    let r = router(
        r#"{"extensions":{"sync":{"registries":[
            {"urls":["https://registry-1.docker.io"]},
            {"urls":["https://ghcr.io", "https://ghcr-mirror.example:8443"]},
            {"urls":["http://127.0.0.1:5001"]}]}}}"#,
    );
    assert_eq!(
        order(&r, "alpine", Some("docker.io")),
        vec![(0, "library/alpine".into())]
    );
    assert_eq!(
        order(&r, "org/app", Some("ghcr.io")),
        vec![(1, "org/app".into())]
    );
    assert_eq!(
        order(&r, "org/app", Some("ghcr-mirror.example:8443")),
        vec![(1, "org/app".into())]
    );
    assert_eq!(
        order(&r, "x", Some("127.0.0.1:5001")),
        vec![(2, "x".into())]
    );
    let e = r
        .resolve("alpine", Some("evil.example"), Origin::background())
        .unwrap_err();
    assert_eq!(
        (e.status, e.code),
        (StatusCode::NOT_FOUND, ErrorCode::NameUnknown)
    );
    // Path style, including a host with a port.
    assert_eq!(
        order(&r, "docker.io/library/alpine", None),
        vec![(0, "library/alpine".into())]
    );
    assert_eq!(
        order(&r, "docker.io/alpine", None),
        vec![(0, "library/alpine".into())]
    );
    assert_eq!(
        order(&r, "127.0.0.1:5001/team/x", None),
        vec![(2, "team/x".into())]
    );
    // No selector: every registry, in order; Docker Hub adds library/.
    assert_eq!(
        order(&r, "busybox", None),
        vec![
            (0, "library/busybox".into()),
            (1, "busybox".into()),
            (2, "busybox".into())
        ]
    );
    assert_eq!(
        r.resolve("Bad/Name", None, Origin::background())
            .unwrap_err()
            .code,
        ErrorCode::NameInvalid
    );
    assert_eq!(
        r.resolve("docker.io/../x", None, Origin::background())
            .unwrap_err()
            .code,
        ErrorCode::NameInvalid
    );
}

#[tokio::test]
async fn destination_and_strip_prefix() {
    let r = router(
        r#"{"extensions":{"sync":{"registries":[
            {"urls":["https://a.example"], "content":[{"prefix":"/team/**","destination":"/mirror/a","stripPrefix":true}]},
            {"urls":["https://b.example"], "content":[{"prefix":"kube-*","destination":"/k8s"}]}]}}}"#,
    );
    assert_eq!(
        order(&r, "mirror/a/app", None),
        vec![(0, "team/app".into())]
    );
    assert_eq!(
        order(&r, "mirror/a/x/y", None),
        vec![(0, "team/x/y".into())]
    );
    assert_eq!(
        order(&r, "k8s/kube-proxy", None),
        vec![(1, "kube-proxy".into())]
    );
    let e = r
        .resolve("k8s/etcd", None, Origin::background())
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NameUnknown);
    assert!(
        r.resolve("team/app", None, Origin::background()).is_err(),
        "only reachable under its destination"
    );
    // Chosen by ns=, the name is the registry's own; content only filters.
    assert_eq!(
        order(&r, "team/app", Some("a.example")),
        vec![(0, "team/app".into())]
    );
    assert_eq!(
        order(&r, "kube-proxy", Some("b.example")),
        vec![(1, "kube-proxy".into())]
    );
    assert!(r
        .resolve("etcd", Some("b.example"), Origin::background())
        .is_err());
}
