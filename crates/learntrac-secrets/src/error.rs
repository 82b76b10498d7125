use std::path::PathBuf;

/// Failures of the master key, the secrets store and encrypted streams.
/// Each message starts with a stable code that operators can search for.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("LT-MASTER-KEY-MISSING: no master key at {path}; {hint}")]
    KeyMissing { path: PathBuf, hint: &'static str },
    #[error(
        "LT-MASTER-KEY-MODE: master key file {path} has mode {mode:04o}, so other users may read or change it; \
         run `chmod 600 {path}`"
    )]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("LT-MASTER-KEY-INVALID: the master key from {source_name} is invalid: {reason}")]
    KeyInvalid { source_name: String, reason: String },
    #[error("LT-MASTER-KEY-COMMAND: master_key_command {command} failed: {reason}")]
    KeyCommand { command: String, reason: String },
    #[error(
        "LT-MASTER-KEY-WRONG: {what} was encrypted under master key {wanted}, but the master key in use is {have}; \
         start with the master key that made it (master_key_file, LEARNTRAC_MASTER_KEY or master_key_command)"
    )]
    WrongKey { what: String, wanted: String, have: String },
    #[error("LT-SECRET-CORRUPT: {0}")]
    Corrupt(String),
    #[error("LT-SECRET-NOT-FOUND: no secret is named {0:?}; `learntrac secret list --data-dir DIR` shows the names")]
    NotFound(String),
    #[error(
        "LT-SECRET-NAME: secret name {0:?} is invalid; use 1 to 64 lower-case letters, digits, '.', '_' or '-', \
         starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("LT-SECRET-SIZE: the value of secret {name:?} has {size} bytes; the maximum is {max}")]
    TooLarge { name: String, size: usize, max: usize },
    #[error("LT-MASTER-KEY-ROTATE: {0}")]
    Rotation(String),
    /// A backup stream that is not a backup, or was damaged; the message
    /// carries its own `LT-BACKUP-…` code.
    #[error("{0}")]
    Stream(String),
    #[error(
        "LT-SECRET-DENIED: role {role} may not read secret {name:?}; \
         add it to the {role} list under [secret_policy] in learntrac.toml if the role needs it"
    )]
    Denied { role: String, name: String },
    #[error("LT-SECRET-CRYPTO: {0}")]
    Crypto(&'static str),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SecretError {
    pub(crate) fn io(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> SecretError {
        let path = path.to_path_buf();
        move |source| SecretError::Io { what, path, source }
    }
}
