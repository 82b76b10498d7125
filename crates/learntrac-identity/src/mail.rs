//! Outgoing mail: plain-text messages sent through an SMTP server with
//! lettre, or, when no server is configured, appended to a local mbox file
//! that an operator can read.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::AsyncWriteExt;

/// The SMTP server that delivers LearnTrac's mail.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(try_from = "SmtpSettingsFile")]
pub struct SmtpSettings {
    /// Host name or IP address of the server.
    pub host: String,
    /// TCP port. When the settings file leaves it out, it is the standard
    /// port of `security` (see [`SmtpSecurity::default_port`]).
    pub port: u16,
    pub security: SmtpSecurity,
    /// User name for SMTP authentication. Without it, no AUTH is sent.
    pub username: Option<String>,
    /// Name of the secret that contains the SMTP password, which the caller resolves.
    pub password_secret: Option<String>,
    /// PEM file with the CA certificates of a private mail server, trusted
    /// in addition to the system's CA certificates.
    pub ca_file: Option<PathBuf>,
    /// Time limit for sending one message, from connecting to the server's
    /// last reply, in seconds.
    pub timeout_seconds: u64,
}

/// Encryption of the connection to the SMTP server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which the server must offer.
    #[default]
    Starttls,
    /// TLS from the first byte (implicit TLS, "SMTPS").
    Tls,
    /// No encryption, allowed only for a server on the loopback interface.
    None,
}

impl SmtpSecurity {
    /// Returns the standard port: 587 for STARTTLS, 465 for TLS, 25 without encryption.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpSecurity::Starttls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::None => 25,
        }
    }

    fn label(self) -> &'static str {
        match self {
            SmtpSecurity::Starttls => "STARTTLS",
            SmtpSecurity::Tls => "TLS",
            SmtpSecurity::None => "unencrypted",
        }
    }
}

/// `SmtpSettings` as written in the settings file, before the defaults
/// that depend on other fields are filled in.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SmtpSettingsFile {
    host: String,
    port: Option<u16>,
    #[serde(default)]
    security: SmtpSecurity,
    username: Option<String>,
    password_secret: Option<String>,
    ca_file: Option<PathBuf>,
    #[serde(default = "default_timeout_seconds")]
    timeout_seconds: u64,
}

fn default_timeout_seconds() -> u64 {
    10
}

impl TryFrom<SmtpSettingsFile> for SmtpSettings {
    type Error = String;

    fn try_from(file: SmtpSettingsFile) -> Result<Self, String> {
        if file.host.trim().is_empty() {
            return Err("the SMTP setting host is empty; set it to the mail server's host name".into());
        }
        if file.port == Some(0) {
            return Err("the SMTP setting port is 0; leave it out to use the standard port of security".into());
        }
        if file.timeout_seconds == 0 {
            return Err("the SMTP setting timeout_seconds is 0; it must be at least 1".into());
        }
        Ok(SmtpSettings {
            port: file.port.unwrap_or(file.security.default_port()),
            host: file.host,
            security: file.security,
            username: file.username,
            password_secret: file.password_secret,
            ca_file: file.ca_file,
            timeout_seconds: file.timeout_seconds,
        })
    }
}

/// Sends LearnTrac's mail. Clones share the transport.
#[derive(Clone)]
pub struct Mailer {
    inner: Arc<Inner>,
}

struct Inner {
    from: Mailbox,
    transport: Transport,
}

enum Transport {
    Smtp {
        client: AsyncSmtpTransport<Tokio1Executor>,
        host: String,
        port: u16,
        security: SmtpSecurity,
        timeout: Duration,
    },
    Outbox {
        path: PathBuf,
        /// Serialises appends, so that messages sent at once do not interleave.
        /// NOTE: this lock is per process, so two processes that share an
        /// outbox file can still interleave their messages.
        lock: tokio::sync::Mutex<()>,
    },
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer").field("from", &self.inner.from.to_string()).field("via", &self.describe()).finish()
    }
}

impl Mailer {
    /// Creates a mailer that sends as `from` (an address, optionally with a
    /// display name: `LearnTrac <noreply@example.org>`).
    ///
    /// With `smtp`, the settings and the resolved SMTP password, mail goes to
    /// that server. Security `none` is rejected unless the host is
    /// `localhost` or a loopback address, so that neither mail nor password
    /// crosses a network unencrypted. The system's CA certificates and
    /// `ca_file` are read here, so TLS problems show at start-up.
    ///
    /// With `smtp` `None`, each message is appended to the file `outbox`,
    /// which is created with mode 0600 along with its parent directories.
    /// The file is in mboxrd format, with a line `From learntrac <RFC 2822
    /// date>` before each message.
    pub fn new(from: &str, smtp: Option<(&SmtpSettings, Option<String>)>, outbox: PathBuf) -> anyhow::Result<Mailer> {
        let from = parse_mailbox(from, "sender")?;
        let transport = match smtp {
            Some((settings, password)) => smtp_transport(settings, password)?,
            None => Transport::Outbox { path: outbox, lock: tokio::sync::Mutex::new(()) },
        };
        Ok(Mailer { inner: Arc::new(Inner { from, transport }) })
    }

    /// Sends a plain-text message to `to`. An SMTP error names the server
    /// and its reply, such as `permanent error (550): mailbox unavailable`,
    /// and no error contains the password.
    pub async fn send(&self, to: &str, subject: &str, text_body: &str) -> anyhow::Result<()> {
        let recipient = parse_mailbox(to, "recipient")?;
        let message = Message::builder()
            .from(self.inner.from.clone())
            .to(recipient)
            .subject(subject)
            .message_id(Some(message_id(&self.inner.from)?))
            .header(ContentType::TEXT_PLAIN)
            .body(text_body.to_string())
            .with_context(|| format!("building the message to {to} failed"))?;

        match &self.inner.transport {
            Transport::Smtp { client, host, port, timeout, .. } => {
                // lettre 0.11 applies its own timeout only to the TCP connect
                // of the tokio transport, so a server that stops replying
                // would otherwise hold the send forever.
                match tokio::time::timeout(*timeout, client.send(message)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        anyhow::bail!("sending mail to {to} through the SMTP server {host}:{port} failed: {e}")
                    }
                    Err(_) => anyhow::bail!(
                        "sending mail to {to} through the SMTP server {host}:{port} timed out after {} s; \
                         check that the server is reachable and replies, or raise the SMTP setting timeout_seconds",
                        timeout.as_secs()
                    ),
                }
            }
            Transport::Outbox { path, lock } => {
                let entry = mbox_entry(&message.formatted(), SystemTime::now());
                let _guard = lock.lock().await;
                append_to_file(path, &entry).await?;
            }
        }
        tracing::debug!(target: "learntrac::mail", via = %self.describe(), "mail sent");
        Ok(())
    }

    /// Describes where mail goes, for logs and the administration pages:
    /// `SMTP smtp.example.org:587 (STARTTLS)` or `the file /data/mail/outbox
    /// (no SMTP server configured)`.
    pub fn describe(&self) -> String {
        match &self.inner.transport {
            Transport::Smtp { host, port, security, .. } => format!("SMTP {host}:{port} ({})", security.label()),
            Transport::Outbox { path, .. } => format!("the file {} (no SMTP server configured)", path.display()),
        }
    }
}

fn parse_mailbox(address: &str, role: &str) -> anyhow::Result<Mailbox> {
    address.parse::<Mailbox>().map_err(|e| anyhow::anyhow!("the {role} address {address:?} is invalid: {e}"))
}

fn smtp_transport(settings: &SmtpSettings, password: Option<String>) -> anyhow::Result<Transport> {
    let host = &settings.host;
    if settings.security == SmtpSecurity::None && !is_loopback_host(host) {
        anyhow::bail!(
            "the SMTP setting security = \"none\" sends mail and password unencrypted, so it is allowed only \
             for a server on this machine (localhost or a loopback address), not for {host:?}; \
             set security to \"starttls\" (port 587) or \"tls\" (port 465)"
        );
    }

    let tls = match settings.security {
        SmtpSecurity::Starttls => Tls::Required(tls_parameters(settings)?),
        // NOTE: implicit TLS is not tested against a server, because the test
        // SMTP server offers STARTTLS only.
        SmtpSecurity::Tls => Tls::Wrapper(tls_parameters(settings)?),
        SmtpSecurity::None => {
            if let Some(ca_file) = &settings.ca_file {
                tracing::warn!(
                    target: "learntrac::mail",
                    ca_file = %ca_file.display(),
                    "the SMTP setting ca_file has no effect with security = \"none\""
                );
            }
            Tls::None
        }
    };

    let timeout = Duration::from_secs(settings.timeout_seconds);
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(settings.port)
        .tls(tls)
        .timeout(Some(timeout));
    match (&settings.username, password) {
        (Some(username), Some(password)) => builder = builder.credentials(Credentials::new(username.clone(), password)),
        (Some(username), None) => anyhow::bail!(
            "the SMTP setting username is {username:?} but no password was given; \
             set password_secret to the name of the secret that contains the SMTP password"
        ),
        (None, Some(_)) => anyhow::bail!(
            "an SMTP password was given but the SMTP setting username is not set; set username, or remove password_secret"
        ),
        (None, None) => {}
    }

    Ok(Transport::Smtp {
        client: builder.build(),
        host: host.clone(),
        port: settings.port,
        security: settings.security,
        timeout,
    })
}

/// True for `localhost` and for IPv4 and IPv6 loopback addresses, with or
/// without brackets.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Builds the TLS parameters: the system's CA certificates and those of
/// `ca_file`, checked against `host`.
fn tls_parameters(settings: &SmtpSettings) -> anyhow::Result<TlsParameters> {
    let mut builder = TlsParameters::builder(settings.host.clone());
    if let Some(path) = &settings.ca_file {
        for certificate in read_ca_file(path)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build_rustls().map_err(|e| {
        anyhow::anyhow!(
            "setting up TLS for the SMTP server {} failed: {e}; if the system has no CA certificates, \
             set the SMTP setting ca_file to the PEM file of the CA that signed the server's certificate",
            settings.host
        )
    })
}

fn read_ca_file(path: &Path) -> anyhow::Result<Vec<Certificate>> {
    let pem =
        std::fs::read(path).with_context(|| format!("reading the SMTP setting ca_file {} failed", path.display()))?;
    let ders = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("the SMTP setting ca_file {} is not valid PEM: {e}", path.display()))?;
    if ders.is_empty() {
        anyhow::bail!(
            "the SMTP setting ca_file {} contains no certificate; it must contain PEM blocks \
             that start with -----BEGIN CERTIFICATE-----",
            path.display()
        );
    }
    ders.into_iter()
        .map(|der| {
            Certificate::from_der(der.to_vec())
                .map_err(|e| anyhow::anyhow!("the SMTP setting ca_file {} is invalid: {e}", path.display()))
        })
        .collect()
}

/// Makes a `Message-ID` with 128 random bits at the sender's domain.
fn message_id(from: &Mailbox) -> anyhow::Result<String> {
    let mut random = [0u8; 16];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| anyhow::anyhow!("the random number generator failed"))?;
    let hex: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!("<{hex}@{}>", from.email.domain()))
}

/// Formats one mbox entry: a line `From learntrac <RFC 2822 date>`, the
/// RFC 5322 message with LF line ends and mboxrd quoting, and a blank line.
/// Mboxrd quoting adds a `>` to every line that matches `>*From `.
fn mbox_entry(message: &[u8], now: SystemTime) -> Vec<u8> {
    // httpdate writes "Sun, 06 Nov 1994 08:49:37 GMT", but RFC 2822
    // prefers a numeric zone.
    let date = httpdate::fmt_http_date(now);
    let date = date.strip_suffix("GMT").map_or(date.clone(), |rest| format!("{rest}+0000"));

    let text = String::from_utf8_lossy(message);
    let mut entry = format!("From learntrac {date}\n");
    for line in text.lines() {
        if line.trim_start_matches('>').starts_with("From ") {
            entry.push('>');
        }
        entry.push_str(line);
        entry.push('\n');
    }
    entry.push('\n');
    entry.into_bytes()
}

async fn append_to_file(path: &Path, entry: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent)
            .await
            .with_context(|| format!("creating the directory of the mail outbox {} failed", path.display()))?;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .await
        .with_context(|| format!("opening the mail outbox {} failed", path.display()))?;
    file.write_all(entry).await.with_context(|| format!("writing to the mail outbox {} failed", path.display()))?;
    // tokio's File writes in the background, and flush waits until the write has finished.
    file.flush().await.with_context(|| format!("writing to the mail outbox {} failed", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests;
