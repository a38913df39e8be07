//! Does containerd read the hosts directory? Its `config.toml` must point
//! the CRI plugin's registry `config_path` at it (containerd only reads
//! `certs.d` when told to), and a `config_path` cannot sit beside the
//! old inline `mirrors` or TLS `configs` (containerd refuses that).
//! The layouts differ by version:
//!
//! - `version = 1` or none (old containerd 1.x): `[plugins.cri.registry]`
//! - `version = 2` (containerd 1.x, also read by 2.x):
//!   `[plugins."io.containerd.grpc.v1.cri".registry]`
//! - `version = 3` (containerd 2.x):
//!   `[plugins."io.containerd.cri.v1.images".registry]`
//!
//! containerd 2.x also pulls through its transfer service (`ctr image
//! pull` without `--local`; CRI pulls from 2.1 on unless
//! `use_local_image_pull = true`), which reads its own `config_path` under
//! `[plugins."io.containerd.transfer.v1.local"]` and takes it as one
//! directory (the CRI's local mode splits a `:` list). [`check`] says all
//! of this as [`Finding`]s with the exact lines to add.

use std::path::Path;

/// What [`check`] found; `Missing` and `Elsewhere` mean containerd will
/// not read the hosts written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The CRI plugin reads the hosts directory.
    Reads { table: String },
    /// No `config_path`: the lines to add.
    Missing { add: String },
    /// `config_path` names other directories: the line to change.
    Elsewhere {
        table: String,
        found: String,
        set: String,
    },
    /// Inline mirrors or configs beside `config_path`.
    Conflict { table: String, keys: Vec<String> },
    /// What containerd 2.x's transfer service ignores or needs.
    Transfer(String),
    /// `imports`: other files may set what this one does not.
    Imports(Vec<String>),
}

impl Finding {
    /// True when containerd will not use the hosts directory as configured.
    pub fn blocks(&self) -> bool {
        matches!(
            self,
            Finding::Missing { .. } | Finding::Elsewhere { .. } | Finding::Conflict { .. }
        )
    }

    /// One paragraph for people.
    pub fn describe(&self, file: &Path) -> String {
        let f = file.display();
        match self {
            Finding::Reads { table } => format!("ok: {f} reads the hosts directory ([{table}] config_path)"),
            Finding::Missing { add } => format!(
                "{f}: containerd does not read the hosts directory. Add these lines, then restart containerd once:\n{add}"
            ),
            Finding::Elsewhere { table, found, set } => format!(
                "{f}: [{table}] config_path = {found:?} does not include the hosts directory. Change it to:\n  config_path = {set:?}\nthen restart containerd once"
            ),
            Finding::Conflict { table, keys } => format!(
                "{f}: [{table}] has config_path and the inline {}: containerd refuses both; move them into hosts.toml files and remove them",
                keys.join(" and ")
            ),
            Finding::Transfer(why) => format!("warning: {f}: {why}"),
            Finding::Imports(files) => format!(
                "note: {f} imports {}: a setting there overrides this file (not read here)",
                files.join(", ")
            ),
        }
    }
}

/// Checks containerd's config `text` against the hosts directory `dir`.
pub fn check(text: &str, dir: &Path) -> Result<Vec<Finding>, String> {
    let doc: toml::Table = text.parse().map_err(|e| format!("not TOML: {e}"))?;
    let version = doc.get("version").and_then(|v| v.as_integer()).unwrap_or(1);
    let dir = dir.to_string_lossy().into_owned();
    let (cri, quote) = match version {
        3 => ("io.containerd.cri.v1.images", "'"),
        2 => ("io.containerd.grpc.v1.cri", "\""),
        // Version 1 (also a file without `version`): containerd 1.5+ reads
        // config_path there too.
        1 => ("cri", ""),
        v => {
            return Err(format!(
                "config version {v}: ferry knows versions 1, 2 and 3"
            ))
        }
    };
    let table = format!("plugins.{quote}{cri}{quote}.registry");
    let mut out = Vec::new();
    let registry = doc
        .get("plugins")
        .and_then(|p| p.get(cri))
        .and_then(|c| c.get("registry"))
        .and_then(|r| r.as_table());
    match registry
        .and_then(|r| r.get("config_path"))
        .and_then(|p| p.as_str())
    {
        Some(path) if path.split(':').any(|p| same_dir(p, &dir)) => {
            out.push(Finding::Reads {
                table: table.clone(),
            });
            if path.contains(':') && version == 3 {
                out.push(Finding::Transfer(format!(
                    "config_path = {path:?} is a list; containerd 2.x's transfer service takes it as one directory (set it to {dir:?} alone if pulls ignore the hosts)"
                )));
            }
        }
        // containerd's default writes `config_path = ""`: not set.
        None | Some("") => out.push(Finding::Missing {
            add: format!("[{table}]\n  config_path = {dir:?}"),
        }),
        Some(path) => out.push(Finding::Elsewhere {
            table: table.clone(),
            found: path.to_string(),
            set: dir.clone(),
        }),
    }
    // containerd refuses `mirrors`, and TLS in `configs`, beside a
    // config_path (credentials in `configs.<host>.auth` are fine).
    let path_set = registry
        .and_then(|r| r.get("config_path"))
        .and_then(|p| p.as_str())
        .is_some_and(|p| !p.is_empty());
    if let (Some(r), true) = (registry, path_set) {
        let mut keys = Vec::new();
        if r.get("mirrors")
            .and_then(|v| v.as_table())
            .is_some_and(|t| !t.is_empty())
        {
            keys.push("mirrors".to_string());
        }
        let tls = r
            .get("configs")
            .and_then(|v| v.as_table())
            .is_some_and(|c| c.values().any(|h| h.get("tls").is_some()));
        if tls {
            keys.push("configs.<host>.tls".to_string());
        }
        if !keys.is_empty() {
            out.push(Finding::Conflict { table, keys });
        }
    }
    if version == 3 {
        let transfer = doc
            .get("plugins")
            .and_then(|p| p.get("io.containerd.transfer.v1.local"))
            .and_then(|t| t.get("config_path"))
            .and_then(|p| p.as_str());
        if !transfer.is_some_and(|p| same_dir(p, &dir)) {
            out.push(Finding::Transfer(format!(
                "containerd 2.x's transfer service (ctr image pull without --local; CRI pulls from 2.1 on unless use_local_image_pull = true) reads its own config_path and ignores the CRI's; to have it use ferry too, add:\n[plugins.'io.containerd.transfer.v1.local']\n  config_path = {dir:?}"
            )));
        }
    }
    if let Some(imports) = doc.get("imports").and_then(|i| i.as_array()) {
        let files: Vec<String> = imports
            .iter()
            .filter_map(|i| i.as_str())
            .map(String::from)
            .collect();
        if !files.is_empty() {
            out.push(Finding::Imports(files));
        }
    }
    Ok(out)
}

/// `a` and `b` name the same directory, a trailing `/` aside.
fn same_dir(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = "/etc/containerd/certs.d";

    fn blocks(text: &str) -> Vec<Finding> {
        check(text, Path::new(DIR)).unwrap()
    }

    #[test]
    fn containerd_1_layout_with_and_without_config_path() {
        let ok = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d/\"\n";
        assert_eq!(
            blocks(ok),
            [Finding::Reads {
                table: "plugins.\"io.containerd.grpc.v1.cri\".registry".into()
            }]
        );
        let none = blocks(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"pause\"\n",
        );
        let Finding::Missing { add } = &none[0] else {
            panic!("{none:?}")
        };
        assert_eq!(
            add,
            "[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\""
        );
        // The lines it says to add are what it then accepts.
        let fixed = format!("version = 2\n{add}\n");
        assert!(blocks(&fixed).iter().all(|f| !f.blocks()));
    }

    #[test]
    fn containerd_2_layout_and_its_transfer_service() {
        let cri_only = "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d'\n";
        let found = blocks(cri_only);
        assert!(found.iter().all(|f| !f.blocks()), "{found:?}");
        let Some(Finding::Transfer(why)) = found.iter().find(|f| matches!(f, Finding::Transfer(_)))
        else {
            panic!("{found:?}")
        };
        assert!(why.contains("[plugins.'io.containerd.transfer.v1.local']\n  config_path = \"/etc/containerd/certs.d\""), "{why}");
        let both = format!(
            "{cri_only}[plugins.'io.containerd.transfer.v1.local']\n  config_path = '{DIR}'\n"
        );
        assert_eq!(blocks(&both).len(), 1, "{:?}", blocks(&both));
        let none = blocks("version = 3\n");
        assert!(
            matches!(&none[0], Finding::Missing { add } if add.starts_with("[plugins.'io.containerd.cri.v1.images'.registry]"))
        );
    }

    #[test]
    fn another_directory_inline_mirrors_and_an_old_layout_are_named() {
        let other = blocks("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/docker/certs.d\"\n");
        assert!(
            matches!(&other[0], Finding::Elsewhere { found, .. } if found == "/etc/docker/certs.d")
        );
        let listed = blocks("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/docker/certs.d:/etc/containerd/certs.d\"\n");
        assert!(listed.iter().all(|f| !f.blocks()), "{listed:?}");
        let mirrors = blocks("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"http://x\"]\n");
        assert!(
            mirrors
                .iter()
                .any(|f| matches!(f, Finding::Conflict { keys, .. } if keys == &["mirrors"])),
            "{mirrors:?}"
        );
        // Version 1 (no `version`): plugins.cri.registry.
        let v1 = blocks("[plugins.cri.registry]\n  config_path = \"/etc/containerd/certs.d\"\n");
        assert!(
            matches!(&v1[0], Finding::Reads { table } if table == "plugins.cri.registry"),
            "{v1:?}"
        );
        let none = blocks("[plugins.cri]\n");
        assert!(
            matches!(&none[0], Finding::Missing { add } if add.starts_with("[plugins.cri.registry]")),
            "{none:?}"
        );
        assert!(check("version = 4\n", Path::new(DIR)).is_err());
        // Credentials in configs are fine beside config_path; TLS is not.
        let cri = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n";
        let auth = blocks(&format!("{cri}[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.example\".auth]\n  username = \"u\"\n"));
        assert!(auth.iter().all(|f| !f.blocks()), "{auth:?}");
        let tls = blocks(&format!("{cri}[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.example\".tls]\n  insecure_skip_verify = true\n"));
        assert!(
            tls.iter().any(|f| matches!(f, Finding::Conflict { .. })),
            "{tls:?}"
        );
        // An empty config_path is not set: missing, and no conflict.
        let empty = blocks("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"\"\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"http://x\"]\n");
        assert!(
            matches!(&empty[0], Finding::Missing { .. }) && empty.len() == 1,
            "{empty:?}"
        );
        assert!(check("not toml = = ", Path::new(DIR)).is_err());
    }
}
