//! The gateway's TLS configuration: a configured certificate, or a local
//! certificate authority and a server certificate generated at first start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// The common name of the development CA; production mode rejects
/// certificates it issued.
pub const LOCAL_CA_NAME: &str = "LearnTrac local CA";

/// Files written under `DATA_DIR/tls` when no certificate is configured.
pub struct GeneratedFiles {
    /// The local CA certificate, for clients to trust (`curl --cacert`).
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn generated_files(data_dir: &Path) -> GeneratedFiles {
    let dir = data_dir.join("tls");
    GeneratedFiles { ca_cert: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server-key.pem") }
}

/// The certificate and key files the gateway serves, configured or
/// generated.
#[derive(Clone, Debug)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertificateFiles {
    /// Returns `cert` and `key`, or the generated files, creating them if
    /// they do not exist.
    pub fn resolve(
        data_dir: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
        hostnames: &[String],
    ) -> Result<CertificateFiles> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(CertificateFiles { cert: cert.to_path_buf(), key: key.to_path_buf() }),
            (None, None) => {
                let files = generated_files(data_dir);
                if !files.cert.exists() || !files.key.exists() {
                    generate(&files, hostnames)?;
                    tracing::info!(ca = %files.ca_cert.display(), "generated a local certificate authority and server certificate");
                } else if expires_soon(&files.cert) {
                    generate(&files, hostnames)?;
                    tracing::warn!(
                        ca = %files.ca_cert.display(),
                        "the generated certificate was about to expire; generated a new local certificate authority, \
                         which clients must trust again"
                    );
                }
                Ok(CertificateFiles { cert: files.cert, key: files.key })
            }
            _ => bail!("set both tls_cert and tls_key, or neither to use a generated certificate"),
        }
    }

    /// Builds the rustls configuration: TLS 1.3 and 1.2 only, with the
    /// provider's suites, which all have forward secrecy and AEAD ciphers
    /// (rustls implements no CBC, RC4 or static-RSA suite).
    pub fn server_config(&self) -> Result<ServerConfig> {
        let (chain, key) = load_pair(&self.cert, &self.key)?;
        let mut config =
            ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .context("the TLS certificate and key do not match or are not supported")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // The server picks the suite in the provider's order (AES-256-GCM
        // first) rather than the client's.
        config.ignore_client_order = true;
        Ok(config)
    }

    /// Returns the modification times of both files, to notice a replacement.
    fn stamp(&self) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
        let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Some((modified(&self.cert)?, modified(&self.key)?))
    }
}

/// Reads a PEM certificate chain and its private key.
pub fn load_pair(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|error| anyhow::anyhow!("cannot read TLS certificate {}: {}", cert.display(), pem_problem(&error)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            anyhow::anyhow!("invalid PEM in TLS certificate {}: {}", cert.display(), pem_problem(&error))
        })?;
    if chain.is_empty() {
        bail!("TLS certificate {} contains no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|error| anyhow::anyhow!("cannot read TLS private key {}: {}", key.display(), pem_problem(&error)))?;
    Ok((chain, key))
}

/// Describes a PEM error in words; the library's own message shows the
/// missing marker as a list of byte values.
pub(crate) fn pem_problem(error: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::MissingSectionEnd { end_marker } => {
            format!(
                "the line \"-----END {}-----\" is missing; the file is cut short",
                String::from_utf8_lossy(end_marker)
            )
        }
        Error::IllegalSectionStart { line } => {
            format!("the line {:?} does not start a PEM section", String::from_utf8_lossy(line))
        }
        Error::NoItemsFound => "the file contains no PEM item of the expected kind".to_string(),
        other => other.to_string(),
    }
}

/// Reloads the served certificate when its files change (checked every
/// few seconds) or on SIGHUP. A pair that does not load is logged and the
/// previous one kept.
pub async fn watch(files: CertificateFiles, served: axum_server::tls_rustls::RustlsConfig) {
    let mut stamp = files.stamp();
    let mut failed = None;
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(2));
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let signalled = match hangup.as_mut() {
            Some(signal) => tokio::select! {
                _ = ticker.tick() => false,
                _ = signal.recv() => true,
            },
            None => {
                ticker.tick().await;
                false
            }
        };
        #[cfg(not(unix))]
        let signalled = {
            ticker.tick().await;
            false
        };
        let current = files.stamp();
        if !signalled && (current == stamp || current == failed) {
            continue;
        }
        match files.server_config() {
            Ok(config) => {
                stamp = current;
                served.reload_from_config(Arc::new(config));
                tracing::info!(cert = %files.cert.display(), signalled, "reloaded the TLS certificate");
            }
            Err(error) => {
                // A pair half-way through replacement fails once and loads
                // on the next change; a broken pair is reported once.
                failed = current;
                tracing::error!(
                    cert = %files.cert.display(),
                    error = format!("{error:#}"),
                    "cannot reload the TLS certificate; still serving the previous one"
                );
            }
        }
    }
}

/// Days a generated certificate is valid: the longest that browsers accept
/// for a server certificate.
const GENERATED_DAYS: i64 = 397;

/// Days before the end of validity at which the generated certificate is
/// replaced on start.
const RENEW_DAYS: i64 = 30;

/// Returns whether the certificate in `path` ends within [`RENEW_DAYS`]
/// (or cannot be read, which generating anew also fixes).
fn expires_soon(path: &Path) -> bool {
    match crate::production::read_leaf(path) {
        Ok(leaf) => leaf.not_after - crate::unix_now() < RENEW_DAYS * 86_400,
        Err(_) => true,
    }
}

/// Makes `params` valid from yesterday for `days` days, in whole days (UTC).
pub(crate) fn set_validity(params: &mut CertificateParams, days: i64) {
    let today = crate::unix_now().div_euclid(86_400);
    let date = |days: i64| {
        let (year, month, day) = crate::time::civil_from_days(days);
        rcgen::date_time_ymd(year as i32, month as u8, day as u8)
    };
    params.not_before = date(today - 1);
    params.not_after = date(today + days);
}

/// Generates a CA and a server certificate signed by it (rustls rejects a
/// self-signed certificate that is its own CA). The keys are written with
/// mode 0600.
fn generate(files: &GeneratedFiles, hostnames: &[String]) -> Result<()> {
    let dir = files.cert.parent().context("TLS directory has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(DnType::CommonName, LOCAL_CA_NAME);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut ca_params, GENERATED_DAYS);
    let ca_cert = ca_params.self_signed(&ca_key).context("cannot sign the CA certificate")?;

    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    for hostname in hostnames {
        if !names.contains(hostname) {
            names.push(hostname.clone());
        }
    }
    let mut params = CertificateParams::new(names).context("invalid host name for the certificate")?;
    params.distinguished_name.push(DnType::CommonName, "LearnTrac gateway");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut params, GENERATED_DAYS);
    let server_key = KeyPair::generate().context("cannot generate the server key")?;
    let issuer = Issuer::new(ca_params, ca_key);
    let server_cert = params.signed_by(&server_key, &issuer).context("cannot sign the server certificate")?;

    std::fs::write(&files.ca_cert, ca_cert.pem())?;
    std::fs::write(&files.cert, format!("{}{}", server_cert.pem(), ca_cert.pem()))?;
    crate::write_private(&files.key, server_key.serialize_pem().as_bytes())?;
    Ok(())
}

/// Wraps the configuration for axum-server.
pub fn rustls_config(config: ServerConfig) -> axum_server::tls_rustls::RustlsConfig {
    axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_renews_near_expiry() {
        let dir = std::env::temp_dir().join(format!("learntrac-tls-{}", crate::random_token(6)));
        let files = CertificateFiles::resolve(&dir, None, None, &["learn.example".to_string()]).expect("generate");
        let leaf = crate::production::read_leaf(&files.cert).expect("leaf");
        let now = crate::unix_now();
        assert!(leaf.not_before <= now, "{leaf:?}");
        assert!(leaf.not_before > now - 3 * 86_400, "{leaf:?}");
        let days = (leaf.not_after - now) / 86_400;
        assert!((GENERATED_DAYS - 1..=GENERATED_DAYS).contains(&days), "{days}");
        assert!(leaf.covers("learn.example"));

        // A certificate near its end is replaced on the next start.
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let key = KeyPair::generate().expect("key");
        std::fs::write(&files.cert, params.self_signed(&key).expect("sign").pem()).expect("write");
        CertificateFiles::resolve(&dir, None, None, &[]).expect("renew");
        let renewed = crate::production::read_leaf(&files.cert).expect("leaf");
        assert!(renewed.not_after > now + 300 * 86_400, "{renewed:?}");
        files.server_config().expect("the renewed pair loads");
        std::fs::remove_dir_all(&dir).ok();
    }
}
