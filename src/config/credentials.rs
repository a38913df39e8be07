//! Upstream credentials: zot's `credentialsFile`
//! (`{"host[:port]": {"username": "...", "password": "..."}}`) and ferry's
//! per-registry `credentials` key. Passwords are wrapped in [`Secret`],
//! whose `Debug` and `Display` never show them.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

/// A string that must never reach a log.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A username and password for one registry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl Credentials {
    /// The `Authorization: Basic` value.
    pub fn basic_header(&self) -> String {
        use base64::Engine;
        let raw = format!("{}:{}", self.username, self.password.expose());
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Reads a zot credentials file: host[:port] → credentials.
pub fn read_credentials_file(
    path: &Path,
) -> Result<HashMap<String, Credentials>, super::ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read credentials file {}: {e}", path.display()))?;
    let map: HashMap<String, Credentials> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "credentials file {} is not {{\"host\": {{\"username\", \"password\"}}}}: {e}",
            path.display()
        )
    })?;
    Ok(map
        .into_iter()
        .map(|(host, c)| (host.trim_end_matches('/').to_ascii_lowercase(), c))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let c = Credentials {
            username: "bob".into(),
            password: Secret::new("hunter2"),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("bob"));
        assert_eq!(c.basic_header(), "Basic Ym9iOmh1bnRlcjI=");
    }

    #[test]
    fn reads_zot_credentials_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("creds.json");
        std::fs::write(
            &p,
            r#"{"Registry.Example:5000": {"username": "u", "password": "p"}}"#,
        )
        .unwrap();
        let m = read_credentials_file(&p).unwrap();
        assert_eq!(m["registry.example:5000"].username, "u");
        std::fs::write(&p, r#"{"h": {"user": "u"}}"#).unwrap();
        assert!(read_credentials_file(&p).is_err());
    }
}
