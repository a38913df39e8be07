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

const DEFAULT_CONFIG: &str = "config.example.json";

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "A streaming pull-through cache for OCI container registries"
)]
struct Cli {
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
        /// Address to listen on, e.g. 127.0.0.1:5000.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Storage root directory.
        #[arg(long)]
        storage: Option<PathBuf>,
        /// Upstream registry URL, e.g. https://registry-1.docker.io.
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Validate a config file and print the resolved routing table.
    CheckConfig {
        /// Config file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file, &Overrides::default()) {
            Ok(config) => {
                println!("{}: valid", file.display());
                println!("listen   {}", config.listen);
                println!("storage  {}", config.storage_root.display());
                for w in &config.warnings {
                    println!("warning  {w}");
                }
                println!();
                print!("{}", ferry::routing::Router::new(&config).describe());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferry: {e}");
                ExitCode::from(2)
            }
        },
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
            let loaded = match &config {
                Some(path) => Config::load(path, &overrides),
                None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
                    Config::load(DEFAULT_CONFIG.as_ref(), &overrides)
                }
                None => Config::defaults(&overrides),
            };
            let config = match loaded {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ferry: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(config.log_level.as_deref());
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match runtime.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "ferry stopped");
                    eprintln!("ferry: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(config: Config) -> std::io::Result<()> {
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
    let server = Server::bind(config).await?;
    tracing::info!(listen = %server.local_addr(), %upstream, %storage, "ferry is serving");
    server.run(shutdown_signal()).await
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
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(config_level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}
