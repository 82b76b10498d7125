//! Settings of `learntrac serve`, resolved once at start-up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use learntrac_secrets::KeySource;
use learntrac_store::PoolSettings;

/// Everything the server needs to start, already validated.
#[derive(Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub https_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// `sqlite://…` or `postgres://…`; defaults to a file in the data directory.
    pub database_url: String,
    /// The address users reach the gateway at; tokens name it as their issuer.
    pub public_url: String,
    /// PEM certificate chain and key; generated in the data directory when unset.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Lifetime of access and ID tokens from the token endpoint, in seconds.
    pub access_token_seconds: i64,
    /// Lifetime of refresh tokens, in seconds.
    pub refresh_token_seconds: i64,
    /// Lifetime of a browser session, in seconds.
    pub session_seconds: i64,
    /// Email of the administrator created at first start.
    pub admin_email: String,
    /// Minimum relevance of a search hit, 0.0 to 1.0.
    pub min_relevance: f32,
    /// Maximum size of an uploaded book, in bytes.
    pub max_upload_bytes: usize,
    /// The source of the secrets store's master key.
    pub master_key: KeySource,
    /// Secrets each role may read, beyond the built-in grants.
    pub secret_policy: BTreeMap<String, Vec<String>>,
    /// Name of the secret holding the database password, which is added to
    /// `database_url`.
    pub database_password_secret: Option<String>,
    pub pool: PoolSettings,
    /// Refuse to start while any production check fails.
    pub production: bool,
    /// Whether the token endpoint accepts `grant_type=password`.
    pub password_grant: bool,
    pub egress: crate::egress::EgressSettings,
    pub logs: crate::logs::LogSettings,
    /// The form of client addresses in logs and alerts.
    pub log_client_address: crate::logs::mask::AddressMode,
    /// Address of the Prometheus metrics listener; `None` turns it off.
    pub metrics_listen: Option<SocketAddr>,
    pub alerts: crate::alerts::AlertSettings,
    /// The directory in which `learntrac check` looks for backups.
    pub backup_dir: PathBuf,
    /// Age after which `learntrac check` calls the newest backup too old.
    pub backup_max_age_hours: i64,
    pub gateway: crate::gateway::settings::GatewaySettings,
    pub identity: crate::idp::settings::IdentitySettings,
    pub embeddings: crate::embedder::EmbeddingSettings,
}

/// Shows the settings with the database password hidden.
impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("data_dir", &self.data_dir)
            .field("https_listen", &self.https_listen)
            .field("http_listen", &self.http_listen)
            .field("database_url", &learntrac_store::redact_url(&self.database_url))
            .field("public_url", &self.public_url)
            .field("master_key", &self.master_key.describe())
            .field("production", &self.production)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// Defaults for a data directory: HTTPS on 127.0.0.1:8443, the HTTP
    /// redirect on 127.0.0.1:8080 and SQLite in `learntrac.db`.
    pub fn with_data_dir(data_dir: PathBuf) -> ServerConfig {
        let https_listen = SocketAddr::from(([127, 0, 0, 1], 8443));
        let data_dir_for_key = data_dir.clone();
        ServerConfig {
            database_url: default_database_url(&data_dir),
            data_dir,
            https_listen,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: default_public_url(https_listen),
            tls_cert: None,
            tls_key: None,
            access_token_seconds: 3600,
            refresh_token_seconds: 30 * 24 * 3600,
            session_seconds: 8 * 3600,
            admin_email: "admin@localhost".into(),
            min_relevance: 0.65,
            max_upload_bytes: 64 * 1024 * 1024,
            master_key: KeySource::File(data_dir_key_file(&data_dir_for_key)),
            secret_policy: BTreeMap::new(),
            database_password_secret: None,
            pool: PoolSettings::default(),
            production: false,
            password_grant: true,
            egress: crate::egress::EgressSettings::default(),
            logs: crate::logs::LogSettings::for_data_dir(&data_dir_for_key),
            log_client_address: crate::logs::mask::AddressMode::Hash,
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            alerts: crate::alerts::AlertSettings::default(),
            backup_dir: data_dir_for_key.join("backups"),
            backup_max_age_hours: 26,
            gateway: crate::gateway::settings::GatewaySettings::default(),
            identity: crate::idp::settings::IdentitySettings::default(),
            embeddings: crate::embedder::EmbeddingSettings::default(),
        }
    }
}

/// `DATA_DIR/master.key`, the default master key file.
pub fn data_dir_key_file(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("master.key")
}

/// `sqlite://DATA_DIR/learntrac.db`, created on first use.
pub fn default_database_url(data_dir: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("learntrac.db").display())
}

/// `https://localhost:PORT` for a loopback or unspecified address,
/// `https://ADDRESS:PORT` otherwise.
pub fn default_public_url(https_listen: SocketAddr) -> String {
    let ip = https_listen.ip();
    if ip.is_loopback() || ip.is_unspecified() {
        format!("https://localhost:{}", https_listen.port())
    } else {
        format!("https://{https_listen}")
    }
}
