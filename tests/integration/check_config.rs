//! `ferry check-config` is the final word on a config file: what `serve`
//! would refuse, it refuses; what it accepts, it prints as understood.

use crate::support;

use std::process::Command;

fn check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("check-config")
        .args(args)
        .output()
        .expect("run ferry");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn tls_files_that_do_not_exist_are_refused_as_serve_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "tls.json",
        r#"{"http": {"tls": {"cert": "/nonexistent/server.crt", "key": "/nonexistent/server.key"}}}"#,
    );
    let (code, _, err) = check(&[&f]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/server.crt"), "{err}");
}

#[test]
fn a_store_serve_could_not_create_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "proc.json",
        r#"{"storage": {"rootDirectory": "/proc/ferry"}}"#,
    );
    let (code, _, err) = check(&[&f]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot create store directory /proc/ferry"),
        "{err}"
    );
    // One that can be created is fine, and is not created by the check.
    let fresh = dir.path().join("a/b/store");
    let text = format!(
        r#"{{"storage": {{"rootDirectory": "{}"}}}}"#,
        fresh.display()
    );
    let f = write(&dir, "fresh.json", &text);
    let (code, _, err) = check(&[&f]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !dir.path().join("a").exists(),
        "the check created the store"
    );
}

#[test]
fn a_missing_htpasswd_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "auth.json",
        r#"{"http": {"auth": {"htpasswd": {"path": "/nonexistent/htpasswd"}}}}"#,
    );
    let (code, _, err) = check(&[&f]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/htpasswd"), "{err}");
}

#[test]
fn config_flag_empty_and_repeated_registries_plain_http_and_units() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "c.json",
        r#"{"ferry": {"maxSize": "10GB", "connectTimeout": "90s"},
            "extensions": {"sync": {"registries": [
              {"urls": ["http://127.0.0.1:5001"], "tlsVerify": true, "tagTTL": "5 min"},
              {"urls": ["http://127.0.0.1:5001"]}
            ]}}}"#,
    );
    // `--config` as for every other subcommand.
    let (code, out, err) = check(&["--config", &f]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("repeats registries[0]"), "{out}");
    assert!(out.contains("tlsVerify: has no effect"), "{out}");
    assert!(!out.contains("tlsVerify true"), "{out}");
    let line = |key: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in {out}"))
            .to_string()
    };
    assert!(line("ferry.maxSize").contains("9.3 GiB"));
    assert!(line("ferry.connectTimeout").contains("1m 30s"));
    assert!(line("registries[0].tagTTL").contains("5m"));
    assert!(line("ferry.idleReadTimeout").ends_with("(= default)"));

    let e = write(
        &dir,
        "e.json",
        r#"{"extensions": {"sync": {"registries": []}}}"#,
    );
    let (code, out, _) = check(&[&e]);
    assert_eq!(code, 0);
    assert!(out.contains("registries is empty"), "{out}");

    let (code, _, err) = check(&[]);
    assert_eq!(code, 2);
    assert!(err.contains("needs a config file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_says_what_answered_and_snippets_are_printed() {
    let up = support::FakeRegistry::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"{{"extensions": {{"sync": {{"registries": [
            {{"urls": ["{}", "http://{closed}"], "maxRetries": 0}}
        ]}}}}}}"#,
        up.url()
    );
    let f = write(&dir, "probe.json", &text);
    let (code, out, err) = tokio::task::spawn_blocking(move || check(&["--probe", &f]))
        .await
        .unwrap();
    // One URL did not answer: the check fails, so it can gate a rollout.
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("1 upstream probe(s) failed"), "{err}");
    let probe = out
        .split("probe\n")
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        probe.contains(&format!("{} GET /v2/: 200 OK in", up.url())),
        "{probe}"
    );
    assert!(
        probe.contains(&format!("http://{closed} GET /v2/: no answer")),
        "{probe}"
    );
    assert!(out.contains("client snippets"), "{out}");
    assert!(out.contains("hosts.toml"), "{out}");
    // Every URL answering as a registry does: it passes.
    let text = format!(
        r#"{{"extensions": {{"sync": {{"registries": [{{"urls": ["{}"]}}]}}}}}}"#,
        up.url()
    );
    let f = write(&dir, "good.json", &text);
    let (code, _, err) = tokio::task::spawn_blocking(move || check(&["--probe", &f]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn serve_says_which_config_it_loaded_and_a_fatal_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "serve.json",
        r#"{"http": {"tls": {"cert": "/nonexistent/server.crt", "key": "/nonexistent/server.key"}}}"#,
    );
    let store = dir.path().join("store");
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            &f,
            "--storage",
        ])
        .arg(&store)
        .output()
        .expect("run ferry");
    assert!(!out.status.success());
    // Log lines go to standard output; what ferry prints itself to errors.
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        err.contains("config loaded") && err.contains("serve.json"),
        "{err}"
    );
    assert_eq!(
        err.matches("/nonexistent/server.crt").count(),
        1,
        "one line for the fatal error:\n{err}"
    );

    let help = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--help"])
        .output()
        .expect("run ferry");
    let help = String::from_utf8_lossy(&help.stdout);
    for default in ["127.0.0.1:5000", "./data", "https://registry-1.docker.io"] {
        assert!(
            help.contains(default),
            "serve --help does not show {default}:\n{help}"
        );
    }
}
