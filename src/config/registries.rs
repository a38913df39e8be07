//! zot's `extensions.sync.registries`, resolved: every registry's URLs,
//! retries, credentials, TLS, content rules, freshness and `mirrorOf`
//! settled, and the warnings about the list as a whole (an empty list, a
//! repeated registry, two registries answering to one name).

use super::file::*;
use super::{
    parse_duration, parse_upstream_url, ConfigError, ContentRule, Freshness, RegistryConfig,
    RetryPolicy, DEFAULT_UPSTREAM,
};

pub(super) fn registries_from(
    ext: Option<&Extensions>,
    warnings: &mut Vec<String>,
) -> Result<Vec<RegistryConfig>, ConfigError> {
    let Some(sync) = ext.and_then(|e| e.sync.as_ref()) else {
        return Ok(vec![RegistryConfig::single(parse_upstream_url(
            DEFAULT_UPSTREAM,
        )?)]);
    };
    if sync.enable == Some(false) {
        return Err(ConfigError(
            "extensions.sync.enable is false: a pull-through cache needs an upstream".into(),
        ));
    }
    if sync.registries.is_empty() {
        warnings.push(format!(
            "extensions.sync.registries is empty: ferry mirrors {DEFAULT_UPSTREAM}, the default"
        ));
        return Ok(vec![RegistryConfig::single(parse_upstream_url(
            DEFAULT_UPSTREAM,
        )?)]);
    }
    let file_credentials = match &sync.credentials_file {
        Some(p) => super::read_credentials_file(p)
            .map_err(|e| ConfigError(format!("extensions.sync.credentialsFile: {e}")))?,
        None => Default::default(),
    };
    if sync.download_dir.is_some() {
        warnings.push("extensions.sync.downloadDir is ignored: ferry downloads into storage.rootDirectory/tmp".into());
    }
    let mut out = Vec::new();
    for (i, r) in sync.registries.iter().enumerate() {
        let at = |key: &str| format!("extensions.sync.registries[{i}].{key}");
        if r.urls.is_empty() {
            return Err(ConfigError(format!(
                "{}: at least one URL is needed",
                at("urls")
            )));
        }
        let mut urls = Vec::new();
        for (j, u) in r.urls.iter().enumerate() {
            urls.push(
                parse_upstream_url(u)
                    .map_err(|e| ConfigError(format!("{}[{j}]: {e}", at("urls"))))?,
            );
        }
        let dur =
            |key: &str, v: &Option<String>| -> Result<Option<std::time::Duration>, ConfigError> {
                v.as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(|e| ConfigError(format!("{}: {e}", at(key))))
            };
        let d = RetryPolicy::default();
        let delay = dur("retryDelay", &r.retry_delay)?.unwrap_or(d.delay);
        let retry = RetryPolicy {
            max_retries: r.max_retries.unwrap_or(d.max_retries),
            delay,
            max_delay: dur("maxRetryDelay", &r.max_retry_delay)?.unwrap_or(d.max_delay.max(delay)),
        };
        let mirror_of = r
            .mirror_of
            .as_deref()
            .map(|v| {
                parse_mirror_of(v).map_err(|e| ConfigError(format!("{}: {e}", at("mirrorOf"))))
            })
            .transpose()?;
        let poll_interval = dur("pollInterval", &r.poll_interval)?;
        if poll_interval.is_some() && r.content.as_ref().is_none_or(|c| c.is_empty()) {
            warnings.push(format!(
                "{}: periodic sync needs content rules to know what to pull; nothing will be synced",
                at("pollInterval")
            ));
        }
        if r.only_signed.is_some() {
            warnings.push(format!(
                "{}: signature checks are not built; ignored",
                at("onlySigned")
            ));
        }
        if r.on_demand == Some(false) {
            warnings.push(format!(
                "{}: false is ignored; ferry always fetches on demand",
                at("onDemand")
            ));
        }
        let tls_verify = r.tls_verify.unwrap_or(true);
        if r.tls_verify.is_some() && urls.iter().all(|u| u.scheme_str() == Some("http")) {
            warnings.push(format!(
                "{}: has no effect: {} is plain HTTP",
                at("tlsVerify"),
                urls[0]
            ));
        }
        if !tls_verify {
            warnings.push(format!(
                "{}: false: certificates of {} are not checked",
                at("tlsVerify"),
                urls[0]
            ));
        }
        if let Some(dir) = &r.cert_dir {
            if !dir.is_dir() {
                return Err(ConfigError(format!(
                    "{}: {} is not a directory",
                    at("certDir"),
                    dir.display()
                )));
            }
        }
        let credentials = r.credentials.clone().or_else(|| {
            urls.iter().find_map(|u| {
                let host = u.host().unwrap_or_default().to_ascii_lowercase();
                let key = super::host_key(u);
                // Docker Hub goes by several names; any of them will do.
                let aliases: &[&str] = if super::DOCKER_HUB_HOSTS.contains(&host.as_str()) {
                    super::DOCKER_HUB_HOSTS
                } else {
                    &[]
                };
                file_credentials
                    .get(&key)
                    .or_else(|| file_credentials.get(&host))
                    .or_else(|| aliases.iter().find_map(|a| file_credentials.get(*a)))
                    .cloned()
            })
        });
        let mut content = Vec::new();
        for (k, c) in r.content.iter().flatten().enumerate() {
            let prefix = c.prefix.trim_matches('/').to_string();
            if prefix.is_empty() {
                return Err(ConfigError(format!(
                    "{}[{k}].prefix is empty",
                    at("content")
                )));
            }
            if let Some(re) = c.tags.as_ref().and_then(|t| t.regex.as_deref()) {
                regex::Regex::new(re)
                    .map_err(|e| ConfigError(format!("{}[{k}].tags.regex: {e}", at("content"))))?;
            }
            content.push(ContentRule {
                tags: c.tags.clone(),
                prefix,
                destination: c
                    .destination
                    .as_deref()
                    .map(|d| d.trim_matches('/').to_string())
                    .filter(|d| !d.is_empty()),
                strip_prefix: c.strip_prefix.unwrap_or(false),
            });
        }
        let f = Freshness::default();
        let freshness = Freshness {
            tag_ttl: dur("tagTTL", &r.tag_ttl)?.unwrap_or(f.tag_ttl),
            max_stale: dur("maxStale", &r.max_stale)?,
            serve_stale_on_not_found: r.serve_stale_on_not_found.unwrap_or(false),
            referrers_ttl: dur("referrersTTL", &r.referrers_ttl)?.unwrap_or(f.referrers_ttl),
        };
        out.push(RegistryConfig {
            urls,
            content,
            tls_verify,
            cert_dir: r.cert_dir.clone(),
            retry,
            freshness,
            credentials,
            poll_interval,
            mirror_of,
            token_realms: r
                .token_realms
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        });
    }
    for (i, r) in out.iter().enumerate() {
        let hosts = r.client_hosts();
        let shared = out[..i].iter().enumerate().find_map(|(j, o)| {
            let host = o.client_hosts().into_iter().find(|h| hosts.contains(h))?;
            Some((j, host))
        });
        if let Some(j) = out[..i]
            .iter()
            .position(|o| o.urls == r.urls && o.content == r.content)
        {
            warnings.push(format!(
                "extensions.sync.registries[{i}] repeats registries[{j}] ({}): it is never asked first",
                r.urls[0]
            ));
        } else if let Some((j, host)) = shared {
            warnings.push(format!(
                "extensions.sync.registries[{i}] answers to {host} as registries[{j}] does: ns={host} and path-style requests go to registries[{j}] only (to fail over, list both URLs in one registry)"
            ));
        }
    }
    Ok(out)
}

/// `mirrorOf`: a registry's `host[:port]` as clients name it, without a
/// scheme, path or user.
fn parse_mirror_of(v: &str) -> Result<String, String> {
    let raw = v.trim().to_ascii_lowercase();
    let parsed = (!raw.contains(['/', '@', '?', '#']))
        .then(|| raw.parse::<http::uri::Authority>().ok())
        .flatten()
        .filter(|a| !a.host().is_empty())
        // A port, if written, is a number that fits (not "docker.io:").
        .filter(|a| a.as_str() == a.host() || a.port_u16().is_some());
    if let Some(a) = parsed {
        Ok(match a.port_u16() {
            Some(p) => format!("{}:{p}", a.host()),
            None => a.host().to_string(),
        })
    } else {
        Err(format!(
            "{v:?} is not a registry host; write it as clients name it, e.g. \"docker.io\" or \"registry.local:5000\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, FileConfig, Overrides};

    #[test]
    fn mirror_of_names_the_registry_clients_ask_for() {
        let text = r#"{"extensions": {"sync": {"registries": [
            {"urls": ["https://mirror.gcr.io"], "mirrorOf": "Docker.io"}]}}}"#;
        let c = Config::resolve(FileConfig::parse(text).unwrap(), &Overrides::default()).unwrap();
        assert_eq!(c.registries[0].mirror_of.as_deref(), Some("docker.io"));
        assert_eq!(c.registries[0].client_name(), "docker.io");
        // It answers to Docker Hub's names, so a second Docker Hub entry
        // would never be chosen by ns=: a warning says so.
        let text = r#"{"extensions": {"sync": {"registries": [
            {"urls": ["https://mirror.gcr.io"], "mirrorOf": "docker.io"},
            {"urls": ["https://registry-1.docker.io"]}]}}}"#;
        let c = Config::resolve(FileConfig::parse(text).unwrap(), &Overrides::default()).unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("registries[1] answers to docker.io as registries[0]")),
            "{:?}",
            c.warnings
        );
        for bad in [
            "https://docker.io",
            "docker.io/library",
            "",
            "user@host",
            "docker.io:",
            "docker.io:abc",
            ":5000",
            "registry.local:99999",
        ] {
            let text = format!(
                r#"{{"extensions": {{"sync": {{"registries": [{{"urls": ["https://m.example"], "mirrorOf": "{bad}"}}]}}}}}}"#
            );
            let e = Config::resolve(FileConfig::parse(&text).unwrap(), &Overrides::default())
                .unwrap_err();
            assert!(e.0.contains("registries[0].mirrorOf"), "{bad}: {e}");
        }
    }
}
