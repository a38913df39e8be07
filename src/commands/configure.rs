//! `ferry configure containerd`: writes containerd's `hosts.toml` for
//! every registry ferry's config routes (see `ferry::node::containerd`)
//! and prints each file's fate; `--dry-run` prints what it would do and
//! writes nothing. With `--containerd-config`, checks that containerd
//! reads the directory and says which lines to add when it does not.
//!
//! Exit codes: 0 when the hosts are written (or would be) and containerd
//! reads them (or was not asked about); 1 when containerd's config does
//! not read them, or a registry keeps a hosts.toml ferry did not write
//! (left alone, so it does not go through ferry); 2 for bad arguments, an
//! unreadable config or a write that failed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ferry::config::Config;
use ferry::node::{containerd, containerd_config};

/// What `ferry configure containerd` was asked.
#[derive(clap::Args)]
pub struct Args {
    /// Config file (as for serve): its registries are written.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// containerd's hosts directory (its `config_path`).
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    pub hosts_dir: PathBuf,
    /// Where this node reaches ferry: http(s)://host:port.
    #[arg(long)]
    pub mirror: String,
    /// A CA file for an https:// mirror with a private CA.
    #[arg(long)]
    pub mirror_ca: Option<PathBuf>,
    /// Also write `_default`: every other registry through ferry too.
    #[arg(long)]
    pub default: bool,
    /// Replace hosts.toml files ferry did not write.
    #[arg(long)]
    pub force: bool,
    /// Print what would change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// containerd's config.toml: check that it reads the hosts directory.
    #[arg(long)]
    pub containerd_config: Option<PathBuf>,
}

pub fn containerd(
    mut args: Args,
    load: impl Fn(Option<&Path>) -> Result<Config, String>,
) -> ExitCode {
    // containerd's config_path is absolute; so is what is said about it.
    if let Ok(abs) = std::path::absolute(&args.hosts_dir) {
        args.hosts_dir = abs;
    }
    let config = match load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry: {e}");
            return ExitCode::from(2);
        }
    };
    let mirror = match containerd::Mirror::parse(&args.mirror, args.mirror_ca) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("ferry: {e}");
            return ExitCode::from(2);
        }
    };
    let files = match containerd::hosts_files(&config, &mirror, args.default) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ferry: {e}");
            return ExitCode::from(2);
        }
    };
    if files.is_empty() {
        eprintln!("ferry: the config routes no registry: nothing to write");
        return ExitCode::from(2);
    }
    let changes = match containerd::plan(&args.hosts_dir, &files, args.force) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry: cannot read the hosts directory: {e}");
            return ExitCode::from(2);
        }
    };
    if !args.dry_run {
        if let Err(e) = containerd::apply(&changes) {
            eprintln!("ferry: cannot write {e}");
            return ExitCode::from(2);
        }
    }
    for c in &changes {
        println!("{}", c.describe(args.dry_run));
    }
    let written = changes.iter().filter(|c| c.writes()).count();
    println!(
        "{} {written} of {} files in {}{}",
        if args.dry_run { "would write" } else { "wrote" },
        files.len(),
        args.hosts_dir.display(),
        if written == 0 {
            ": nothing to change"
        } else {
            ""
        }
    );
    // A registry whose hosts.toml is someone else's does not go through
    // ferry: the node is not wired as asked.
    let not_ours = changes
        .iter()
        .any(|c| matches!(c, containerd::Change::NotOurs { .. }));
    if not_ours {
        eprintln!("ferry: some registries keep a hosts.toml ferry did not write (left alone above): they do not go through ferry; --force replaces them");
    }
    let done = if not_ours {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    let Some(file) = args.containerd_config else {
        return done;
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ferry: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match containerd_config::check(&text, &args.hosts_dir) {
        Ok(findings) => {
            for f in &findings {
                println!("{}", f.describe(&file));
            }
            if findings.iter().any(|f| f.blocks()) {
                ExitCode::FAILURE
            } else {
                done
            }
        }
        Err(e) => {
            eprintln!("ferry: {}: {e}", file.display());
            ExitCode::from(2)
        }
    }
}
