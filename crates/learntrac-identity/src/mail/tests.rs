use std::os::unix::fs::PermissionsExt;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::*;
use crate::testing::TestSmtpServer;

const WAIT: Duration = Duration::from_secs(10);

/// Returns a fresh path under the system's temporary directory, without
/// creating it.
fn temp_path(name: &str) -> PathBuf {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    std::env::temp_dir().join(format!("learntrac-identity-{name}-{}-{nanos}", std::process::id()))
}

/// Generates a CA and a certificate for 127.0.0.1 and localhost signed by
/// it: (CA certificate PEM, server certificate PEM, server key PEM).
fn certificates() -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "LearnTrac test mail CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("params");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn settings(host: &str, port: u16, security: SmtpSecurity) -> SmtpSettings {
    SmtpSettings {
        host: host.to_string(),
        port,
        security,
        username: None,
        password_secret: None,
        ca_file: None,
        timeout_seconds: 5,
    }
}

fn unused_outbox() -> PathBuf {
    PathBuf::from("/nonexistent/outbox")
}

#[test]
fn settings_port_defaults_by_security() {
    for (security, port) in [("starttls", 587), ("tls", 465), ("none", 25)] {
        let text = format!("host = \"mail.example.org\"\nsecurity = \"{security}\"");
        let settings: SmtpSettings = toml::from_str(&text).expect(&text);
        assert_eq!(settings.port, port, "{security}");
    }

    let settings: SmtpSettings = toml::from_str("host = \"mail.example.org\"").expect("parse");
    assert_eq!(settings.security, SmtpSecurity::Starttls);
    assert_eq!(settings.port, 587);
    assert_eq!(settings.timeout_seconds, 10);
    assert!(settings.username.is_none());
    assert!(settings.password_secret.is_none());
    assert!(settings.ca_file.is_none());

    let settings: SmtpSettings =
        toml::from_str("host = \"mail.example.org\"\nsecurity = \"tls\"\nport = 2465").expect("parse");
    assert_eq!(settings.port, 2465, "an explicit port wins");
}

#[test]
fn settings_reject_invalid_values() {
    let cases = [
        ("host = \"mail.example.org\"\npassword = \"x\"", "password"),
        ("host = \"mail.example.org\"\nsecurity = \"ssl\"", "ssl"),
        ("host = \"mail.example.org\"\nport = 0", "port is 0"),
        ("host = \"mail.example.org\"\ntimeout_seconds = 0", "timeout_seconds is 0"),
        ("host = \" \"", "host is empty"),
        ("port = 25", "host"),
    ];
    for (text, expected) in cases {
        let error = toml::from_str::<SmtpSettings>(text).expect_err(text).to_string();
        assert!(error.contains(expected), "{text}: {error}");
    }
}

#[tokio::test]
async fn outbox_appends_messages() {
    let dir = temp_path("outbox");
    let path = dir.join("mail").join("outbox");
    let mailer = Mailer::new("LearnTrac <noreply@example.org>", None, path.clone()).expect("mailer");
    assert_eq!(mailer.describe(), format!("the file {} (no SMTP server configured)", path.display()));

    mailer.send("jane@example.org", "First subject", "First body.").await.expect("first");
    mailer.clone().send("Bob Smith <bob@example.org>", "Second subject", "Second body.").await.expect("second");

    let mode = std::fs::metadata(&path).expect("outbox").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");

    let text = std::fs::read_to_string(&path).expect("read");
    let separators: Vec<&str> = text.lines().filter(|line| line.starts_with("From ")).collect();
    assert_eq!(separators.len(), 2, "{text}");
    assert!(separators.iter().all(|line| line.starts_with("From learntrac ") && line.ends_with(" +0000")), "{text}");
    assert!(!text.contains('\r'), "LF line ends");

    let (first, second) = text.split_at(text.find("\nFrom learntrac ").expect("second separator") + 1);
    assert!(first.contains("\nTo: jane@example.org\n"), "{first}");
    assert!(first.contains("\nSubject: First subject\n"), "{first}");
    assert!(first.contains("\nFrom: LearnTrac <noreply@example.org>\n"), "{first}");
    assert!(first.contains("\nMessage-ID: <"), "{first}");
    assert!(first.contains("@example.org>\n"), "{first}");
    assert!(first.contains("\nFirst body.\n"), "{first}");
    assert!(first.ends_with("\n\n"), "a blank line ends each entry");
    assert!(second.contains("\nTo: \"Bob Smith\" <bob@example.org>\n"), "{second}");
    assert!(second.contains("\nSubject: Second subject\n"), "{second}");

    std::fs::remove_dir_all(dir).expect("clean up");
}

#[tokio::test]
async fn outbox_handles_concurrent_sends() {
    let dir = temp_path("concurrent");
    let path = dir.join("outbox");
    let mailer = Mailer::new("noreply@example.org", None, path.clone()).expect("mailer");
    let other = mailer.clone();
    let (body_a, body_b) = ("line a\n".repeat(2000), "line b\n".repeat(2000));
    let (first, second) =
        tokio::join!(mailer.send("a@example.org", "A", &body_a), other.send("b@example.org", "B", &body_b));
    first.expect("first");
    second.expect("second");

    let text = std::fs::read_to_string(&path).expect("read");
    for entry in text.split("\nFrom learntrac ").skip(1) {
        let lines: Vec<&str> = entry.lines().filter(|line| line.starts_with("line ")).collect();
        assert_eq!(lines.len(), 2000);
        assert!(lines.windows(2).all(|pair| pair[0] == pair[1]), "entries do not interleave");
    }
    std::fs::remove_dir_all(dir).expect("clean up");
}

#[test]
fn mbox_entry_quotes_from_lines() {
    let message = b"Subject: s\r\n\r\nFrom the start\r\n>From quoted\r\nNot From\r\n";
    let entry = String::from_utf8(mbox_entry(message, SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)))
        .expect("utf-8");
    assert_eq!(
        entry,
        "From learntrac Sun, 09 Sep 2001 01:46:40 +0000\nSubject: s\n\n>From the start\n>>From quoted\nNot From\n\n"
    );
}

#[tokio::test]
async fn subject_cannot_add_headers() {
    let dir = temp_path("header");
    let path = dir.join("outbox");
    let mailer = Mailer::new("noreply@example.org", None, path.clone()).expect("mailer");
    mailer.send("jane@example.org", "Hello\r\nBcc: eve@example.org", "Body.").await.expect("send");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(!text.contains("\nBcc:"), "{text}");
    std::fs::remove_dir_all(dir).expect("clean up");
}

#[tokio::test]
async fn invalid_addresses_are_named() {
    let error = Mailer::new("not an address", None, unused_outbox()).expect_err("invalid sender").to_string();
    assert!(error.contains("sender address \"not an address\" is invalid"), "{error}");

    let mailer = Mailer::new("noreply@example.org", None, unused_outbox()).expect("mailer");
    let error = mailer.send("jane@@example.org", "Subject", "Body").await.expect_err("invalid recipient").to_string();
    assert!(error.contains("recipient address \"jane@@example.org\" is invalid"), "{error}");
}

#[tokio::test]
async fn starttls_with_auth_delivers() {
    let (ca_pem, cert_pem, key_pem) = certificates();
    let server = TestSmtpServer::start(Some((cert_pem, key_pem))).await.expect("server");
    let dir = temp_path("starttls");
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write CA");

    let password = "s3cret-Passw0rd";
    let settings = SmtpSettings {
        username: Some("mailer".to_string()),
        password_secret: Some("smtp-password".to_string()),
        ca_file: Some(ca_file),
        ..settings("127.0.0.1", server.addr().port(), SmtpSecurity::Starttls)
    };
    let mailer =
        Mailer::new("LearnTrac <noreply@example.org>", Some((&settings, Some(password.to_string()))), unused_outbox())
            .expect("mailer");
    assert_eq!(mailer.describe(), format!("SMTP 127.0.0.1:{} (STARTTLS)", server.addr().port()));

    let body = "Hello Jane,\n.hidden line\n..two dots\nBye";
    mailer.send("jane@example.org", "Welcome", body).await.expect("send");

    let mails = server.wait_for(1, WAIT).await.expect("mail");
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.from, "noreply@example.org");
    assert_eq!(mail.to, vec!["jane@example.org".to_string()]);
    assert!(mail.data.contains("\r\nSubject: Welcome\r\n"), "{}", mail.data);
    assert!(
        mail.data.contains("\r\nHello Jane,\r\n.hidden line\r\n..two dots\r\nBye"),
        "dot unstuffing: {}",
        mail.data
    );
    assert!(mail.tls, "the message came over TLS");

    let auth = mail.auth.as_ref().expect("authenticated");
    assert_eq!(auth.username, "mailer");
    assert_eq!(auth.password, password);
    assert!(auth.tls, "the password came over TLS");

    let cleartext = server.cleartext();
    assert!(cleartext.contains("STARTTLS"), "{cleartext}");
    assert!(!cleartext.contains("AUTH"), "{cleartext}");
    assert!(!cleartext.contains("MAIL FROM"), "{cleartext}");
    assert!(!cleartext.contains(password), "{cleartext}");

    std::fs::remove_dir_all(dir).expect("clean up");
}

#[tokio::test]
async fn untrusted_certificate_rejected() {
    let (_, cert_pem, key_pem) = certificates();
    let server = TestSmtpServer::start(Some((cert_pem, key_pem))).await.expect("server");
    let settings = SmtpSettings {
        username: Some("mailer".to_string()),
        ..settings("127.0.0.1", server.addr().port(), SmtpSecurity::Starttls)
    };
    let mailer = Mailer::new("noreply@example.org", Some((&settings, Some("pw-123456".into()))), unused_outbox())
        .expect("mailer");

    let error = mailer.send("jane@example.org", "Welcome", "Body").await.expect_err("untrusted").to_string();
    assert!(error.contains(&format!("SMTP server 127.0.0.1:{}", server.addr().port())), "{error}");
    assert!(error.contains("invalid peer certificate: UnknownIssuer"), "{error}");
    assert!(!error.contains("pw-123456"), "{error}");
    assert!(server.messages().is_empty());
    assert!(!server.cleartext().contains("AUTH"), "no credentials before TLS");
}

#[tokio::test]
async fn starttls_required_when_configured() {
    let server = TestSmtpServer::start(None).await.expect("server");
    let settings = SmtpSettings {
        username: Some("mailer".to_string()),
        ..settings("127.0.0.1", server.addr().port(), SmtpSecurity::Starttls)
    };
    let mailer = Mailer::new("noreply@example.org", Some((&settings, Some("pw-123456".into()))), unused_outbox())
        .expect("mailer");

    let error = mailer.send("jane@example.org", "Welcome", "Body").await.expect_err("no STARTTLS").to_string();
    assert!(error.contains(&format!("SMTP server 127.0.0.1:{}", server.addr().port())), "{error}");
    assert!(!server.cleartext().contains("AUTH"), "no credentials without TLS");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn plain_smtp_to_loopback() {
    let server = TestSmtpServer::start(None).await.expect("server");
    let settings = settings("127.0.0.1", server.addr().port(), SmtpSecurity::None);
    let mailer = Mailer::new("noreply@example.org", Some((&settings, None)), unused_outbox()).expect("mailer");
    assert_eq!(mailer.describe(), format!("SMTP 127.0.0.1:{} (unencrypted)", server.addr().port()));

    mailer.send("jane@example.org", "Plain", "Plain body.").await.expect("send");
    mailer.send("bob@example.org", "Second", "Second body.").await.expect("send");

    let mails = server.wait_for(2, WAIT).await.expect("mails");
    assert_eq!(mails[0].to, vec!["jane@example.org".to_string()]);
    assert!(mails[0].data.contains("\r\nSubject: Plain\r\n"), "{}", mails[0].data);
    assert!(mails[0].data.contains("\r\nPlain body."), "{}", mails[0].data);
    assert!(!mails[0].tls);
    assert!(mails[0].auth.is_none());
    assert_eq!(mails[1].to, vec!["bob@example.org".to_string()]);
}

#[test]
fn security_none_rejected_for_remote_host() {
    for host in ["smtp.example.org", "192.0.2.10", "10.0.0.1", "::ffff:10.0.0.1"] {
        let settings = settings(host, 25, SmtpSecurity::None);
        let error =
            Mailer::new("noreply@example.org", Some((&settings, None)), unused_outbox()).expect_err(host).to_string();
        assert!(error.contains("security = \"none\""), "{error}");
        assert!(error.contains(&format!("{host:?}")), "{error}");
        assert!(error.contains("set security to \"starttls\""), "{error}");
    }
    for host in ["localhost", "LOCALHOST.", "127.0.0.1", "127.1.2.3", "::1", "[::1]"] {
        let settings = settings(host, 25, SmtpSecurity::None);
        assert!(Mailer::new("noreply@example.org", Some((&settings, None)), unused_outbox()).is_ok(), "{host}");
    }
}

#[tokio::test]
async fn recipient_rejection_names_reply() {
    let server = TestSmtpServer::start(None).await.expect("server");
    server.reject_recipients("550 5.1.1 mailbox unavailable");
    let settings = settings("127.0.0.1", server.addr().port(), SmtpSecurity::None);
    let mailer = Mailer::new("noreply@example.org", Some((&settings, None)), unused_outbox()).expect("mailer");

    let error = mailer.send("nobody@example.org", "Hello", "Body").await.expect_err("rejected").to_string();
    assert!(error.contains("nobody@example.org"), "{error}");
    assert!(error.contains(&format!("SMTP server 127.0.0.1:{}", server.addr().port())), "{error}");
    assert!(error.contains("550"), "{error}");
    assert!(error.contains("mailbox unavailable"), "{error}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn silent_server_times_out() {
    // A server that accepts connections and never sends its greeting.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let silent = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let settings = SmtpSettings { timeout_seconds: 1, ..settings("127.0.0.1", port, SmtpSecurity::None) };
    let mailer = Mailer::new("noreply@example.org", Some((&settings, None)), unused_outbox()).expect("mailer");

    let started = std::time::Instant::now();
    let error = mailer.send("jane@example.org", "Hello", "Body").await.expect_err("timeout").to_string();
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(error.contains(&format!("SMTP server 127.0.0.1:{port} timed out after 1 s")), "{error}");
    assert!(error.contains("timeout_seconds"), "{error}");
    silent.abort();
}

#[test]
fn credentials_need_username_and_password() {
    let with_username = SmtpSettings {
        username: Some("mailer".to_string()),
        ..settings("smtp.example.org", 587, SmtpSecurity::Starttls)
    };
    let error = Mailer::new("noreply@example.org", Some((&with_username, None)), unused_outbox())
        .expect_err("no password")
        .to_string();
    assert!(error.contains("password_secret"), "{error}");

    let without_username = settings("smtp.example.org", 587, SmtpSecurity::Starttls);
    let error = Mailer::new("noreply@example.org", Some((&without_username, Some("pw".into()))), unused_outbox())
        .expect_err("no username")
        .to_string();
    assert!(error.contains("username is not set"), "{error}");
}

#[test]
fn ca_file_errors_name_the_file() {
    let dir = temp_path("ca-file");
    std::fs::create_dir_all(&dir).expect("dir");
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").expect("write");
    let missing = dir.join("missing.pem");

    for (path, expected) in [(&empty, "contains no certificate"), (&missing, "reading the SMTP setting ca_file")] {
        let settings =
            SmtpSettings { ca_file: Some(path.clone()), ..settings("smtp.example.org", 587, SmtpSecurity::Starttls) };
        let error = Mailer::new("noreply@example.org", Some((&settings, None)), unused_outbox())
            .expect_err("bad CA file")
            .to_string();
        assert!(error.contains(expected), "{error}");
        assert!(error.contains(&path.display().to_string()), "{error}");
    }
    std::fs::remove_dir_all(dir).expect("clean up");
}

#[test]
fn debug_shows_no_password() {
    let settings =
        SmtpSettings { username: Some("mailer".to_string()), ..settings("smtp.example.org", 465, SmtpSecurity::Tls) };
    let mailer = Mailer::new("noreply@example.org", Some((&settings, Some("pw-987654".into()))), unused_outbox())
        .expect("mailer");
    let debug = format!("{mailer:?}");
    assert!(debug.contains("SMTP smtp.example.org:465 (TLS)"), "{debug}");
    assert!(!debug.contains("pw-987654"), "{debug}");
}
