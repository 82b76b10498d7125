//! LearnTrac's roles in one library: the TLS gateway in front, the trac
//! pages, the JSON API and the identity provider behind it.

pub mod alerts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod compliance;
pub mod config;
pub mod egress;
pub mod embedder;
pub mod error;
pub mod gateway;
pub mod graph;
pub mod idp;
pub mod keys;
pub mod library;
pub mod logs;
pub mod metrics;
pub mod pages;
pub mod pki;
pub mod production;
pub mod secrets;
pub mod service;
pub mod sessions;
pub mod time;
pub mod tls;
pub mod wiki;
pub mod window;

use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use learntrac_core::search::Index;
use learntrac_store::Store;

pub use config::ServerConfig;

/// State shared by every role.
pub struct AppInner {
    pub store: Store,
    /// The signing keys, replaced when a rotation is noticed.
    signing_keys: RwLock<Arc<keys::SigningKeys>>,
    /// The external provider whose tokens the API accepts instead of the
    /// built-in provider's, if one is configured.
    pub external_keys: Option<auth::ExternalKeys>,
    pub sessions: sessions::SessionCache,
    pub mailer: learntrac_identity::mail::Mailer,
    /// Encrypts users' TOTP secrets.
    pub mfa_sealer: idp::mfa::Sealer,
    pub secrets: secrets::Secrets,
    pub config: ServerConfig,
    /// The configured sentence embedder.
    pub embedder: embedder::Embedder,
    /// The search index; replaced whole when the library changes.
    pub index: RwLock<Arc<Index>>,
    /// The library's watermark when the index was loaded.
    pub index_watermark: std::sync::Mutex<Option<(i64, i64, i64)>>,
    /// Library jobs of this process run one at a time, so that they take
    /// at most the CPU of one job and leave the rest to searches.
    pub job_slots: tokio::sync::Semaphore,
    pub limiter: gateway::RateLimiter,
    pub revocations: auth::RevocationCache,
    pub verified_tokens: auth::VerifiedTokens,
    pub wiki_cache: pages::WikiCache,
    /// Masks client addresses for logs and alerts.
    pub masker: logs::mask::AddressMasker,
    pub metrics: metrics::Metrics,
    pub alerts: alerts::Alerts,
    /// HMAC key of the audit chain.
    pub audit_key: Vec<u8>,
}

#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    /// Opens the secrets store, the database (with the password from the
    /// store when one is configured) and the signing key, and builds the
    /// search index from the stored chunks.
    pub async fn open(config: ServerConfig) -> Result<AppState> {
        let mut secret_store = secrets::open_store(&config, true)?;
        let key_created = keys::ensure_signing_key(&mut secret_store, &config.data_dir, unix_now())?;
        let mut generated = secrets::ensure_generated_secrets(&mut secret_store, unix_now())?;
        if key_created {
            generated.push(learntrac_secrets::TOKEN_SIGNING_KEY);
        }
        let secrets = secrets::Secrets::new(secret_store, &config)?;
        let idp_secrets = secrets.role(learntrac_secrets::Role::Idp);
        let keys = keys::SigningKeys::load(&idp_secrets, unix_now(), key_keep_seconds(&config))?;
        let mfa_sealer = idp::mfa::Sealer::new(idp_secrets.get(learntrac_secrets::MFA_KEY)?.expose())?;
        let mailer = open_mailer(&config, &idp_secrets)?;
        let external_keys = match &config.identity.external {
            Some(external) => Some(auth::ExternalKeys::new(external.clone(), &config.egress)?),
            None => None,
        };
        let gateway_secrets = secrets.role(learntrac_secrets::Role::Gateway);
        let address_key = gateway_secrets.get(learntrac_secrets::LOG_ADDRESS_KEY)?;
        let masker = logs::mask::AddressMasker::new(config.log_client_address, address_key.expose().as_bytes());
        let audit_key = secrets.role(learntrac_secrets::Role::Api).get(learntrac_secrets::AUDIT_KEY)?;
        let webhook_url = match config.alerts.webhook.as_deref() {
            Some(reference) => match reference.strip_prefix("secret:") {
                Some(name) => Some(gateway_secrets.get(name)?.expose().to_string()),
                None => Some(reference.to_string()),
            },
            None => None,
        };
        if let Some(url) = &webhook_url
            && !url.to_ascii_lowercase().starts_with("https://")
        {
            anyhow::bail!("alert_webhook must be an https:// address");
        }
        let alerts = alerts::Alerts::new(config.alerts.clone(), webhook_url, &config.egress)?;

        let database_url = secrets.database_url(&config, secrets::DATABASE_ROLES)?;
        let store = Store::open_with(&database_url, &config.pool).await?;
        restrict_sqlite_files(&config.database_url);
        if let Some(mode) = loose_mode(&config.data_dir) {
            tracing::warn!(
                data_dir = %config.data_dir.display(),
                mode = format!("{mode:04o}"),
                "other users may read the data directory; run chmod 700 on it"
            );
        }
        let embedder =
            embedder::Embedder::from_settings(&config.embeddings, &config.data_dir, &config.egress, &secrets)?;
        let watermark = store.chunk_watermark().await?;
        let index = library::load_index(&store, &embedder).await?;
        idp::admin::ensure_cli_client(&store, unix_now()).await?;
        let state = AppState(Arc::new(AppInner {
            store,
            signing_keys: RwLock::new(Arc::new(keys)),
            external_keys,
            sessions: sessions::SessionCache::default(),
            mailer,
            mfa_sealer,
            secrets,
            config,
            embedder,
            index: RwLock::new(Arc::new(index)),
            index_watermark: std::sync::Mutex::new(Some(watermark)),
            job_slots: tokio::sync::Semaphore::new(1),
            limiter: gateway::RateLimiter::new(),
            revocations: auth::RevocationCache::default(),
            verified_tokens: auth::VerifiedTokens::default(),
            wiki_cache: pages::WikiCache::default(),
            masker,
            metrics: metrics::Metrics::default(),
            alerts,
            audit_key: audit_key.expose().as_bytes().to_vec(),
        }));
        state.recording_generated(generated).await
    }

    /// Records each secret LearnTrac generated at start-up in the audit trail.
    async fn recording_generated(self, generated: Vec<&'static str>) -> Result<AppState> {
        for name in generated {
            audit::record(&self, audit::Actor::System, "secret.generate", &format!("secret:{name}"), "success", "")
                .await;
        }
        Ok(self)
    }

    /// Returns the current time in Unix seconds.
    pub fn now(&self) -> i64 {
        unix_now()
    }

    /// Returns the current signing keys.
    pub fn keys(&self) -> Arc<keys::SigningKeys> {
        self.signing_keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the signing keys again from the secrets store on disk, so that
    /// a rotation by command takes effect, and a retired key leaves the key
    /// set once its tokens have expired.
    pub fn reload_keys(&self) -> Result<()> {
        let store = secrets::open_store(&self.config, false)?;
        let secrets = secrets::Secrets::new(store, &self.config)?;
        let loaded = keys::SigningKeys::load(
            &secrets.role(learntrac_secrets::Role::Idp),
            unix_now(),
            key_keep_seconds(&self.config),
        )?;
        let mut current = self.signing_keys.write().unwrap_or_else(|p| p.into_inner());
        let changed = current.current.kid != loaded.current.kid || current.verifying.len() != loaded.verifying.len();
        if changed {
            tracing::info!(target: "learntrac::security", kid = %loaded.current.kid, keys = loaded.verifying.len(), "token-signing keys reloaded");
            *current = Arc::new(loaded);
        }
        Ok(())
    }

    /// Reloads the signing keys every `period` and on SIGHUP.
    pub fn watch_keys(&self, period: std::time::Duration) {
        let state = self.clone();
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                #[cfg(unix)]
                match hangup.as_mut() {
                    Some(signal) => tokio::select! {
                        _ = ticks.tick() => {}
                        _ = signal.recv() => {}
                    },
                    None => {
                        ticks.tick().await;
                    }
                }
                #[cfg(not(unix))]
                ticks.tick().await;
                if let Err(error) = state.reload_keys() {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "cannot reload the token-signing keys; the old ones stay"
                    );
                }
            }
        });
    }
}

/// Returns how long a retired signing key stays in the key set: until every token
/// it signed has expired.
pub fn key_keep_seconds(config: &ServerConfig) -> i64 {
    config.access_token_seconds.max(config.identity.id_token_seconds) + config.identity.clock_skew_seconds
}

/// Opens the mailer of the settings: SMTP, or the outbox file in the data directory.
pub fn open_mailer(
    config: &ServerConfig,
    secrets: &learntrac_secrets::RoleSecrets,
) -> Result<learntrac_identity::mail::Mailer> {
    let outbox = config.data_dir.join("mail").join("outbox");
    let smtp = match &config.identity.smtp {
        Some(smtp) => {
            let password = match &smtp.password_secret {
                Some(name) => Some(
                    secrets.get(name).with_context(|| format!("smtp.password_secret {name:?}"))?.expose().to_string(),
                ),
                None => None,
            };
            Some((smtp, password))
        }
        None => None,
    };
    learntrac_identity::mail::Mailer::new(
        &config.identity.mail_from,
        smtp.as_ref().map(|(s, p)| (*s, p.clone())),
        outbox,
    )
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Returns `bytes` random bytes from the operating system's CSPRNG,
/// base64url-encoded.
pub fn random_token(bytes: usize) -> String {
    use base64::Engine;
    let mut buffer = vec![0u8; bytes];
    // Without random bytes no key, token or salt can be made safely, so the
    // process stops rather than carry on.
    if aws_lc_rs::rand::fill(&mut buffer).is_err() {
        tracing::error!("the system random number generator failed");
        std::process::abort();
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buffer)
}

/// Hex SHA-256 of `value`, for storing tokens that must not be kept in the clear.
pub fn sha256_hex(value: &str) -> String {
    sha256_hex_bytes(value.as_bytes())
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex_bytes(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut hex = String::with_capacity(64);
    for byte in digest.as_ref() {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    hex
}

/// Creates the data directory, readable by its owner only, if it does not
/// exist. It will contain the database with password hashes and the keys.
pub fn ensure_data_dir(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(path).with_context(|| format!("cannot create the data directory {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict the permissions of {}", path.display()))?;
    }
    Ok(())
}

/// Returns the mode of `path` if group or others have any access to it.
pub fn loose_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Makes a SQLite database and its journal files readable by their owner
/// only; SQLite creates them with the process's umask.
pub fn restrict_sqlite_files(database_url: &str) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Some(path) = learntrac_store::sqlite_file(database_url) else { return };
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{}{suffix}", path.display());
            if std::path::Path::new(&file).exists()
                && let Err(error) = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
            {
                tracing::warn!(file, %error, "cannot restrict the permissions of a database file");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = database_url;
}

/// Checks an email address for the user pool: one '@', a local part of
/// printable characters without spaces, quotes or angle brackets, and a
/// domain of letters, digits, '-' and '.' (or "localhost").
pub fn validate_email(email: &str) -> Result<(), String> {
    let invalid = || Err(format!("email {email:?} is not a valid address; use the form name@example.org"));
    let Some((local, domain)) = email.split_once('@') else {
        return invalid();
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local.chars().all(|c| c.is_ascii_graphic() && !"<>\"'(),;:[]\\@".contains(c));
    let domain_ok = !domain.is_empty()
        && domain.len() <= 253
        && !domain.starts_with(['.', '-'])
        && !domain.ends_with(['.', '-'])
        && !domain.contains("..")
        && domain.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && (domain.contains('.') || domain == "localhost");
    if local_ok && domain_ok { Ok(()) } else { invalid() }
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_email;

    #[test]
    fn email_validation() {
        for good in ["ann@example.org", "admin@localhost", "a.b+c@sub.example.co"] {
            assert!(validate_email(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ann",
            "@example.org",
            "ann@",
            "<script>alert(1)</script>@example.org",
            "a b@example.org",
            "a@b@c.org",
            "a@example..org",
            "a@host",
        ] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
    }
}
