//! Ready-to-paste client configuration for each registry, as `ferry
//! check-config` prints it: containerd's `hosts.toml`, podman's
//! `registries.conf` (with the `destination` form a registry with a port
//! needs), and Docker's `daemon.json` for Docker Hub.

use std::fmt::Write as _;

use super::{Config, RegistryConfig, DOCKER_HUB_HOSTS};

/// How containerd names a registry ferry routes: the `certs.d` directory
/// (`docker.io` for Docker Hub) and the registry itself as `server`, which
/// containerd falls back to when ferry is down or answers 404.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdHost {
    pub name: String,
    pub server: String,
}

/// [`ContainerdHost`] of `r`.
pub fn containerd_host(r: &RegistryConfig) -> ContainerdHost {
    let host = r.client_name();
    let docker_hub = DOCKER_HUB_HOSTS.contains(&host.as_str());
    let server = match (docker_hub, &r.mirror_of) {
        (true, _) => "https://registry-1.docker.io".to_string(),
        (false, Some(name)) => format!("https://{name}"),
        (false, None) => r.urls[0].to_string().trim_end_matches('/').to_string(),
    };
    let name = if docker_hub {
        "docker.io".to_string()
    } else {
        host
    };
    ContainerdHost { name, server }
}

/// The snippets for every registry of `c`.
pub fn client_snippets(c: &Config) -> String {
    let scheme = if c.tls.is_some() { "https" } else { "http" };
    let ferry = if c.listen.ip().is_unspecified() {
        format!("<ferry-host>:{}", c.listen.port())
    } else {
        c.listen.to_string()
    };
    let insecure = scheme == "http";
    let mut out = String::from("client snippets\n");
    for (i, r) in c.registries.iter().enumerate() {
        let host = r.client_name();
        let docker_hub = DOCKER_HUB_HOSTS.contains(&host.as_str());
        let ContainerdHost { name, server } = containerd_host(r);
        let _ = writeln!(out, "registry {i} ({name})");
        let _ = writeln!(
            out,
            "  containerd: /etc/containerd/certs.d/{name}/hosts.toml\n    server = \"{server}\"\n    [host.\"{scheme}://{ferry}\"]\n      capabilities = [\"pull\", \"resolve\"]"
        );
        let destination = r.content.iter().find_map(|c| c.destination.clone());
        let mirror = match (&destination, docker_hub, host.contains(':')) {
            (Some(d), _, _) => Some(format!("{ferry}/{}", d.trim_matches('/'))),
            (None, true, _) => Some(ferry.clone()),
            (None, false, false) => Some(format!("{ferry}/{host}")),
            // podman refuses a port inside a path component.
            (None, false, true) => None,
        };
        // Podman falls back to the registry itself when ferry is down: a
        // plain-HTTP registry needs `insecure` on its own entry too.
        let plain_upstream = !docker_hub
            && r.mirror_of.is_none()
            && r.urls[0].scheme() == Some(&http::uri::Scheme::HTTP);
        match mirror {
            Some(m) => {
                let _ = writeln!(
                    out,
                    "  podman: /etc/containers/registries.conf\n    [[registry]]\n    prefix = \"{name}\"\n    location = \"{name}\"{}\n    [[registry.mirror]]\n    location = \"{m}\"{}",
                    if plain_upstream { "\n    insecure = true" } else { "" },
                    if insecure { "\n    insecure = true" } else { "" }
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  podman: a registry with a port cannot be named in a mirror's path; give it \"content\": [{{\"prefix\": \"**\", \"destination\": \"/<local-prefix>\"}}] and use location = \"{ferry}/<local-prefix>\""
                );
            }
        }
        if docker_hub {
            let _ = writeln!(
                out,
                "  docker: /etc/docker/daemon.json\n    {{\"registry-mirrors\": [\"{scheme}://{ferry}\"]{}}}",
                if insecure { format!(", \"insecure-registries\": [\"{ferry}\"]") } else { String::new() }
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Overrides};

    #[test]
    fn docker_hub_another_registry_and_one_with_a_port() {
        let text = r#"{"http": {"address": "0.0.0.0", "port": "5000"},
            "extensions": {"sync": {"registries": [
              {"urls": ["https://ghcr.io"]},
              {"urls": ["http://registry.local:5001"]},
              {"urls": ["https://registry-1.docker.io"]}
            ]}}}"#;
        let c = Config::resolve(FileConfig::parse(text).unwrap(), &Overrides::default()).unwrap();
        let s = client_snippets(&c);
        assert!(s.contains("certs.d/ghcr.io/hosts.toml"), "{s}");
        assert!(s.contains("[host.\"http://<ferry-host>:5000\"]"), "{s}");
        assert!(
            s.contains("location = \"<ferry-host>:5000/ghcr.io\""),
            "{s}"
        );
        assert!(s.contains("cannot be named in a mirror's path"), "{s}");
        assert!(s.contains("certs.d/docker.io/hosts.toml"), "{s}");
        assert!(
            s.contains("\"registry-mirrors\": [\"http://<ferry-host>:5000\"]"),
            "{s}"
        );
        assert_eq!(
            s.matches("daemon.json").count(),
            1,
            "Docker mirrors Docker Hub only"
        );
    }

    #[test]
    fn a_plain_http_registry_is_insecure_for_podmans_fallback_too() {
        let text = r#"{"http": {"address": "127.0.0.1", "port": "5000"},
            "extensions": {"sync": {"registries": [
              {"urls": ["http://registry.local"]},
              {"urls": ["https://ghcr.io"]}
            ]}}}"#;
        let c = Config::resolve(FileConfig::parse(text).unwrap(), &Overrides::default()).unwrap();
        let s = client_snippets(&c);
        let entry = "[[registry]]\n    prefix = \"registry.local\"\n    location = \"registry.local\"\n    insecure = true\n    [[registry.mirror]]\n    location = \"127.0.0.1:5000/registry.local\"\n    insecure = true";
        assert!(s.contains(entry), "{s}");
        let https = "location = \"ghcr.io\"\n    [[registry.mirror]]";
        assert!(s.contains(https), "an HTTPS registry stays secure: {s}");
    }

    #[test]
    fn a_mirror_of_docker_hub_gets_docker_hubs_snippets() {
        let text = r#"{"http": {"address": "127.0.0.1", "port": "5000"},
            "extensions": {"sync": {"registries": [
              {"urls": ["https://mirror.gcr.io"], "mirrorOf": "docker.io"}
            ]}}}"#;
        let c = Config::resolve(FileConfig::parse(text).unwrap(), &Overrides::default()).unwrap();
        let s = client_snippets(&c);
        assert!(s.contains("certs.d/docker.io/hosts.toml"), "{s}");
        assert!(
            s.contains("server = \"https://registry-1.docker.io\""),
            "{s}"
        );
        assert!(s.contains("daemon.json"), "{s}");
        assert!(!s.contains("mirror.gcr.io"), "{s}");
    }
}
