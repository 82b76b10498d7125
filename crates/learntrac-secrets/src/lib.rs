//! Encryption at rest for LearnTrac: the master key and where it comes
//! from, the secrets store encrypted under it, the policy that decides which
//! role may read which secret, and the encrypted stream that backups use.
//!
//! Everything is AES-256-GCM from aws-lc-rs. The master key never enters
//! the database: it is a file readable by its owner only, an environment
//! variable, or the output of a command the operator configures.

mod error;
mod master_key;
mod policy;
mod seal;
mod store;
pub mod stream;

pub use error::SecretError;
pub use master_key::{KeyRing, KeySource, MasterKey, SecretString, check_owner_only};
pub use policy::{Role, RoleSecrets, SecretPolicy};
pub use store::{Rotation, SecretInfo, SecretStore, validate_name};

/// The secret that contains the identity provider's token-signing key (PKCS#8 PEM).
pub const TOKEN_SIGNING_KEY: &str = "token-signing-key";

/// The signing key replaced by the last rotation, kept so that its tokens
/// verify until they expire: JSON with the PEM and the time it retired.
pub const PREVIOUS_SIGNING_KEY: &str = "token-signing-key-previous";

/// The secret that encrypts users' TOTP secrets in the database.
pub const MFA_KEY: &str = "mfa-key";

/// The secret that keys the hash of client addresses in logs.
pub const LOG_ADDRESS_KEY: &str = "log-address-key";

/// The secret that keys the audit trail's HMAC chain.
pub const AUDIT_KEY: &str = "audit-key";

pub type Result<T, E = SecretError> = std::result::Result<T, E>;

/// A secret value in memory. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: String) -> SecretValue {
        SecretValue(value)
    }

    /// Returns the value itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(***)")
    }
}

/// Fills `buffer` from the operating system's random number generator.
fn random_bytes(buffer: &mut [u8]) -> Result<()> {
    aws_lc_rs::rand::fill(buffer).map_err(|_| SecretError::Crypto("the system random number generator failed"))
}

#[cfg(test)]
pub(crate) mod testing {
    use std::path::PathBuf;

    /// Creates a new, empty directory under the system's temporary directory.
    pub fn temp_dir(name: &str) -> PathBuf {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("learntrac-secrets-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
