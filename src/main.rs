//! The `ferry` command: `ferry serve` runs the cache, `ferry check-config`
//! validates a config file and prints the routing table.
//!
//! Configuration comes from `--config FILE` (default `config.example.json`
//! when that file exists, else the built-in defaults), then `--listen`,
//! `--storage` and `--upstream` override it, so
//! `ferry serve --upstream https://registry-1.docker.io` needs no file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry::config::{Config, Overrides};
use ferry::Server;
use tracing_subscriber::EnvFilter;

mod commands;

const DEFAULT_CONFIG: &str = "config.example.json";

/// `--log-format json`.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "A streaming pull-through cache for OCI container registries"
)]
struct Cli {
    /// Log format: `text` (human) or `json` (one object per line, for collectors).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the cache.
    Serve {
        /// Config file (JSON, zot's shape). Default: config.example.json if present.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:5000, or http.address
        /// and http.port from the config file].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Storage root directory [default: ./data, or
        /// storage.rootDirectory from the config file].
        #[arg(long)]
        storage: Option<PathBuf>,
        /// Upstream registry URL, replacing the config file's registries
        /// [default: https://registry-1.docker.io].
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Pull images into the cache ahead of time (every platform).
    Prefetch {
        /// Config file (as for serve).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Storage root directory.
        #[arg(long)]
        storage: Option<PathBuf>,
        /// Upstream registry URL.
        #[arg(long)]
        upstream: Option<String>,
        /// Blobs fetched at once.
        #[arg(long, default_value_t = ferry::prefetch::DEFAULT_PARALLEL)]
        parallel: usize,
        /// Images: [registry-host/]name[:tag|@digest].
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Re-hash every stored blob and manifest once, repairing damage; exits
    /// non-zero when something was damaged. Run it with ferry stopped or
    /// running: it only removes files that fail their digest.
    Scrub {
        /// Config file (as for serve).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Storage root directory.
        #[arg(long)]
        storage: Option<PathBuf>,
        /// Move damaged files to <storage>/quarantine instead of deleting.
        #[arg(long)]
        quarantine: bool,
    },
    /// Warm images on a running ferry (its operations API): waits until
    /// every blob is stored; exit 0 only then.
    Prewarm(commands::prewarm::Args),
    /// Wire a node's container runtime to this ferry.
    Configure {
        #[command(subcommand)]
        runtime: Runtime,
    },
    /// Validate a config file as `serve` would load it (its TLS files,
    /// htpasswd and certDir included) and print every effective setting
    /// and the routing table.
    CheckConfig {
        /// Config file to check.
        file: Option<PathBuf>,
        /// Config file to check (as for serve).
        #[arg(long = "config", short = 'c', conflicts_with = "file")]
        config: Option<PathBuf>,
        /// Also ask each upstream URL's `/v2/` and say what answered.
        #[arg(long)]
        probe: bool,
    },
}

#[derive(Subcommand)]
enum Runtime {
    /// Write containerd's hosts.toml (certs.d) for every registry the
    /// config routes, keeping each registry as `server` (the fallback when
    /// ferry is down). Idempotent; prints what it changed.
    Containerd(commands::configure::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    JSON_LOGS.store(
        cli.log_format == "json",
        std::sync::atomic::Ordering::Relaxed,
    );
    match cli.command {
        Command::Scrub {
            config,
            storage,
            quarantine,
        } => {
            let overrides = Overrides {
                storage,
                ..Overrides::default()
            };
            match setup(config.as_deref(), &overrides) {
                Ok(config) => scrub(&config, quarantine),
                Err(code) => code,
            }
        }
        Command::Prefetch {
            config,
            storage,
            upstream,
            parallel,
            images,
        } => {
            let overrides = Overrides {
                listen: None,
                storage,
                upstream,
            };
            match setup(config.as_deref(), &overrides) {
                Ok(config) => runtime().block_on(prefetch(config, images, parallel)),
                Err(code) => code,
            }
        }
        Command::Prewarm(args) => runtime().block_on(commands::prewarm::run(args)),
        Command::Configure {
            runtime: Runtime::Containerd(args),
        } => commands::configure::containerd(args, |path| {
            load(path, &Overrides::default()).map_err(|e| e.to_string())
        }),
        Command::CheckConfig {
            file,
            config,
            probe,
        } => {
            let Some(file) = file.or(config) else {
                eprintln!("ferry: check-config needs a config file: ferry check-config FILE");
                return ExitCode::from(2);
            };
            match commands::check::check_config(&file, probe) {
                Ok((out, failed)) => {
                    // A closed pipe (`| head`) is not an error worth a panic.
                    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
                    // A failed probe fails the check, so it can gate a
                    // deployment.
                    if failed > 0 {
                        eprintln!(
                            "ferry: {}: {failed} upstream probe(s) failed",
                            file.display()
                        );
                        return ExitCode::FAILURE;
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ferry: {}: {e}", file.display());
                    ExitCode::from(2)
                }
            }
        }
        Command::Serve {
            config,
            listen,
            storage,
            upstream,
        } => {
            let overrides = Overrides {
                listen,
                storage,
                upstream,
            };
            let config = match setup(config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match runtime().block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Logging is set up by now: one line, where the logs go.
                    tracing::error!(error = %e, "ferry stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Loads the config and starts logging, or says why not (exit code 2).
fn setup(path: Option<&std::path::Path>, overrides: &Overrides) -> Result<Config, ExitCode> {
    match load(path, overrides) {
        Ok(c) => {
            init_logging(c.log_level.as_deref());
            match path {
                Some(p) => tracing::info!(file = %p.display(), "config loaded"),
                None if std::path::Path::new(DEFAULT_CONFIG).exists() => tracing::info!(
                    file = DEFAULT_CONFIG,
                    "config loaded (no --config given; found in the current directory)"
                ),
                None => tracing::info!("no config file: built-in defaults and flags"),
            }
            Ok(c)
        }
        Err(e) => {
            eprintln!("ferry: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `--config FILE`, else `config.example.json` if present, else defaults.
fn load(
    path: Option<&std::path::Path>,
    overrides: &Overrides,
) -> Result<Config, ferry::config::ConfigError> {
    match path {
        Some(path) => Config::load(path, overrides),
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
            Config::load(DEFAULT_CONFIG.as_ref(), overrides)
        }
        None => Config::defaults(overrides),
    }
}

fn scrub(config: &Config, quarantine: bool) -> ExitCode {
    use std::io::IsTerminal;
    let root = &config.storage_root;
    if !ferry::store::FsStore::is_store(root) {
        eprintln!(
            "ferry: {} is not a ferry store (no blobs/ folder)",
            root.display()
        );
        return ExitCode::from(2);
    }
    let from_config = config.lifecycle.scrub;
    let options = ferry::lifecycle::ScrubOptions {
        rate: from_config.and_then(|s| s.rate),
        quarantine: quarantine || from_config.is_some_and(|s| s.quarantine),
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "scrub [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b
    });
    let progress = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    };
    let store = match ferry::store::FsStore::open(root) {
        Ok((store, _)) => store,
        Err(e) => {
            eprintln!("ferry: cannot open the store {}: {e}", root.display());
            return ExitCode::from(2);
        }
    };
    let report = ferry::lifecycle::scrub::scrub(&store, options, &progress);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    println!(
        "scrubbed {}: {} blobs, {} manifests, {} bytes; {} damaged ({}), {} unreadable",
        root.display(),
        report.blobs_checked,
        report.manifests_checked,
        report.bytes_read,
        report.damaged.len(),
        report.action,
        report.errors.len()
    );
    for d in &report.damaged {
        println!("damaged  {d}");
    }
    for e in &report.errors {
        println!("error    {e}");
    }
    if report.damaged.is_empty() && report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn prefetch(config: Config, images: Vec<String>, parallel: usize) -> ExitCode {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    use std::collections::HashMap;
    use std::io::IsTerminal;
    use std::sync::Mutex;

    let app = match ferry::App::new(config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ferry: {e}");
            return ExitCode::FAILURE;
        }
    };
    let terminal = std::io::stderr().is_terminal();
    let multi = BARS.get_or_init(MultiProgress::new).clone();
    let bars: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
    let style =
        ProgressStyle::with_template("{msg:20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template")
            .progress_chars("=> ");
    // One overall line at the bottom: blobs done of all, bytes, rate.
    let overall = terminal.then(|| {
        let b = multi.add(ProgressBar::new(0));
        b.set_style(
            ProgressStyle::with_template(
                "{prefix} {pos} of {len} blobs [{bar:30}] {percent}%  {msg}  {elapsed}, eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b
    });
    let fetched = std::sync::atomic::AtomicU64::new(0);
    let mut failed = false;
    for image in &images {
        if let Some(o) = &overall {
            o.set_prefix(image.clone());
        }
        let on_event = |e: ferry::prefetch::Event| {
            use ferry::prefetch::Event;
            let short = |d: &ferry::oci::Digest| d.hex()[..12].to_string();
            match e {
                Event::Planned { blobs, .. } => {
                    if let Some(o) = &overall {
                        o.inc_length(blobs as u64);
                    }
                }
                Event::Started { digest, size } if terminal => {
                    // Per-blob bars go above the overall line.
                    let bar = match &overall {
                        Some(o) => multi.insert_before(o, ProgressBar::new(size.unwrap_or(0))),
                        None => multi.add(ProgressBar::new(size.unwrap_or(0))),
                    };
                    bar.set_style(style.clone());
                    bar.set_message(short(&digest));
                    bars.lock().unwrap().insert(digest.to_string(), bar);
                }
                Event::Progress { digest, bytes } => {
                    let total =
                        fetched.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed) + bytes;
                    if let Some(o) = &overall {
                        let secs = o.elapsed().as_secs_f64().max(0.001);
                        o.set_message(format!(
                            "{} fetched, {}/s",
                            indicatif::HumanBytes(total),
                            indicatif::HumanBytes((total as f64 / secs) as u64)
                        ));
                    }
                    if let Some(b) = bars.lock().unwrap().get(&digest.to_string()) {
                        b.inc(bytes);
                    }
                }
                Event::Done {
                    digest,
                    size,
                    cached,
                } => {
                    if let Some(o) = &overall {
                        o.inc(1);
                    }
                    if let Some(b) = bars.lock().unwrap().remove(&digest.to_string()) {
                        b.finish_and_clear();
                    } else if overall.is_none() {
                        let what = if cached { "already cached" } else { "fetched" };
                        tracing::info!(%image, %digest, bytes = size, "blob {what}");
                    }
                }
                _ => {}
            }
        };
        let done = ferry::prefetch::prefetch_with(&app, image, parallel, &on_event).await;
        let say = |line: String| match &overall {
            Some(_) => multi.println(line).unwrap_or_default(),
            None => println!("{line}"),
        };
        match done {
            Ok(r) => say(format!(
                "{image}: {} manifests, {} blobs ({} already cached), {} bytes fetched",
                r.manifests, r.blobs, r.blobs_already_cached, r.bytes_fetched
            )),
            Err(e) => {
                say(format!("ferry: prefetch {image}: {e}"));
                failed = true;
            }
        }
    }
    if let Some(o) = overall {
        o.finish_and_clear();
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn serve(config: Config) -> Result<(), ferry::Error> {
    for w in &config.warnings {
        tracing::warn!("config: {w}");
    }
    let upstream = config
        .registries
        .iter()
        .map(|r| r.urls[0].to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let storage = config.storage_root.display().to_string();
    match ferry::listener::raise_open_file_limit() {
        Ok(n) => tracing::debug!(open_files = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    let server = Server::bind(config).await?;
    tracing::info!(listen = %server.local_addr(), %upstream, %storage, "ferry is serving");
    Ok(server.run(shutdown_signal()).await?)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => tracing::info!("interrupt received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

fn init_logging(config_level: Option<&str>) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(config_level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stdout().is_terminal())
            .with_writer(|| AboveBars)
            .init();
    }
}

/// Progress bars on the terminal (`ferry prefetch`, `ferry scrub`), once
/// drawn: log lines are printed above them instead of through them.
static BARS: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();

/// Standard output, with the progress bars (if any) hidden while a line is
/// written and redrawn below it.
struct AboveBars;

impl std::io::Write for AboveBars {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match BARS.get() {
            Some(bars) => bars.suspend(|| std::io::stdout().write(buf)),
            None => std::io::stdout().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}
