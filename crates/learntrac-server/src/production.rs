//! The checks that production mode runs before the server starts. Each
//! problem is one message that names what is wrong and how to fix it.

use std::path::Path;

use learntrac_secrets::{KeySource, SecretStore};
use learntrac_store::Store;

use crate::ServerConfig;

/// Values that ship in examples, tutorials and CI scripts, compared
/// without case. A secret equal to one of them, or shorter than
/// [`MIN_SECRET_LEN`], counts as a development value.
const DEVELOPMENT_VALUES: &[&str] = &[
    "admin",
    "changeme",
    "change-me",
    "default",
    "dev",
    "development",
    "example",
    "learntrac",
    "learntrac-ci",
    "letmein",
    "password",
    "postgres",
    "secret",
    "test",
];

const MIN_SECRET_LEN: usize = 12;

/// Words that mark a value as typed by hand for a test, wherever they
/// appear in it, compared without case.
const DEVELOPMENT_WORDS: &[&str] = &["changeme", "password", "letmein", "qwerty", "123456", "learntrac"];

/// A secret made of fewer distinct characters than this is a placeholder.
const MIN_DISTINCT_CHARS: usize = 6;

/// A failed check: the control it belongs to and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// `certificate`, `master_key`, `administrators`, `database_tls`,
    /// `mfa_admins` or `secrets`.
    pub control: &'static str,
    pub message: String,
}

fn tagged(control: &'static str, messages: Vec<String>) -> impl Iterator<Item = Problem> {
    messages.into_iter().map(move |message| Problem { control, message })
}

/// Runs every check and returns the problems found, empty when the
/// configuration is fit for production.
pub async fn problems(config: &ServerConfig, secrets: &SecretStore, store: &Store, now: i64) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut certificate = Vec::new();
    certificate_problems(config, now, &mut certificate);
    problems.extend(tagged("certificate", certificate));
    if let KeySource::File(path) = &config.master_key
        && let Err(error) = learntrac_secrets::check_owner_only(path)
    {
        problems.extend(tagged("master_key", vec![error.to_string()]));
    }
    if let Some(mode) = crate::loose_mode(&config.data_dir) {
        let message = format!(
            "the data directory {} has mode {mode:04o}, so other users may read the database; run `chmod 700 {}`",
            config.data_dir.display(),
            config.data_dir.display()
        );
        problems.extend(tagged("data_dir", vec![message]));
    }
    let administrators = match administrator_problems(store).await {
        Ok(found) => found,
        Err(error) => vec![format!("cannot read the user pool: {error}")],
    };
    problems.extend(tagged("administrators", administrators));
    let (database_tls, database_secrets) = database_problems(config);
    problems.extend(tagged("database_tls", database_tls));
    if !config.identity.mfa_required_groups.contains(&learntrac_store::Group::Admins) {
        let message = "admins may sign in without a second factor; set mfa_required_groups = [\"admins\"] under \
                       [identity] in learntrac.toml";
        problems.extend(tagged("mfa_admins", vec![message.to_string()]));
    }
    problems.extend(tagged("secrets", database_secrets));
    problems.extend(tagged("secrets", secret_problems(secrets)));
    problems
}

fn certificate_problems(config: &ServerConfig, now: i64, problems: &mut Vec<String>) {
    let Some(cert_path) = &config.tls_cert else {
        problems.push(
            "the TLS certificate is the development one LearnTrac generates in DATA_DIR/tls; \
             set tls_cert and tls_key to a certificate issued by your certificate authority"
                .to_string(),
        );
        return;
    };
    match read_leaf(cert_path) {
        Ok(leaf) => {
            if leaf.development {
                problems.push(format!(
                    "TLS certificate {} is the development one, issued by LearnTrac's local CA; \
                     use one issued by your certificate authority",
                    cert_path.display()
                ));
            }
            if leaf.not_before > now {
                problems.push(format!(
                    "TLS certificate {} is not valid before {}; check the certificate and the clock",
                    cert_path.display(),
                    crate::time::format_rfc3339(leaf.not_before)
                ));
            }
            let host = url_host(&config.public_url);
            if !leaf.covers(host) {
                let names: Vec<String> =
                    leaf.dns_names.iter().cloned().chain(leaf.ip_addresses.iter().map(|ip| ip.to_string())).collect();
                problems.push(format!(
                    "TLS certificate {} names {}, not {host}, the host of public_url {}; \
                     use a certificate for that host or correct public_url",
                    cert_path.display(),
                    if names.is_empty() { "no subject alternative name".to_string() } else { names.join(", ") },
                    config.public_url
                ));
            }
            if leaf.self_signed {
                problems.push(format!(
                    "TLS certificate {} is self-signed; use one issued by a certificate authority",
                    cert_path.display()
                ));
            }
            if leaf.not_after < now {
                problems.push(format!(
                    "TLS certificate {} expired at {}; renew it",
                    cert_path.display(),
                    crate::time::format_rfc3339(leaf.not_after)
                ));
            }
        }
        Err(reason) => problems.push(format!("cannot check TLS certificate {}: {reason}", cert_path.display())),
    }
}

async fn administrator_problems(store: &Store) -> learntrac_store::Result<Vec<String>> {
    if store.count_users().await? == 0 {
        return Ok(vec![
            "no user exists, and production mode creates no first-start administrator with a one-time password; \
             create one with `learntrac user add --group admins --email EMAIL --password-stdin`"
                .to_string(),
        ]);
    }
    Ok(store
        .users_with_one_time_password()
        .await?
        .into_iter()
        .map(|email| {
            format!(
                "user {email} still has a first-start one-time password; replace it with \
                 `learntrac user set-password --email {email} --password-stdin`"
            )
        })
        .collect())
}

/// Problems of the database connection: (transport, credentials).
fn database_problems(config: &ServerConfig) -> (Vec<String>, Vec<String>) {
    let url = &config.database_url;
    let target = match learntrac_store::postgres_target(url) {
        Ok(Some(target)) => target,
        Ok(None) => return (Vec::new(), Vec::new()),
        Err(error) => return (vec![format!("database_url is invalid: {error}")], Vec::new()),
    };
    let mut credentials = Vec::new();
    let (authority, query) = split_url(url);
    let inline_password = authority.split_once('@').and_then(|(userinfo, _)| userinfo.split_once(':')).map(|(_, p)| p);
    let query_password = query_param(query, "password");
    if let Some(password) = inline_password.or(query_password) {
        credentials.push(
            "database_url contains the database password in the clear; \
             store it with `learntrac secret put NAME` and set database_password = \"secret:NAME\""
                .to_string(),
        );
        if is_development_value(password) {
            credentials.push("the database password in database_url is a development value".to_string());
        }
    }
    let mut transport = Vec::new();
    if !target.local && !target.verified_tls {
        transport.push(format!(
            "the database at {} is remote and its connection is not verified TLS; \
             add sslmode=verify-full&sslrootcert=CA_FILE to database_url",
            target.host
        ));
    }
    (transport, credentials)
}

/// Returns whether `database_url` names a database on another machine.
pub fn database_is_remote(config: &ServerConfig) -> bool {
    matches!(learntrac_store::postgres_target(&config.database_url), Ok(Some(target)) if !target.local)
}

/// Splits `scheme://authority/path?query` into the authority and the query.
fn split_url(url: &str) -> (&str, &str) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = before_query.split('/').next().unwrap_or_default();
    (authority, query)
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| pair.split_once('=').filter(|(key, _)| *key == name).map(|(_, value)| value))
}

fn secret_problems(secrets: &SecretStore) -> Vec<String> {
    let mut problems = Vec::new();
    for info in secrets.list() {
        match secrets.get(&info.name) {
            Ok(value) if is_development_value(value.expose()) => problems.push(format!(
                "secret {:?} has a development value (a well-known default, or shorter than {MIN_SECRET_LEN} \
                 characters); replace it with `learntrac secret put {}`",
                info.name, info.name
            )),
            Ok(_) => {}
            Err(error) => problems.push(error.to_string()),
        }
    }
    problems
}

fn is_development_value(value: &str) -> bool {
    let value = value.trim();
    let lower = value.to_lowercase();
    let distinct: std::collections::BTreeSet<char> = value.chars().collect();
    value.chars().count() < MIN_SECRET_LEN
        || distinct.len() < MIN_DISTINCT_CHARS
        || DEVELOPMENT_VALUES.iter().any(|known| value.eq_ignore_ascii_case(known))
        || DEVELOPMENT_WORDS.iter().any(|word| lower.contains(word))
}

/// The facts about the server certificate that production mode checks.
#[derive(Debug, PartialEq)]
pub struct LeafCertificate {
    /// The issuer equals the subject.
    pub self_signed: bool,
    /// The issuer is the local CA that LearnTrac generates for development.
    pub development: bool,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// The DNS names of the subject alternative name extension.
    pub dns_names: Vec<String>,
    /// The IP addresses of the subject alternative name extension.
    pub ip_addresses: Vec<std::net::IpAddr>,
}

impl LeafCertificate {
    /// Returns whether the certificate names `host`: an IP address among its
    /// addresses, or a DNS name equal to one of its names, ignoring case.
    /// A `*.` in a name matches exactly one label.
    pub fn covers(&self, host: &str) -> bool {
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
            return self.ip_addresses.contains(&ip);
        }
        let host = host.to_ascii_lowercase();
        self.dns_names.iter().any(|name| {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(suffix) => host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                None => name == host,
            }
        })
    }
}

/// Returns the host of a URL such as `https://learn.example.org:8443/`.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.rsplit_once(':').map_or(authority, |(host, _)| host)
}

/// Reads the first certificate of a PEM file.
pub fn read_leaf(path: &Path) -> Result<LeafCertificate, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let first = CertificateDer::pem_file_iter(path)
        .map_err(|error| format!("cannot read it: {error}"))?
        .next()
        .ok_or("it contains no certificate")?
        .map_err(|error| format!("invalid PEM: {error}"))?;
    der::parse_leaf(first.as_ref()).ok_or_else(|| "it is not a valid X.509 certificate".to_string())
}

/// Just enough DER to read an X.509 certificate's issuer, validity and
/// subject (RFC 5280, section 4.1).
mod der {
    use super::LeafCertificate;

    /// Splits one TLV off `input`: (tag, contents, rest).
    fn read(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (length, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let count = (first & 0x7f) as usize;
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let length = rest[..count].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (length, &rest[count..])
        };
        if rest.len() < length {
            return None;
        }
        Some((tag, &rest[..length], &rest[length..]))
    }

    pub fn parse_leaf(certificate: &[u8]) -> Option<LeafCertificate> {
        let (0x30, certificate, _) = read(certificate)? else { return None };
        let (0x30, tbs, _) = read(certificate)? else { return None };
        let mut rest = tbs;
        if rest.first() == Some(&0xa0) {
            rest = read(rest)?.2;
        }
        let (0x02, _serial, rest) = read(rest)? else { return None };
        let (0x30, _signature, rest) = read(rest)? else { return None };
        let (0x30, issuer, rest) = read(rest)? else { return None };
        let (0x30, validity, rest) = read(rest)? else { return None };
        let (0x30, subject, rest) = read(rest)? else { return None };
        let (0x30, _public_key, mut rest) = read(rest)? else { return None };
        let mut alternative_names = None;
        while !rest.is_empty() {
            let (tag, contents, after) = read(rest)?;
            if tag == 0xa3 {
                alternative_names = subject_alternative_names(contents);
            }
            rest = after;
        }
        let (dns_names, ip_addresses) = alternative_names.unwrap_or_default();
        let (before_tag, not_before, after) = read(validity)?;
        let (after_tag, not_after, _) = read(after)?;
        let local_ca = crate::tls::LOCAL_CA_NAME.as_bytes();
        Some(LeafCertificate {
            self_signed: issuer == subject,
            development: issuer.windows(local_ca.len()).any(|window| window == local_ca),
            not_before: parse_time(before_tag, not_before)?,
            not_after: parse_time(after_tag, not_after)?,
            dns_names,
            ip_addresses,
        })
    }

    /// The object identifier 2.5.29.17, subject alternative name.
    const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

    /// Reads the DNS names and IP addresses of the subject alternative name
    /// extension from the contents of the `[3]` extensions field.
    fn subject_alternative_names(explicit: &[u8]) -> Option<(Vec<String>, Vec<std::net::IpAddr>)> {
        let (0x30, mut extensions, _) = read(explicit)? else { return None };
        while !extensions.is_empty() {
            let (0x30, extension, after) = read(extensions)? else { return None };
            extensions = after;
            let (0x06, oid, mut fields) = read(extension)? else { return None };
            if oid != SUBJECT_ALT_NAME {
                continue;
            }
            if fields.first() == Some(&0x01) {
                fields = read(fields)?.2;
            }
            let (0x04, value, _) = read(fields)? else { return None };
            let (0x30, mut names, _) = read(value)? else { return None };
            let mut dns_names = Vec::new();
            let mut ip_addresses = Vec::new();
            while !names.is_empty() {
                let (tag, name, after) = read(names)?;
                names = after;
                match (tag, name.len()) {
                    (0x82, _) => dns_names.push(String::from_utf8_lossy(name).to_string()),
                    (0x87, 4) => ip_addresses.push(std::net::IpAddr::from(<[u8; 4]>::try_from(name).ok()?)),
                    (0x87, 16) => ip_addresses.push(std::net::IpAddr::from(<[u8; 16]>::try_from(name).ok()?)),
                    _ => {}
                }
            }
            return Some((dns_names, ip_addresses));
        }
        None
    }

    /// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
    fn parse_time(tag: u8, text: &[u8]) -> Option<i64> {
        let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
        let (year, rest) = match (tag, text.len()) {
            (0x17, 12) => {
                let short: i64 = text[..2].parse().ok()?;
                (if short < 50 { 2000 + short } else { 1900 + short }, &text[2..])
            }
            (0x18, 14) => (text[..4].parse().ok()?, &text[4..]),
            _ => return None,
        };
        let field = |range: std::ops::Range<usize>| rest.get(range).and_then(|s| s.parse::<i64>().ok());
        let (month, day, hour, minute, second) =
            (field(0..2)?, field(2..4)?, field(4..6)?, field(6..8)?, field(8..10)?);
        Some(crate::time::days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn times_convert_to_unix_seconds() {
            assert_eq!(parse_time(0x17, b"700101000000Z"), Some(0));
            assert_eq!(parse_time(0x18, b"20261204224710Z"), Some(1_796_424_430));
            assert_eq!(parse_time(0x17, b"491231235959Z"), Some(2_524_607_999));
            assert_eq!(parse_time(0x17, b"7001010000Z"), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_certificate(dir: &Path, self_signed: bool, expired: bool) -> std::path::PathBuf {
        use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let mut params = CertificateParams::new(vec!["learntrac.example.org".to_string()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, "learntrac.example.org");
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let pem = if self_signed {
            params.self_signed(&key).expect("self-signed").pem()
        } else {
            let ca_key = KeyPair::generate().expect("ca key");
            let mut ca_params = CertificateParams::default();
            ca_params.distinguished_name.push(DnType::CommonName, "Example CA");
            ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let issuer = Issuer::new(ca_params, ca_key);
            params.signed_by(&key, &issuer).expect("signed").pem()
        };
        let path = dir.join(format!("cert-{self_signed}-{expired}.pem"));
        std::fs::write(&path, pem).expect("write");
        path
    }

    #[test]
    fn certificate_checks() {
        let dir = std::env::temp_dir().join(format!("lt-prod-{}", crate::random_token(6)));
        std::fs::create_dir_all(&dir).expect("dir");
        let now = crate::unix_now();

        let issued = read_leaf(&write_certificate(&dir, false, false)).expect("issued");
        assert!(!issued.self_signed);
        assert!(issued.not_after > now);
        assert_eq!(issued.dns_names, vec!["learntrac.example.org".to_string()]);
        assert!(issued.covers("learntrac.example.org"));
        assert!(issued.covers("LearnTrac.Example.org"));
        assert!(!issued.covers("other.example.org"));
        assert!(!issued.covers("127.0.0.1"));

        let own = read_leaf(&write_certificate(&dir, true, false)).expect("self-signed");
        assert!(own.self_signed);

        let old = read_leaf(&write_certificate(&dir, false, true)).expect("expired");
        assert_eq!(old.not_after, 1_609_459_200);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn wildcards_and_addresses_are_matched() {
        let leaf = LeafCertificate {
            self_signed: false,
            development: false,
            not_before: 0,
            not_after: 0,
            dns_names: vec!["*.example.org".into()],
            ip_addresses: vec!["10.0.0.5".parse().expect("ip"), "::1".parse().expect("ip")],
        };
        assert!(leaf.covers("learn.example.org"));
        assert!(!leaf.covers("a.learn.example.org"), "a wildcard matches one label");
        assert!(!leaf.covers("example.org"));
        assert!(leaf.covers("10.0.0.5"));
        assert!(leaf.covers("[::1]"));
        assert_eq!(url_host("https://learn.example.org:8443/x"), "learn.example.org");
        assert_eq!(url_host("https://[::1]:8443"), "[::1]");
        assert_eq!(url_host("https://localhost"), "localhost");
    }

    #[test]
    fn remote_database_needs_verified_tls() {
        let mut config = ServerConfig::with_data_dir("/tmp/x".into());
        config.database_url = "postgres://lt@db.example.org/lt".into();
        assert_eq!(database_problems(&config).0.len(), 1);
        assert!(database_is_remote(&config));
        config.database_url = "postgres://lt@db.example.org/lt?sslmode=require".into();
        assert_eq!(database_problems(&config).0.len(), 1);
        config.database_url = "postgres://lt@db.example.org/lt?sslmode=verify-full&sslrootcert=/etc/ca.pem".into();
        assert!(database_problems(&config).0.is_empty());
        config.database_url = "postgres://lt@localhost:5432/lt".into();
        assert!(database_problems(&config).0.is_empty());
        assert!(!database_is_remote(&config));
    }

    #[test]
    fn inline_database_password_is_a_problem() {
        let mut config = ServerConfig::with_data_dir("/tmp/x".into());
        config.database_url = "postgres://lt:learntrac-ci@127.0.0.1/lt".into();
        let (transport, problems) = database_problems(&config);
        assert!(transport.is_empty(), "{transport:?}");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("in the clear"));
        assert!(problems[1].contains("development value"));
    }

    #[test]
    fn development_values() {
        for value in ["changeme", "Password", "short", "learntrac-ci"] {
            assert!(is_development_value(value), "{value}");
        }
        assert!(!is_development_value("t7Vq-9xPz-4LmW-2rKd"));
    }
}
