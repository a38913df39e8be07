//! containerd's `certs.d` for ferry: one `<dir>/<host>/hosts.toml` per
//! registry ferry's config routes (Docker Hub as `docker.io`), optionally
//! `_default` for every other registry. Each file keeps the registry
//! itself as `server`, so a node still pulls when ferry is down (containerd
//! tries the `[host]` entries first, then the server) and when ferry
//! answers 404 (a registry it does not route).
//!
//! A file ferry writes starts with [`MARKER`]; only such files are
//! rewritten. A file without it is someone else's and is left alone
//! unless `force` says otherwise. Planning ([`plan`]) reads the directory
//! and decides; [`apply`] writes: `--dry-run` is the plan, printed. Running
//! it twice changes nothing the second time.

use std::io;
use std::path::{Path, PathBuf};

use crate::config::{containerd_host, Config};

/// The first line of every file ferry writes.
pub const MARKER: &str = "# Written by `ferry configure containerd`; it rewrites this file. Delete this line to keep your own version.";

/// Where and how nodes reach ferry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// `http(s)://host:port`, no path.
    url: String,
    /// A CA file for an `https` mirror with a private CA (`ca = ...`).
    ca: Option<PathBuf>,
}

impl Mirror {
    /// `url` as nodes reach ferry: `http://` or `https://`, a host, no path.
    pub fn parse(url: &str, ca: Option<PathBuf>) -> Result<Mirror, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("--mirror {url:?}: not a URL ({e})"))?;
        let scheme = uri.scheme_str().unwrap_or("");
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "--mirror {url:?}: give http:// or https:// and the address nodes reach ferry at"
            ));
        }
        let Some(authority) = uri.authority() else {
            return Err(format!("--mirror {url:?}: no host"));
        };
        if authority.as_str().contains('@') {
            return Err(format!(
                "--mirror {url:?}: no credentials in the URL (hosts.toml is world-readable)"
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "--mirror {url:?}: no path: containerd asks ferry for /v2/... at its root"
            ));
        }
        if ca.is_some() && scheme != "https" {
            return Err("--mirror-ca is for an https:// mirror".to_string());
        }
        // containerd reads a relative path against the host's directory.
        let ca = ca.map(|c| std::path::absolute(&c).unwrap_or(c));
        Ok(Mirror {
            url: format!("{scheme}://{authority}"),
            ca,
        })
    }
}

/// One file ferry wants in the hosts directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsFile {
    /// The directory under the hosts dir: `docker.io`, `ghcr.io`,
    /// `registry.local:5000`, `_default`.
    pub host: String,
    pub text: String,
}

/// The files for every registry `config` routes, plus `_default` when
/// `default` is set; an error for a registry name that cannot be a
/// directory of its own under the hosts directory.
pub fn hosts_files(
    config: &Config,
    mirror: &Mirror,
    default: bool,
) -> Result<Vec<HostsFile>, String> {
    let mut files: Vec<HostsFile> = Vec::new();
    for r in &config.registries {
        let h = containerd_host(r);
        let unsafe_name = h.name.is_empty()
            || h.name.starts_with('.')
            || h.name.contains(['/', '\\'])
            || h.name == "_default";
        if unsafe_name {
            return Err(format!(
                "registry {:?} cannot name a directory under the hosts directory",
                h.name
            ));
        }
        if files.iter().any(|f| f.host == h.name) {
            continue; // the first registry of a name wins, as in routing
        }
        files.push(HostsFile {
            text: text(Some(&h.server), mirror),
            host: h.name,
        });
    }
    if default {
        // No server: containerd then falls back to the registry each
        // image names, not to one host for all.
        files.push(HostsFile {
            host: "_default".to_string(),
            text: text(None, mirror),
        });
    }
    Ok(files)
}

fn text(server: Option<&str>, mirror: &Mirror) -> String {
    let mut t = format!("{MARKER}\n");
    if let Some(server) = server {
        t.push_str(
            "# The registry itself: containerd falls back to it when ferry is down\n\
             # or answers 404 (a registry ferry does not route).\n",
        );
        t.push_str(&format!("server = \"{server}\"\n"));
    }
    t.push_str(&format!(
        "\n# ferry; containerd adds ?ns=<registry> to what it asks, and ferry routes on it.\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        mirror.url
    ));
    if let Some(ca) = &mirror.ca {
        // A TOML string, escaped as TOML escapes it.
        let ca = toml::Value::String(ca.display().to_string());
        t.push_str(&format!("  ca = {ca}\n"));
    }
    t
}

/// What one file comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new file.
    Create { path: PathBuf, text: String },
    /// A file ferry wrote before (or, with `force`, anyone's), now different.
    Replace { path: PathBuf, text: String },
    /// Already as ferry would write it.
    Unchanged { path: PathBuf },
    /// Not ferry's (no [`MARKER`]): left as it is.
    NotOurs { path: PathBuf },
    /// Written by ferry for a registry its config no longer routes. Left:
    /// it is harmless (ferry answers 404 for it and containerd falls back
    /// to its server); delete it by hand.
    Stale { path: PathBuf },
}

impl Change {
    /// True for the changes [`apply`] writes.
    pub fn writes(&self) -> bool {
        matches!(self, Change::Create { .. } | Change::Replace { .. })
    }

    /// One line for people: what was (or, with `dry`, would be) done.
    pub fn describe(&self, dry: bool) -> String {
        let (verb, path, note) = match self {
            Change::Create { path, .. } => (if dry { "would create" } else { "created" }, path, ""),
            Change::Replace { path, .. } => (if dry { "would replace" } else { "replaced" }, path, ""),
            Change::Unchanged { path } => ("unchanged", path, ""),
            Change::NotOurs { path } => (
                "left alone",
                path,
                " (not written by ferry; --force replaces it)",
            ),
            Change::Stale { path } => (
                "stale",
                path,
                " (written by ferry for a registry its config no longer routes; harmless, delete it by hand)",
            ),
        };
        format!("{verb:<13} {}{note}", path.display())
    }
}

/// What writing `files` into `dir` changes, reading what is there.
pub fn plan(dir: &Path, files: &[HostsFile], force: bool) -> io::Result<Vec<Change>> {
    let mut changes = Vec::new();
    for f in files {
        let path = dir.join(&f.host).join("hosts.toml");
        let change = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Change::Create {
                path,
                text: f.text.clone(),
            },
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            Ok(old) if old == f.text => Change::Unchanged { path },
            Ok(old) if force || ours(&old) => Change::Replace {
                path,
                text: f.text.clone(),
            },
            Ok(_) => Change::NotOurs { path },
        };
        changes.push(change);
    }
    // ferry's files for hosts it no longer writes.
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(changes),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    };
    let mut stale = Vec::new();
    for entry in entries.flatten() {
        let host = entry.file_name().to_string_lossy().into_owned();
        if files.iter().any(|f| f.host == host) {
            continue;
        }
        let path = entry.path().join("hosts.toml");
        if std::fs::read_to_string(&path).is_ok_and(|t| ours(&t)) {
            stale.push(Change::Stale { path });
        }
    }
    stale.sort_by_key(|c| format!("{c:?}"));
    changes.extend(stale);
    Ok(changes)
}

fn ours(text: &str) -> bool {
    text.lines().next() == Some(MARKER)
}

/// Writes what `changes` create or replace: each file through a temporary
/// file renamed over it, so containerd never reads half a file.
pub fn apply(changes: &[Change]) -> io::Result<()> {
    for c in changes {
        let (Change::Create { path, text } | Change::Replace { path, text }) = c else {
            continue;
        };
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let parent = path.parent().expect("a hosts.toml has a directory");
        std::fs::create_dir_all(parent).map_err(named)?;
        let tmp = parent.join(".hosts.toml.ferry-tmp");
        std::fs::write(&tmp, text).map_err(named)?;
        std::fs::rename(&tmp, path).map_err(named)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Overrides};

    fn config() -> Config {
        let text = r#"{"extensions": {"sync": {"registries": [
              {"urls": ["https://registry-1.docker.io"]},
              {"urls": ["https://ghcr.io"]},
              {"urls": ["http://registry.local:5001"]},
              {"urls": ["https://mirror.example"], "mirrorOf": "quay.io"}
            ]}}}"#;
        Config::resolve(FileConfig::parse(text).unwrap(), &Overrides::default()).unwrap()
    }

    fn mirror() -> Mirror {
        Mirror::parse("http://127.0.0.1:30500", None).unwrap()
    }

    #[test]
    fn one_file_per_routed_registry_keeping_the_registry_as_server() {
        let files = hosts_files(&config(), &mirror(), true).unwrap();
        let hosts: Vec<&str> = files.iter().map(|f| f.host.as_str()).collect();
        assert_eq!(
            hosts,
            [
                "docker.io",
                "ghcr.io",
                "registry.local:5001",
                "quay.io",
                "_default"
            ]
        );
        let hub = &files[0].text;
        assert!(hub.starts_with(MARKER), "{hub}");
        assert!(
            hub.contains("server = \"https://registry-1.docker.io\"\n"),
            "{hub}"
        );
        assert!(
            hub.contains(
                "[host.\"http://127.0.0.1:30500\"]\n  capabilities = [\"pull\", \"resolve\"]"
            ),
            "{hub}"
        );
        assert!(files[2]
            .text
            .contains("server = \"http://registry.local:5001\""));
        assert!(
            files[3].text.contains("server = \"https://quay.io\""),
            "mirrorOf names it"
        );
        assert!(
            !files[4].text.contains("server ="),
            "_default has no server"
        );
        // What containerd reads: valid TOML with the keys it expects.
        for f in &files {
            let t: toml::Table = f.text.parse().unwrap();
            let host = t["host"]["http://127.0.0.1:30500"].as_table().unwrap();
            assert_eq!(host["capabilities"].as_array().unwrap().len(), 2);
        }
    }

    #[test]
    fn a_second_run_changes_nothing_and_other_files_are_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_path_buf();
        std::fs::create_dir_all(d.join("ghcr.io")).unwrap();
        let mine = "server = \"https://ghcr.io\"\n";
        std::fs::write(d.join("ghcr.io/hosts.toml"), mine).unwrap();
        let files = hosts_files(&config(), &mirror(), false).unwrap();
        let first = plan(&d, &files, false).unwrap();
        assert_eq!(first.iter().filter(|c| c.writes()).count(), 3);
        assert!(first.contains(&Change::NotOurs {
            path: d.join("ghcr.io/hosts.toml")
        }));
        apply(&first).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("ghcr.io/hosts.toml")).unwrap(),
            mine
        );
        let second = plan(&d, &files, false).unwrap();
        assert!(second.iter().all(|c| !c.writes()), "{second:?}");
        // --force replaces someone else's file too.
        let forced = plan(&d, &files, true).unwrap();
        assert_eq!(forced.iter().filter(|c| c.writes()).count(), 1);
    }

    #[test]
    fn a_new_mirror_replaces_ferrys_files_and_a_dropped_registry_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_path_buf();
        apply(&plan(&d, &hosts_files(&config(), &mirror(), true).unwrap(), false).unwrap())
            .unwrap();
        let other = Mirror::parse(
            "https://ferry.example:5443/",
            Some("/etc/ferry/ca.crt".into()),
        )
        .unwrap();
        let changes = plan(&d, &hosts_files(&config(), &other, false).unwrap(), false).unwrap();
        assert_eq!(
            changes
                .iter()
                .filter(|c| matches!(c, Change::Replace { .. }))
                .count(),
            4
        );
        assert!(changes.contains(&Change::Stale {
            path: d.join("_default/hosts.toml")
        }));
        apply(&changes).unwrap();
        let hub = std::fs::read_to_string(d.join("docker.io/hosts.toml")).unwrap();
        assert!(
            hub.contains("[host.\"https://ferry.example:5443\"]"),
            "{hub}"
        );
        assert!(hub.contains("ca = \"/etc/ferry/ca.crt\""), "{hub}");
        let odd = Mirror::parse("https://x", Some("/etc/a\"b.crt".into())).unwrap();
        let t: toml::Table = text(None, &odd).parse().unwrap();
        assert_eq!(
            t["host"]["https://x"]["ca"].as_str(),
            Some("/etc/a\"b.crt"),
            "escaped"
        );
    }

    #[test]
    fn a_registry_name_that_is_no_directory_is_refused() {
        let mut checked = Vec::new();
        for name in ["..", "_default", ".hidden"] {
            let text = format!(
                r#"{{"extensions": {{"sync": {{"registries": [
                {{"urls": ["https://r.example"], "mirrorOf": "{name}"}}]}}}}}}"#
            );
            let Ok(c) = Config::resolve(FileConfig::parse(&text).unwrap(), &Overrides::default())
            else {
                continue; // refused by the config already
            };
            assert!(hosts_files(&c, &mirror(), false).is_err(), "{name}");
            checked.push(name);
        }
        assert!(checked.contains(&".."), "the config takes {checked:?}");
    }

    #[test]
    fn a_mirror_is_an_address_with_no_path() {
        assert!(Mirror::parse("127.0.0.1:5000", None).is_err());
        assert!(Mirror::parse("ftp://x", None).is_err());
        assert!(Mirror::parse("http://x:5000/v2", None).is_err());
        assert!(Mirror::parse("http://x:5000", Some("ca".into())).is_err());
        assert!(Mirror::parse("http://u:p@x:5000", None).is_err());
        let ca = Mirror::parse("https://x", Some("a\"b.crt".into())).unwrap();
        assert!(ca.ca.unwrap().is_absolute());
        assert_eq!(mirror().url, "http://127.0.0.1:30500");
    }
}
