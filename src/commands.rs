//! The `ferry` subcommands that are not `serve`, each in its own file:
//! what it reads, what it prints, its exit code. The work itself lives in
//! the library (`ferry::config`, `ferry::node`, `ferry::prefetch`), where
//! it is tested; these files are the command line around it.

pub mod check;
pub mod configure;
pub mod prewarm;
