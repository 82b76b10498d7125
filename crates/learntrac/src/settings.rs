//! Layered settings: defaults, then `DATA_DIR/learntrac.toml`, then
//! `LEARNTRAC_…` environment variables and flags (clap reads both).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use learntrac_secrets::{KeySource, SecretString};
use learntrac_server::ServerConfig;
use serde::Deserialize;

use crate::{DataArgs, ServeArgs};

/// The optional settings file. Every key is optional; unknown keys are errors.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    database_url: Option<String>,
    https_listen: Option<std::net::SocketAddr>,
    http_listen: Option<std::net::SocketAddr>,
    public_url: Option<String>,
    tls_cert: Option<std::path::PathBuf>,
    tls_key: Option<std::path::PathBuf>,
    access_token_seconds: Option<i64>,
    refresh_token_seconds: Option<i64>,
    session_seconds: Option<i64>,
    admin_email: Option<String>,
    min_relevance: Option<f32>,
    max_upload_mib: Option<usize>,
    master_key_file: Option<PathBuf>,
    master_key_command: Option<Vec<String>>,
    secret_policy: Option<BTreeMap<String, Vec<String>>>,
    database_password: Option<String>,
    database_max_connections: Option<u32>,
    database_acquire_timeout_seconds: Option<u64>,
    database_idle_timeout_seconds: Option<u64>,
    production: Option<bool>,
    password_grant: Option<bool>,
    egress_proxy: Option<String>,
    egress_ca_file: Option<PathBuf>,
    log_dir: Option<PathBuf>,
    log_max_mib: Option<u64>,
    log_retention_days: Option<u64>,
    log_max_files: Option<usize>,
    log_client_address: Option<String>,
    metrics_listen: Option<String>,
    alert_webhook: Option<String>,
    alert_auth_failures_per_minute: Option<u32>,
    alert_failed_sign_ins: Option<u32>,
    alert_failed_sign_in_window_seconds: Option<i64>,
    alert_rate_limit_trips: Option<u32>,
    alert_group_seconds: Option<i64>,
    backup_dir: Option<PathBuf>,
    backup_max_age_hours: Option<i64>,
    gateway: Option<learntrac_server::gateway::settings::GatewaySettings>,
    identity: Option<learntrac_server::idp::settings::IdentitySettings>,
    embeddings: Option<learntrac_server::embedder::EmbeddingSettings>,
}

/// The environment variable that contains the master key itself (base64).
const MASTER_KEY_ENV: &str = "LEARNTRAC_MASTER_KEY";

const FILE_NAME: &str = "learntrac.toml";

fn read_file(data_dir: &Path) -> Result<FileSettings> {
    let path = data_dir.join(FILE_NAME);
    if !path.exists() {
        return Ok(FileSettings::default());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid settings in {}", path.display()))
}

/// Checks a public URL and removes a trailing '/'; `source` names where it came from.
fn checked_public_url(url: &str, source: &str) -> Result<String> {
    if !url.starts_with("https://") {
        bail!("public_url {url:?} in {source} must start with https://, because LearnTrac serves HTTPS only");
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Returns the public URL set by `--public-url` (or its environment
/// variable) or by the settings file, if either sets one.
pub fn configured_public_url(args: &ServeArgs) -> Result<Option<String>> {
    if let Some(url) = &args.public_url {
        return checked_public_url(url, "--public-url or LEARNTRAC_PUBLIC_URL").map(Some);
    }
    match read_file(&args.data.data_dir)?.public_url {
        Some(url) => checked_public_url(&url, FILE_NAME).map(Some),
        None => Ok(None),
    }
}

/// Resolves the settings shared by every subcommand.
pub fn resolve(data: &DataArgs) -> Result<ServerConfig> {
    let file = read_file(&data.data_dir)?;
    let mut config = ServerConfig::with_data_dir(data.data_dir.clone());
    if let Some(url) = data.database_url.clone().or(file.database_url) {
        config.database_url = url;
    }
    if let Some(addr) = file.https_listen {
        config.https_listen = addr;
    }
    if let Some(addr) = file.http_listen {
        config.http_listen = addr;
    }
    if let Some(url) = file.public_url {
        config.public_url = checked_public_url(&url, FILE_NAME)?;
    }
    config.tls_cert = file.tls_cert;
    config.tls_key = file.tls_key;
    for (name, value, target) in [
        ("access_token_seconds", file.access_token_seconds, &mut config.access_token_seconds),
        ("refresh_token_seconds", file.refresh_token_seconds, &mut config.refresh_token_seconds),
        ("session_seconds", file.session_seconds, &mut config.session_seconds),
    ] {
        if let Some(seconds) = value {
            if !(60..=365 * 24 * 3600).contains(&seconds) {
                bail!("{name} = {seconds} in {FILE_NAME} is out of range; use 60 to 31536000 seconds");
            }
            *target = seconds;
        }
    }
    if let Some(email) = file.admin_email {
        learntrac_server::validate_email(&email).map_err(|e| anyhow::anyhow!("admin_email in {FILE_NAME}: {e}"))?;
        config.admin_email = email;
    }
    if let Some(relevance) = file.min_relevance {
        if !(0.0..=1.0).contains(&relevance) {
            bail!("min_relevance = {relevance} in {FILE_NAME} is out of range; use 0.0 to 1.0");
        }
        config.min_relevance = relevance;
    }
    if let Some(mib) = file.max_upload_mib {
        if !(1..=1024).contains(&mib) {
            bail!("max_upload_mib = {mib} in {FILE_NAME} is out of range; use 1 to 1024");
        }
        config.max_upload_bytes = mib * 1024 * 1024;
    }

    config.master_key = master_key_source(&data.data_dir, file.master_key_file, file.master_key_command)?;
    config.secret_policy = file.secret_policy.unwrap_or_default();
    if let Some(reference) = file.database_password {
        config.database_password_secret = Some(secret_reference("database_password", &reference)?);
    }
    if let Some(size) = file.database_max_connections {
        if !(1..=1000).contains(&size) {
            bail!("database_max_connections = {size} in {FILE_NAME} is out of range; use 1 to 1000");
        }
        config.pool.max_connections = Some(size);
    }
    for (name, value, target) in [
        ("database_acquire_timeout_seconds", file.database_acquire_timeout_seconds, &mut config.pool.acquire_timeout),
        ("database_idle_timeout_seconds", file.database_idle_timeout_seconds, &mut config.pool.idle_timeout),
    ] {
        if let Some(seconds) = value {
            if !(1..=86_400).contains(&seconds) {
                bail!("{name} = {seconds} in {FILE_NAME} is out of range; use 1 to 86400 seconds");
            }
            *target = Duration::from_secs(seconds);
        }
    }
    if let Some(production) = file.production {
        config.production = production;
    }
    // Every command reads the variable, so that `check` reports what `serve` enforces.
    if let Ok(value) = std::env::var("LEARNTRAC_PRODUCTION") {
        config.production = match value.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" | "" => false,
            other => bail!("LEARNTRAC_PRODUCTION={other:?} is invalid; use true or false"),
        };
    }
    if let Some(enabled) = file.password_grant {
        config.password_grant = enabled;
    }
    config.egress.proxy = file.egress_proxy;
    config.egress.ca_file = file.egress_ca_file;

    if let Some(dir) = file.log_dir {
        config.logs.dir = dir;
    }
    if let Some(mib) = file.log_max_mib {
        config.logs.max_file_bytes = in_range("log_max_mib", mib, 1..=10_240)? * 1024 * 1024;
    }
    if let Some(days) = file.log_retention_days {
        config.logs.retention = Duration::from_secs(in_range("log_retention_days", days, 1..=3650)? * 86_400);
    }
    if let Some(count) = file.log_max_files {
        config.logs.max_rotated_files = in_range("log_max_files", count, 1..=10_000)?;
    }
    if let Some(mode) = file.log_client_address {
        config.log_client_address = mode.parse().map_err(|error: String| anyhow::anyhow!("{error} in {FILE_NAME}"))?;
    }
    if let Some(value) = file.metrics_listen {
        config.metrics_listen = metrics_listen(&value, FILE_NAME)?;
    }
    if let Some(url) = file.alert_webhook {
        if url.starts_with("secret:") {
            secret_reference("alert_webhook", &url)?;
        } else if !url.to_ascii_lowercase().starts_with("https://") || url.len() <= "https://".len() {
            bail!("alert_webhook in {FILE_NAME} must be an https:// address, or secret:NAME");
        }
        config.alerts.webhook = Some(url);
    }
    let alerts = &mut config.alerts;
    for (name, value, target) in [
        ("alert_auth_failures_per_minute", file.alert_auth_failures_per_minute, &mut alerts.auth_failures_per_minute),
        ("alert_failed_sign_ins", file.alert_failed_sign_ins, &mut alerts.failed_sign_ins),
        ("alert_rate_limit_trips", file.alert_rate_limit_trips, &mut alerts.rate_limit_trips),
    ] {
        if let Some(count) = value {
            *target = in_range(name, count, 1..=1_000_000)?;
        }
    }
    for (name, value, target) in [
        (
            "alert_failed_sign_in_window_seconds",
            file.alert_failed_sign_in_window_seconds,
            &mut alerts.failed_sign_in_window_seconds,
        ),
        ("alert_group_seconds", file.alert_group_seconds, &mut alerts.group_seconds),
    ] {
        if let Some(seconds) = value {
            *target = in_range(name, seconds, 1..=7 * 86_400)?;
        }
    }
    if let Some(dir) = file.backup_dir {
        config.backup_dir = dir;
    }
    if let Some(hours) = file.backup_max_age_hours {
        config.backup_max_age_hours = in_range("backup_max_age_hours", hours, 1..=24 * 365)?;
    }
    if let Some(gateway) = file.gateway {
        gateway.validate().map_err(|error| {
            anyhow::anyhow!("invalid settings in {}: {error}", data.data_dir.join(FILE_NAME).display())
        })?;
        config.gateway = gateway;
    }
    if let Some(identity) = file.identity {
        identity.validate().map_err(|error| {
            anyhow::anyhow!("invalid [identity] settings in {}: {error}", data.data_dir.join(FILE_NAME).display())
        })?;
        config.identity = identity;
    }
    if let Some(embeddings) = file.embeddings {
        embeddings.validate().map_err(|error| {
            anyhow::anyhow!("invalid [embeddings] settings in {}: {error}", data.data_dir.join(FILE_NAME).display())
        })?;
        config.embeddings = embeddings;
    }
    Ok(config)
}

/// Returns `value` if it lies in `range`, or an error naming the setting.
fn in_range<T: PartialOrd + std::fmt::Display>(name: &str, value: T, range: std::ops::RangeInclusive<T>) -> Result<T> {
    if !range.contains(&value) {
        bail!("{name} = {value} in {FILE_NAME} is out of range; use {} to {}", range.start(), range.end());
    }
    Ok(value)
}

/// Parses the metrics address: `HOST:PORT`, or `off` for no listener.
fn metrics_listen(value: &str, source: &str) -> Result<Option<std::net::SocketAddr>> {
    if value == "off" {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        anyhow::anyhow!(
            "metrics_listen {value:?} in {source} is invalid; use an address such as 127.0.0.1:9464, or off"
        )
    })
}

/// Chooses the master key source: `LEARNTRAC_MASTER_KEY`, then
/// `master_key_command`, then `master_key_file`, then `DATA_DIR/master.key`.
fn master_key_source(data_dir: &Path, file: Option<PathBuf>, command: Option<Vec<String>>) -> Result<KeySource> {
    if let Ok(value) = std::env::var(MASTER_KEY_ENV) {
        return Ok(KeySource::Environment(SecretString(value)));
    }
    match (file, command) {
        (Some(_), Some(_)) => bail!("set master_key_file or master_key_command in {FILE_NAME}, not both"),
        (_, Some(command)) if command.is_empty() => {
            bail!("master_key_command in {FILE_NAME} is empty; give the program and its arguments as a list")
        }
        (_, Some(command)) => Ok(KeySource::Command(command)),
        (Some(path), None) => Ok(KeySource::File(path)),
        (None, None) => Ok(KeySource::File(learntrac_server::config::data_dir_key_file(data_dir))),
    }
}

/// Parses `secret:NAME`; `setting` names the setting in the error.
fn secret_reference(setting: &str, value: &str) -> Result<String> {
    let Some(name) = value.strip_prefix("secret:") else {
        bail!(
            "{setting} in {FILE_NAME} must name a secret as \"secret:NAME\", so that the value is stored encrypted; \
             store it with `learntrac secret put NAME`"
        );
    };
    learntrac_secrets::validate_name(name).map_err(|error| anyhow::anyhow!("{setting} in {FILE_NAME}: {error}"))?;
    Ok(name.to_string())
}

/// Applies the listen addresses of `serve` (flags and environment) over
/// the file. The public URL is settled after binding, by the caller.
pub fn apply_serve_args(config: &mut ServerConfig, args: &ServeArgs) -> Result<()> {
    if args.production {
        config.production = true;
    }
    if let Some(value) = &args.metrics_listen {
        config.metrics_listen = metrics_listen(value, "--metrics-listen or LEARNTRAC_METRICS_LISTEN")?;
    }
    if let Some(addr) = args.https_listen {
        config.https_listen = addr;
    }
    if let Some(addr) = args.http_listen {
        config.http_listen = addr;
    }
    Ok(())
}
