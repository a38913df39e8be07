//! What can keep ferry from starting: the config (a registry's TLS
//! material, routing), client access control (the htpasswd file), or the
//! store and the listen addresses (I/O). Each keeps its source.

use crate::access::AccessError;
use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("access control: {0}")]
    Access(#[from] AccessError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
