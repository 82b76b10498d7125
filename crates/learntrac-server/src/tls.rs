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

/// Builds the rustls configuration from `cert` and `key` (PEM), or from
/// the generated files, creating them if they do not exist. Only TLS 1.2
/// and 1.3 are offered; rustls implements nothing older.
pub fn server_config(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    hostnames: &[String],
) -> Result<ServerConfig> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(cert), Some(key)) => (cert.to_path_buf(), key.to_path_buf()),
        (None, None) => {
            let files = generated_files(data_dir);
            if !files.cert.exists() || !files.key.exists() {
                generate(&files, hostnames)?;
                tracing::info!(ca = %files.ca_cert.display(), "generated a local certificate authority and server certificate");
            }
            (files.cert, files.key)
        }
        _ => bail!("set both tls_cert and tls_key, or neither to use a generated certificate"),
    };

    let chain = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("cannot read TLS certificate {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid PEM in TLS certificate {}", cert_path.display()))?;
    if chain.is_empty() {
        bail!("TLS certificate {} contains no certificate", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("cannot read TLS private key {}", key_path.display()))?;

    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the TLS certificate and key do not match or are not supported")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
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
