//! The internal certificate authority between the gateway and the roles
//! in other processes. The gateway's certificate is for client
//! authentication only and each role's for server authentication only, so
//! a role's certificate cannot open a connection to another role.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, pem::PemObject};

/// The certificate names `learntrac pki init` issues.
pub const GATEWAY: &str = "gateway";
pub const ROLE_NAMES: &[&str] = &["trac", "api", "idp"];

/// Days the internal CA and the certificates it issues are valid; `pki
/// init --force` issues new ones.
const CA_DAYS: i64 = 3650;
const CERTIFICATE_DAYS: i64 = 825;

/// Common name of the internal CA.
pub const INTERNAL_CA_NAME: &str = "LearnTrac internal CA";

/// `DATA_DIR/pki`, where `learntrac pki init` writes.
pub fn default_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// The CA certificate that verifies the other side, and this process's own
/// certificate and key.
#[derive(Clone, Debug)]
pub struct InternalTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl InternalTls {
    /// Returns the files `learntrac pki init` wrote for `name` in `dir`.
    pub fn in_dir(dir: &Path, name: &str) -> InternalTls {
        InternalTls {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        }
    }

    fn roots(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&self.ca)
            .with_context(|| {
                format!("cannot read the internal CA certificate {}; run `learntrac pki init`", self.ca.display())
            })?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("invalid PEM in {}", self.ca.display()))?;
        if certs.is_empty() {
            bail!("{} contains no certificate", self.ca.display());
        }
        for cert in certs {
            roots.add(cert).with_context(|| format!("{} is not a usable CA certificate", self.ca.display()))?;
        }
        Ok(roots)
    }

    /// Builds a server configuration that requires a client certificate
    /// issued by the CA for client authentication.
    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(self.roots()?))
            .build()
            .context("cannot build the client certificate verifier")?;
        let (chain, key) = crate::tls::load_pair(&self.cert, &self.key)?;
        let mut config = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .context("the role's certificate and key do not match")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Builds an HTTPS client that trusts only the CA and presents this
    /// process's certificate.
    pub fn client(&self) -> Result<reqwest::Client> {
        let (chain, key) = crate::tls::load_pair(&self.cert, &self.key)?;
        let mut config = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(chain, key)
            .context("the gateway's certificate and key do not match")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Redirects go back to the client, which follows them through the gateway.
        reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build()
            .context("cannot build the client for the roles")
    }
}

/// Creates the internal CA in `dir`, a client certificate for the gateway
/// and a server certificate for each role naming `hosts`. Returns the
/// files written. Existing files are kept unless `force` is set.
pub fn init(dir: &Path, hosts: &[String], force: bool) -> Result<Vec<PathBuf>> {
    let ca_file = dir.join("ca.pem");
    if ca_file.exists() && !force {
        bail!("{} already exists; pass --force to replace the internal CA and every certificate", ca_file.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }

    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(DnType::CommonName, INTERNAL_CA_NAME);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    crate::tls::set_validity(&mut ca_params, CA_DAYS);
    let ca_cert = ca_params.self_signed(&ca_key).context("cannot sign the CA certificate")?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut written = vec![ca_file.clone()];
    std::fs::write(&ca_file, ca_cert.pem())?;
    let ca_key_file = dir.join("ca-key.pem");
    crate::write_private(&ca_key_file, ca_key_pem.as_bytes())?;
    written.push(ca_key_file);

    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for host in hosts {
        if !names.contains(host) {
            names.push(host.clone());
        }
    }
    for (name, usage, sans) in std::iter::once((GATEWAY, ExtendedKeyUsagePurpose::ClientAuth, Vec::new()))
        .chain(ROLE_NAMES.iter().map(|role| (*role, ExtendedKeyUsagePurpose::ServerAuth, names.clone())))
    {
        let mut params = CertificateParams::new(sans).context("invalid host name for a certificate")?;
        params.distinguished_name.push(DnType::CommonName, format!("learntrac-{name}"));
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        crate::tls::set_validity(&mut params, CERTIFICATE_DAYS);
        let key = KeyPair::generate().context("cannot generate a key")?;
        let cert = params.signed_by(&key, &issuer).context("cannot sign a certificate")?;
        let files = InternalTls::in_dir(dir, name);
        std::fs::write(&files.cert, cert.pem())?;
        crate::write_private(&files.key, key.serialize_pem().as_bytes())?;
        written.push(files.cert);
        written.push(files.key);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_every_pair_and_refuses_to_overwrite() {
        let dir = std::env::temp_dir().join(format!("learntrac-pki-{}", crate::random_token(6)));
        let written = init(&dir, &["api.internal".to_string()], false).expect("init");
        assert_eq!(written.len(), 2 + 2 * (1 + ROLE_NAMES.len()));
        for name in ROLE_NAMES {
            InternalTls::in_dir(&dir, name).server_config().expect("role config");
        }
        InternalTls::in_dir(&dir, GATEWAY).client().expect("gateway client");
        let error = init(&dir, &[], false).expect_err("second init");
        assert!(error.to_string().contains("--force"), "{error}");
        init(&dir, &[], true).expect("forced init");
        std::fs::remove_dir_all(&dir).ok();
    }
}
