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
        .with_context(|| format!("cannot read TLS certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid PEM in TLS certificate {}", cert.display()))?;
    if chain.is_empty() {
        bail!("TLS certificate {} contains no certificate", cert.display());
    }
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("cannot read TLS private key {}", key.display()))?;
    Ok((chain, key))
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
