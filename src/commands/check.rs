//! `ferry check-config`: the config loaded as `serve` would load it (TLS
//! files, htpasswd, certDir, the store), every effective setting, the
//! routing table and the client snippets; with `--probe`, each upstream's
//! `/v2/` asked as ferry would ask it.

use ferry::config::{Config, Overrides};

/// What `ferry check-config` prints and how many upstream probes failed,
/// or the first thing `serve` would refuse: the same loading, the same
/// TLS, htpasswd, certDir and store checks.
pub fn check_config(file: &std::path::Path, probe: bool) -> Result<(String, usize), String> {
    let config = Config::load(file, &Overrides::default()).map_err(|e| e.to_string())?;
    if let Some(tls) = &config.tls {
        let certs = ferry::listener::CertStore::load(tls).map_err(|e| e.to_string())?;
        certs.acceptor().map_err(|e| e.to_string())?;
    }
    if let Some(cluster) = &config.cluster {
        ferry::cluster::Cluster::client_tls(cluster).map_err(|e| e.to_string())?;
    }
    if let Some(access) = &config.access {
        ferry::access::Access::load(access).map_err(|e| e.to_string())?;
    }
    ferry::store::check_root(&config.storage_root).map_err(|e| e.to_string())?;
    let router = ferry::routing::Router::new(&config).map_err(|e| e.to_string())?;
    let mut out = format!(
        "{}: valid\nlisten   {}\nstorage  {}\n",
        file.display(),
        config.listen,
        config.storage_root.display()
    );
    for w in &config.warnings {
        out.push_str(&format!("warning  {w}\n"));
    }
    if let Some(c) = &config.cluster {
        out.push_str(&ferry::cluster::Cluster::describe(c));
    }
    out.push('\n');
    out.push_str(&ferry::config::settings(&config));
    out.push_str(&pins(&config, &router));
    out.push('\n');
    out.push_str(&router.describe());
    out.push('\n');
    out.push_str(&ferry::config::client_snippets(&config));
    let mut failed = 0;
    if probe {
        out.push('\n');
        let (probed, failures) = super::super::runtime().block_on(probe_upstreams(&router));
        out.push_str(&probed);
        failed = failures;
    }
    Ok((out, failed))
}

/// `GET /v2/` at every URL of every registry, as ferry would send it
/// (credentials, tokens, TLS and certDir included): what answered, and how
/// many did not answer as a registry does (200, or 401 with a challenge).
async fn probe_upstreams(router: &ferry::routing::Router) -> (String, usize) {
    let mut out = String::from("probe\n");
    let mut failed = 0;
    for r in router.registries() {
        for url in &r.config.urls {
            let one = ferry::upstream::Upstream::for_registry(
                &ferry::config::RegistryConfig {
                    urls: vec![url.clone()],
                    ..r.config.clone()
                },
                Default::default(),
                std::time::Duration::ZERO,
                Default::default(),
            );
            let line = match one {
                Err(e) => {
                    failed += 1;
                    format!("cannot build a client: {e}")
                }
                Ok(up) => {
                    let started = std::time::Instant::now();
                    let asked = up.request_now(http::Method::GET, "/v2/", http::HeaderMap::new());
                    match tokio::time::timeout(std::time::Duration::from_secs(15), asked).await {
                        Ok(Ok(resp)) => {
                            let status = resp.status();
                            if !(status.is_success() || status == http::StatusCode::UNAUTHORIZED) {
                                failed += 1;
                            }
                            let challenge = resp
                                .headers()
                                .get(http::header::WWW_AUTHENTICATE)
                                .and_then(|v| v.to_str().ok())
                                .map(|c| format!(", asks for {c}"))
                                .unwrap_or_default();
                            format!(
                                "{} in {} ms{challenge}",
                                resp.status(),
                                started.elapsed().as_millis()
                            )
                        }
                        Ok(Err(e)) => {
                            failed += 1;
                            format!("no answer: {e}")
                        }
                        Err(_) => {
                            failed += 1;
                            "no answer within 15 s".to_string()
                        }
                    }
                }
            };
            out.push_str(&format!(
                "  {} GET /v2/: {line}\n",
                url.to_string().trim_end_matches('/')
            ));
        }
    }
    (out, failed)
}

/// The pins against `maxSize`: what the store holds of each (read only;
/// nothing is fetched), and their share of the cap.
fn pins(config: &Config, router: &ferry::routing::Router) -> String {
    let pins = &config.lifecycle.pins;
    if pins.is_empty() {
        return String::new();
    }
    let size = |n: u64| bytesize::ByteSize(n).display().iec().to_string();
    let mut out = String::from("\npins (what the store holds of them now)\n");
    let store = ferry::store::FsStore::read_only(&config.storage_root);
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for pin in pins {
        match ferry::app::pins::stored(&store, router, pin, &mut seen) {
            Ok(s) => {
                total += s.bytes;
                out.push_str(&format!(
                    "  {:<40} {} stored, {}\n",
                    pin.image,
                    match s.references {
                        1 => "1 image".to_string(),
                        n => format!("{n} images"),
                    },
                    size(s.bytes)
                ));
            }
            Err(e) => out.push_str(&format!("  {:<40} does not route: {e}\n", pin.image)),
        }
    }
    match config.lifecycle.max_size {
        Some(max) => {
            out.push_str(&format!(
                "  in all {} of {} maxSize ({}%): eviction keeps them, so what clients pull must fit in the rest\n",
                size(total),
                size(max),
                total * 100 / max.max(1)
            ));
            if config.lifecycle.low_water().is_some_and(|low| total > low) {
                out.push_str("warning  the pinned images fill more than 90% of ferry.maxSize: eviction cannot make room below them\n");
            }
        }
        None => out.push_str(&format!("  in all {}; no maxSize\n", size(total))),
    }
    out
}
