//! PostgreSQL over TLS. These tests need a server that requires TLS for
//! the role in `LEARNTRAC_DATABASE_URL`, as `.ci/run` configures one. They
//! run only when `LEARNTRAC_TEST_POSTGRES_TLS=1` and otherwise print why
//! they did nothing.

use crate::harness::{PASSWORD, Server};

/// Returns the TLS-protected database URL, or `None` when the tests are not set up.
fn tls_database_url() -> Option<String> {
    if std::env::var("LEARNTRAC_TEST_POSTGRES_TLS").as_deref() != Ok("1") {
        eprintln!("skipped: set LEARNTRAC_TEST_POSTGRES_TLS=1 with a TLS-only PostgreSQL in LEARNTRAC_DATABASE_URL");
        return None;
    }
    let url = std::env::var("LEARNTRAC_DATABASE_URL").expect("LEARNTRAC_DATABASE_URL");
    assert!(url.contains("sslmode=verify-full"), "the URL must ask for verify-full: {url}");
    Some(url)
}

/// `url` with its query replaced by `query`.
fn with_query(url: &str, query: &str) -> String {
    let base = url.split_once('?').map_or(url, |(base, _)| base);
    format!("{base}?{query}")
}

#[tokio::test]
async fn postgres_rejects_plaintext_connections() {
    let Some(_) = tls_database_url() else { return };
    let mut server = Server::new().await;
    let database_url = server.postgres_url().expect("a PostgreSQL database").to_string();

    server.set_env("LEARNTRAC_DATABASE_URL", &with_query(&database_url, "sslmode=disable"));
    let add = ["user", "add", "--email", "ann@example.org", "--group", "students", "--password-stdin"];
    let plaintext = server.cli(&add, &format!("{PASSWORD}\n"));
    assert!(!plaintext.status.success(), "a plaintext connection must fail");
    let message = String::from_utf8_lossy(&plaintext.stderr);
    assert!(message.contains("LT-DB-CONNECT"), "{message}");

    server.set_env("LEARNTRAC_DATABASE_URL", &database_url);
    let verified = server.cli(&add, &format!("{PASSWORD}\n"));
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
}

#[tokio::test]
async fn postgres_certificate_is_verified() {
    let Some(_) = tls_database_url() else { return };
    let mut server = Server::new().await;
    let database_url = server.postgres_url().expect("a PostgreSQL database").to_string();

    // A CA that did not issue the server's certificate.
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = server.data_dir.join("other-ca.pem");
    std::fs::write(&other_ca, params.self_signed(&key).expect("CA").pem()).expect("write CA");

    let query = format!("sslmode=verify-full&sslrootcert={}", other_ca.display());
    server.set_env("LEARNTRAC_DATABASE_URL", &with_query(&database_url, &query));
    let add = ["user", "add", "--email", "ann@example.org", "--group", "students", "--password-stdin"];
    let output = server.cli(&add, &format!("{PASSWORD}\n"));
    assert!(!output.status.success(), "a certificate from an unknown CA must be rejected");
    assert!(String::from_utf8_lossy(&output.stderr).contains("LT-DB-CONNECT"));
}
