//! The secrets store as the server uses it: opened with the configured
//! master key, read by each role under the policy, and the source of
//! settings that name a secret (`secret:NAME`).

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use learntrac_secrets::{KeyRing, KeySource, Role, RoleSecrets, SecretPolicy, SecretStore};

use crate::ServerConfig;

/// Roles that open the database; each needs the database password.
pub const DATABASE_ROLES: &[Role] = &[Role::Trac, Role::Api, Role::Idp];

/// Opens the secrets store of the data directory. A missing master key
/// file is created only when `create_key` is true and the store does not
/// exist yet: a store without its key needs the original key back, never
/// a new one. Keys from the environment or a command are never created.
pub fn open_store(config: &ServerConfig, create_key: bool) -> Result<SecretStore> {
    open_store_with_next(config, create_key, None)
}

/// Like [`open_store`], with the key a rotation moves to, so that a
/// rotation of a key from the environment or a command can be finished.
pub fn open_store_with_next(
    config: &ServerConfig,
    create_key: bool,
    next: Option<learntrac_secrets::MasterKey>,
) -> Result<SecretStore> {
    if create_key {
        crate::ensure_data_dir(&config.data_dir)?;
    } else if !config.data_dir.is_dir() {
        bail!("the data directory {} does not exist; check --data-dir", config.data_dir.display());
    }
    let store_exists = config.data_dir.join(SecretStore::FILE_NAME).exists();
    let create = create_key && !store_exists && matches!(config.master_key, KeySource::File(_));
    let mut keys = KeyRing::open(config.master_key.clone(), create)?;
    if let Some(next) = next {
        keys = keys.with_next(next);
    }
    Ok(SecretStore::open(&config.data_dir, keys)?)
}

/// Creates the secrets LearnTrac generates for itself (the audit key, the
/// log address key and the TOTP encryption key) if they are missing. Returns the names created.
pub fn ensure_generated_secrets(store: &mut SecretStore, now: i64) -> Result<Vec<&'static str>> {
    let mut created = Vec::new();
    for name in [learntrac_secrets::AUDIT_KEY, learntrac_secrets::LOG_ADDRESS_KEY, learntrac_secrets::MFA_KEY] {
        if !store.contains(name) && store.put_if_absent(name, &crate::random_token(32), now)? {
            created.push(name);
        }
    }
    Ok(created)
}

/// The opened store with the policy that rules it.
#[derive(Clone)]
pub struct Secrets {
    store: Arc<SecretStore>,
    policy: Arc<SecretPolicy>,
}

impl Secrets {
    pub fn new(store: SecretStore, config: &ServerConfig) -> Result<Secrets> {
        let policy = SecretPolicy::new(&config.secret_policy)
            .map_err(|error| anyhow::anyhow!("invalid [secret_policy] in learntrac.toml: {error}"))?;
        Ok(Secrets { store: Arc::new(store), policy: Arc::new(policy) })
    }

    /// Returns the store as `role` may read it.
    pub fn role(&self, role: Role) -> RoleSecrets {
        RoleSecrets::new(role, self.policy.clone(), self.store.clone())
    }

    /// Returns the whole store, for the operator's commands and the
    /// production checks, which run with the operator's rights.
    pub fn store(&self) -> &SecretStore {
        &self.store
    }

    /// The database URL with the password from `database_password`, read
    /// as every role in `roles`, so that the policy must grant it to each.
    pub fn database_url(&self, config: &ServerConfig, roles: &[Role]) -> Result<String> {
        let Some(name) = &config.database_password_secret else {
            return Ok(config.database_url.clone());
        };
        let mut password = None;
        for role in roles {
            let value = self
                .role(role.clone())
                .get(name)
                .with_context(|| format!("cannot read database_password (secret:{name}) as role {role}"))?;
            password = Some(value);
        }
        match password {
            Some(password) => with_password(&config.database_url, password.expose()),
            None => bail!("no role reads the database password"),
        }
    }
}

/// Returns the database URL with the password from `database_password`
/// for the operator's commands, which are not bound by the role policy.
pub fn operator_database_url(config: &ServerConfig, store: &SecretStore) -> Result<String> {
    match &config.database_password_secret {
        None => Ok(config.database_url.clone()),
        Some(name) => {
            let password = store.get(name).with_context(|| format!("cannot read database_password (secret:{name})"))?;
            with_password(&config.database_url, password.expose())
        }
    }
}

/// Inserts a percent-encoded password into `scheme://user@host/…`.
fn with_password(url: &str, password: &str) -> Result<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("database_password is set, but database_url {url:?} is not of the form postgres://USER@HOST/DB");
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some((user, host)) = rest[..authority_end].split_once('@') else {
        bail!("database_password is set, but database_url names no user; use postgres://USER@HOST/DB");
    };
    if user.contains(':') {
        bail!("database_url already contains a password; remove it when database_password is set");
    }
    Ok(format!("{scheme}://{user}:{}@{host}{}", percent_encode(password), &rest[authority_end..]))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_goes_into_the_authority() {
        let url = with_password("postgres://lt@db.example.org:5432/lt?sslmode=verify-full", "p@ss/w:rd").expect("url");
        assert_eq!(url, "postgres://lt:p%40ss%2Fw%3Ard@db.example.org:5432/lt?sslmode=verify-full");
    }

    #[test]
    fn url_without_user_is_rejected() {
        assert!(with_password("postgres://db.example.org/lt", "x").is_err());
        assert!(with_password("postgres://lt:inline@db/lt", "x").is_err());
    }
}
