//! Outgoing HTTPS: the one client builder for calls LearnTrac makes to
//! other services (an external identity provider's JWKS, a model
//! provider, an alert webhook). Certificates are always verified; an
//! egress proxy and extra trusted CAs come from configuration.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

/// Settings for outgoing HTTPS.
#[derive(Clone, Debug)]
pub struct EgressSettings {
    /// `http://HOST:PORT` of a proxy that tunnels HTTPS with CONNECT. When
    /// unset, `HTTPS_PROXY` and `NO_PROXY` from the environment apply.
    pub proxy: Option<String>,
    /// PEM file of CA certificates trusted in addition to the system's.
    pub ca_file: Option<PathBuf>,
    /// Time limit of a whole request.
    pub timeout: Duration,
}

impl Default for EgressSettings {
    fn default() -> EgressSettings {
        EgressSettings { proxy: None, ca_file: None, timeout: Duration::from_secs(30) }
    }
}

/// Builds a client that speaks HTTPS only, through the configured proxy,
/// trusting the system's CAs and those of `ca_file`.
pub fn client(settings: &EgressSettings) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .https_only(true)
        .timeout(settings.timeout)
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("LearnTrac/", env!("CARGO_PKG_VERSION")));
    if let Some(proxy) = &settings.proxy {
        let proxy = reqwest::Proxy::https(proxy)
            .with_context(|| format!("egress_proxy {proxy:?} is not a valid proxy URL; use http://HOST:PORT"))?;
        builder = builder.proxy(proxy);
    }
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path).with_context(|| format!("cannot read egress_ca_file {}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("egress_ca_file {} is not a PEM certificate bundle", path.display()))?;
        if certificates.is_empty() {
            anyhow::bail!("egress_ca_file {} contains no certificate", path.display());
        }
        builder = builder.tls_certs_merge(certificates);
    }
    builder.build().context("cannot build the HTTPS client")
}

/// Formats an error with its causes, which reqwest keeps out of its own message.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("learntrac-egress-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// Serves "ok" over HTTPS on loopback with a certificate from a new
    /// local CA; returns the address and the CA file.
    async fn https_server(dir: &std::path::Path) -> (SocketAddr, PathBuf) {
        let tls = crate::tls::CertificateFiles::resolve(dir, None, None, &["localhost".to_string()])
            .and_then(|files| files.server_config())
            .expect("tls config");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let server = axum_server::from_tcp_rustls(listener, config).expect("server");
        tokio::spawn(server.serve(app.into_make_service()));
        (addr, crate::tls::generated_files(dir).ca_cert)
    }

    /// Starts a CONNECT proxy that records each target and tunnels the bytes.
    async fn connect_proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let targets = Arc::new(Mutex::new(Vec::new()));
        let seen = targets.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut client = BufReader::new(client);
                    let mut request_line = String::new();
                    client.read_line(&mut request_line).await.expect("request line");
                    loop {
                        let mut header = String::new();
                        client.read_line(&mut header).await.expect("header");
                        if header == "\r\n" || header.is_empty() {
                            break;
                        }
                    }
                    let target = request_line.split_whitespace().nth(1).unwrap_or_default().to_string();
                    seen.lock().expect("lock").push(target.clone());
                    let port = target.rsplit(':').next().unwrap_or_default();
                    let mut upstream = TcpStream::connect(format!("127.0.0.1:{port}")).await.expect("upstream");
                    let mut client = client.into_inner();
                    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.expect("reply");
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        (addr, targets)
    }

    #[tokio::test]
    async fn proxy_and_custom_ca_are_used() {
        let dir = temp_dir("proxy");
        let (server, ca_file) = https_server(&dir).await;
        let (proxy, targets) = connect_proxy().await;
        let settings =
            EgressSettings { proxy: Some(format!("http://{proxy}")), ca_file: Some(ca_file), ..Default::default() };

        let url = format!("https://localhost:{}/", server.port());
        let body = client(&settings).expect("client").get(&url).send().await.expect("request").text().await;
        assert_eq!(body.expect("body"), "ok");
        let seen = targets.lock().expect("lock").clone();
        assert_eq!(seen, vec![format!("localhost:{}", server.port())]);
    }

    #[tokio::test]
    async fn unknown_ca_is_rejected() {
        let dir = temp_dir("verify");
        let (server, _ca_file) = https_server(&dir).await;
        let (proxy, _) = connect_proxy().await;
        let settings = EgressSettings { proxy: Some(format!("http://{proxy}")), ..Default::default() };
        let url = format!("https://localhost:{}/", server.port());
        let result = client(&settings).expect("client").get(&url).send().await;
        assert!(result.is_err(), "a certificate from an untrusted CA must be rejected");
    }

    #[tokio::test]
    async fn plain_http_is_refused() {
        let result = client(&EgressSettings::default()).expect("client").get("http://127.0.0.1:9/").send().await;
        assert!(result.is_err());
    }

    #[test]
    fn invalid_ca_file_is_named() {
        let dir = temp_dir("bad-ca");
        let path = dir.join("ca.pem");
        std::fs::write(&path, "not a certificate").expect("write");
        let settings = EgressSettings { ca_file: Some(path.clone()), ..Default::default() };
        let error = client(&settings).expect_err("no certificate");
        assert!(format!("{error:#}").contains(&path.display().to_string()), "{error:#}");
    }
}
