//! Layered settings: defaults, then `DATA_DIR/learntrac.toml`, then
//! `LEARNTRAC_…` environment variables and flags (clap reads both).

use std::path::Path;

use anyhow::{Context, Result, bail};
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
}

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
    Ok(config)
}

/// Applies the listen addresses of `serve` (flags and environment) over
/// the file. The public URL is settled after binding, by the caller.
pub fn apply_serve_args(config: &mut ServerConfig, args: &ServeArgs) {
    if let Some(addr) = args.https_listen {
        config.https_listen = addr;
    }
    if let Some(addr) = args.http_listen {
        config.http_listen = addr;
    }
}
