//! The secrets store, the master key, backups and production mode, driven
//! through the `learntrac` command and a running server.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{PASSWORD, SERVE_ARGS, Server, corpus_dir};

const LIMIT: Duration = Duration::from_secs(60);

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|window| window == needle)
}

/// Returns a base64 master key made of one repeated byte.
fn fixed_key(byte: u8) -> String {
    use std::io::Write;
    let mut encoded = Vec::new();
    let mut child = std::process::Command::new("base64")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("base64");
    child.stdin.take().expect("stdin").write_all(&[byte; 32]).expect("write");
    let output = child.wait_with_output().expect("base64 output");
    encoded.extend_from_slice(&output.stdout);
    String::from_utf8(encoded).expect("ascii").trim().to_string()
}

#[tokio::test]
async fn secret_commands_round_trip() {
    let server = Server::new().await;
    let put = server.cli(&["secret", "put", "smtp-password"], "mail-server-password-1\n");
    assert!(put.status.success(), "{}", stderr(&put));

    let get = server.cli(&["secret", "get", "smtp-password"], "");
    assert!(get.status.success(), "{}", stderr(&get));
    assert_eq!(stdout(&get), "mail-server-password-1\n");

    let replace = server.cli(&["secret", "put", "smtp-password"], "mail-server-password-2");
    assert!(stdout(&replace).contains("replaced"), "{}", stdout(&replace));
    let list = server.cli(&["secret", "list"], "");
    let listed = stdout(&list);
    assert!(listed.contains("smtp-password"), "{listed}");
    assert!(listed.contains("created_at="), "{listed}");
    assert!(listed.contains("rotated_at="), "{listed}");
    assert!(!listed.contains("mail-server-password"), "list must not show values: {listed}");

    let delete = server.cli(&["secret", "delete", "smtp-password"], "");
    assert!(delete.status.success(), "{}", stderr(&delete));
    let missing = server.cli(&["secret", "get", "smtp-password"], "");
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("no secret is named \"smtp-password\""), "{}", stderr(&missing));

    let empty = server.cli(&["secret", "put", "empty"], "");
    assert!(!empty.status.success());
    assert!(stderr(&empty).contains("standard input is empty"), "{}", stderr(&empty));
}

#[tokio::test]
async fn wrong_master_key_is_reported() {
    let mut server = Server::new().await;
    server.set_env("LEARNTRAC_MASTER_KEY", &fixed_key(1));
    let put = server.cli(&["secret", "put", "api-key"], "model-provider-key-123");
    assert!(put.status.success(), "{}", stderr(&put));

    server.set_env("LEARNTRAC_MASTER_KEY", &fixed_key(2));
    let get = server.cli(&["secret", "get", "api-key"], "");
    assert!(!get.status.success());
    let message = stderr(&get);
    assert!(message.contains("LT-MASTER-KEY-WRONG"), "{message}");
    assert!(message.contains("LEARNTRAC_MASTER_KEY"), "{message}");

    let serve = server.run_until_exit(SERVE_ARGS, LIMIT);
    assert!(!serve.status.success());
    assert!(stderr(&serve).contains("LT-MASTER-KEY-WRONG"), "{}", stderr(&serve));

    server.set_env("LEARNTRAC_MASTER_KEY", "not base64!");
    let invalid = server.cli(&["secret", "list"], "");
    assert!(stderr(&invalid).contains("LT-MASTER-KEY-INVALID"), "{}", stderr(&invalid));
}

#[cfg(unix)]
#[tokio::test]
async fn readable_master_key_file_is_rejected() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::new().await;
    let put = server.cli(&["secret", "put", "x"], "some-long-secret-value");
    assert!(put.status.success(), "{}", stderr(&put));
    let key_file = server.data_dir.join("master.key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).expect("chmod");

    let serve = server.run_until_exit(SERVE_ARGS, LIMIT);
    assert!(!serve.status.success());
    let message = stderr(&serve);
    assert!(message.contains("LT-MASTER-KEY-MODE"), "{message}");
    assert!(message.contains("chmod 600"), "{message}");
}

#[tokio::test]
async fn master_key_command_supplies_the_key() {
    let server = Server::new().await;
    let key = fixed_key(7);
    server.write_settings(&format!("master_key_command = [\"printf\", \"%s\", \"{key}\"]\n"));
    let put = server.cli(&["secret", "put", "x"], "value-from-a-key-service");
    assert!(put.status.success(), "{}", stderr(&put));
    assert!(!server.data_dir.join("master.key").exists(), "no key file is written for a command source");

    let mut other = Server::new().await;
    std::fs::copy(server.data_dir.join("secrets.json"), other.data_dir.join("secrets.json")).expect("copy store");
    other.set_env("LEARNTRAC_MASTER_KEY", &key);
    let get = other.cli(&["secret", "get", "x"], "");
    assert_eq!(stdout(&get), "value-from-a-key-service\n", "{}", stderr(&get));
}

#[tokio::test]
async fn rotation_keeps_secrets_readable() {
    let server = Server::new().await;
    for (name, value) in [("a", "first-secret-value"), ("b", "second-secret-value")] {
        assert!(server.cli(&["secret", "put", name], value).status.success());
    }
    let old_key = std::fs::read_to_string(server.data_dir.join("master.key")).expect("key");
    // The two secrets above and the keys LearnTrac generates for itself.
    let count = stdout(&server.cli(&["secret", "list"], "")).lines().count();
    assert!(count >= 2, "{count} secrets");
    let rotate = server.cli(&["secret", "rotate-master-key"], "");
    assert!(rotate.status.success(), "{}", stderr(&rotate));
    assert!(stdout(&rotate).contains(&format!("re-encrypted {count} secret(s)")), "{}", stdout(&rotate));

    let new_key = std::fs::read_to_string(server.data_dir.join("master.key")).expect("key");
    assert_ne!(old_key, new_key);
    let get = server.cli(&["secret", "get", "b"], "");
    assert_eq!(stdout(&get), "second-secret-value\n", "{}", stderr(&get));
    let store = std::fs::read_to_string(server.data_dir.join("secrets.json")).expect("store");
    assert!(!store.contains("second-secret-value"));
}

#[tokio::test]
async fn policy_denial_is_audited() {
    let mut server = Server::new().await;
    let put = server.cli(&["secret", "put", "db-password"], "a-long-database-password");
    assert!(put.status.success(), "{}", stderr(&put));
    // The policy grants the password to the API only, but the trac pages
    // and the identity provider use the database too.
    server.write_settings("database_password = \"secret:db-password\"\n[secret_policy]\napi = [\"db-password\"]\n");
    server.set_env("LEARNTRAC_LOG", "info");

    let serve = server.run_until_exit(SERVE_ARGS, LIMIT);
    assert!(!serve.status.success());
    let message = stderr(&serve);
    assert!(message.contains("LT-SECRET-DENIED: role trac may not read secret \"db-password\""), "{message}");
    let audit = stdout(&serve)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|event| event["target"] == "learntrac::audit")
        .expect("an audit record of the refusal");
    assert_eq!(audit["fields"]["outcome"], "denied");
    assert_eq!(audit["fields"]["role"], "trac");
    assert_eq!(audit["fields"]["secret"], "db-password");
    assert!(!stdout(&serve).contains("a-long-database-password"));
}

#[tokio::test]
async fn plain_database_password_setting_is_rejected() {
    let server = Server::new().await;
    server.write_settings("database_password = \"hunter2\"\n");
    let output = server.cli(&["secret", "list"], "");
    assert!(!output.status.success());
    assert!(stderr(&output).contains("must name a secret as \"secret:NAME\""), "{}", stderr(&output));
}

/// Creates two users, a book, a path with one graded answer and a secret.
async fn populate(server: &mut Server) {
    server.add_user("ann@example.org", "students");
    server.add_user("ted@example.org", "instructors");
    server.ingest(&corpus_dir().join("python-tutorial/appetite.html"));
    let put = server.cli(&["secret", "put", "smtp-password"], "backup-test-secret-value");
    assert!(put.status.success(), "{}", stderr(&put));
    server.serve().await;

    let ann = server.token("ann@example.org").await;
    let (status, path) = server
        .post_json(&ann, "/api/v1/paths", &json!({"query": "why use Python for scripting", "max_concepts": 3}))
        .await;
    assert_eq!(status, 201, "{path}");
    let ticket = path["tickets"][0]["id"].as_i64().expect("ticket id");
    let (status, _) = server
        .post_json(&ann, &format!("/api/v1/tickets/{ticket}/answers"), &json!({"answer": "Python is easy"}))
        .await;
    assert_eq!(status, 201);
}

/// Returns the per-table lines of a backup summary without the audit
/// trail, which grows with every backup and restore.
fn table_lines(summary: &str) -> Vec<String> {
    summary
        .lines()
        .filter(|line| line.starts_with("table ") && !line.starts_with("table audit_"))
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn backup_restores_identical_data() {
    let mut source = Server::new().await;
    populate(&mut source).await;
    let backup = source.backup_path("backup.ltb");
    let backup_arg = backup.to_str().expect("utf-8 path");

    // Taken while the server runs.
    let create = source.cli(&["backup", "create", "--out", backup_arg], "");
    assert!(create.status.success(), "{}", stderr(&create));
    let verify = source.cli(&["backup", "verify", backup_arg], "");
    assert!(verify.status.success(), "{}", stderr(&verify));
    assert!(stdout(&verify).contains("table tickets: "), "{}", stdout(&verify));

    let mut target = Server::new().await;
    std::fs::copy(source.data_dir.join("master.key"), target.data_dir.join("master.key")).expect("copy key");
    let restore = target.cli(&["backup", "restore", backup_arg], "");
    assert!(restore.status.success(), "{}", stderr(&restore));

    let again = target.backup_path("again.ltb");
    let create_again = target.cli(&["backup", "create", "--out", again.to_str().expect("utf-8")], "");
    assert!(create_again.status.success(), "{}", stderr(&create_again));
    let lines_before = table_lines(&stdout(&verify));
    assert_eq!(lines_before.len(), 23, "{lines_before:?}");
    assert_eq!(lines_before, table_lines(&stdout(&create_again)), "restored data differs");

    let get = target.cli(&["secret", "get", "smtp-password"], "");
    assert_eq!(stdout(&get), "backup-test-secret-value\n", "{}", stderr(&get));
    let audit = target.cli(&["audit", "verify"], "");
    assert!(audit.status.success(), "the restored audit trail must verify: {}", stderr(&audit));

    // The restored server signs users in, serves their paths and
    // publishes the same signing key.
    target.serve().await;
    let (status, paths) = target.get_json(&target.token("ann@example.org").await, "/api/v1/paths").await;
    assert_eq!(status, 200, "{paths}");
    assert_eq!(paths["paths"].as_array().expect("paths").len(), 1, "{paths}");
    let (_, source_keys) = source.get_json("", "/.well-known/jwks.json").await;
    let (_, target_keys) = target.get_json("", "/.well-known/jwks.json").await;
    assert_eq!(source_keys["keys"][0]["kid"], target_keys["keys"][0]["kid"]);
    assert!(source_keys["keys"][0]["kid"].is_string(), "{source_keys}");

    // A second restore into the same data directory is refused.
    let twice = target.cli(&["backup", "restore", backup_arg], "");
    assert!(!twice.status.success());
    assert!(stderr(&twice).contains("already exists"), "{}", stderr(&twice));
}

fn write_bytes(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

#[tokio::test]
async fn damaged_backups_are_refused() {
    let source = Server::new().await;
    source.add_user("ann@example.org", "students");
    source.ingest(&corpus_dir().join("python-tutorial/appetite.html"));
    let backup = source.backup_path("backup.ltb");
    let create = source.cli(&["backup", "create", "--out", backup.to_str().expect("utf-8")], "");
    assert!(create.status.success(), "{}", stderr(&create));
    let bytes = std::fs::read(&backup).expect("backup");
    assert!(bytes.len() > 1000, "backup of {} bytes", bytes.len());

    let mut changed = bytes.clone();
    let middle = changed.len() / 2;
    changed[middle] ^= 0x20;
    let truncated = &bytes[..bytes.len() - 200];
    let cases = [
        ("changed", write_bytes(&source.data_dir, "changed.ltb", &changed), "LT-BACKUP-TAMPERED"),
        ("truncated", write_bytes(&source.data_dir, "truncated.ltb", truncated), "LT-BACKUP-TRUNCATED"),
    ];

    for (case, path, code) in &cases {
        let verify = source.cli(&["backup", "verify", path.to_str().expect("utf-8")], "");
        assert!(!verify.status.success(), "{case} backup verified");
        assert!(stderr(&verify).contains(code), "{case}: {}", stderr(&verify));

        let target = Server::new().await;
        std::fs::copy(source.data_dir.join("master.key"), target.data_dir.join("master.key")).expect("copy key");
        let restore = target.cli(&["backup", "restore", path.to_str().expect("utf-8")], "");
        assert!(!restore.status.success(), "{case} backup restored");
        assert!(stderr(&restore).contains(code), "{case}: {}", stderr(&restore));
        assert!(!target.data_dir.join("secrets.json").exists(), "{case}: a refused restore wrote files");

        // The data directory is still empty enough for a good backup.
        let good = target.cli(&["backup", "restore", backup.to_str().expect("utf-8")], "");
        assert!(good.status.success(), "{case}: {}", stderr(&good));
    }

    let mut stranger = Server::new().await;
    stranger.set_env("LEARNTRAC_MASTER_KEY", &fixed_key(9));
    let restore = stranger.cli(&["backup", "restore", backup.to_str().expect("utf-8")], "");
    assert!(!restore.status.success());
    assert!(stderr(&restore).contains("LT-MASTER-KEY-WRONG"), "{}", stderr(&restore));
}

#[tokio::test]
async fn no_plaintext_secret_at_rest_or_in_logs() {
    let mut server = Server::new().await;
    server.set_env("LEARNTRAC_LOG", "debug");
    server.add_user("ann@example.org", "students");
    let secret_value = "Distinctive-Secret-Value-7q2w";
    assert!(server.cli(&["secret", "put", "smtp-password"], secret_value).status.success());
    server.serve().await;
    let token = server.token("ann@example.org").await;
    let (status, _) = server.get_json(&token, "/api/v1/paths").await;
    assert_eq!(status, 200);

    let backup = server.backup_path("backup.ltb");
    let create = server.cli(&["backup", "create", "--out", backup.to_str().expect("utf-8")], "");
    assert!(create.status.success(), "{}", stderr(&create));

    let pem = stdout(&server.cli(&["secret", "get", "token-signing-key"], ""));
    assert!(pem.contains("BEGIN PRIVATE KEY"), "{pem}");
    let key_lines: Vec<&str> = pem.lines().filter(|line| !line.starts_with("-----")).collect();
    assert!(key_lines.len() > 10);
    let key_body: String = key_lines.concat();
    assert!(!server.data_dir.join("keys/token-signing.pem").exists(), "the signing key must not be a plain file");

    let mut files: Vec<PathBuf> = vec![server.data_dir.join("secrets.json"), backup];
    for name in ["learntrac.db", "learntrac.db-wal", "learntrac.db-shm"] {
        let path = server.data_dir.join(name);
        if path.exists() {
            files.push(path);
        }
    }
    let logs = format!("{}{}", server.stdout_text(), server.stderr_text());
    let mut searched: Vec<(String, Vec<u8>)> =
        files.iter().map(|f| (f.display().to_string(), std::fs::read(f).expect("read"))).collect();
    searched.push(("server log".to_string(), logs.into_bytes()));

    for (name, bytes) in &searched {
        assert!(!contains(bytes, secret_value.as_bytes()), "{name} contains the secret");
        assert!(!contains(bytes, key_body.as_bytes()), "{name} contains the signing key");
        for line in &key_lines[1..key_lines.len() - 1] {
            assert!(!contains(bytes, line.as_bytes()), "{name} contains a line of the signing key");
        }
        assert!(!contains(bytes, PASSWORD.as_bytes()), "{name} contains a user's password");
    }
}

/// Writes a certificate for localhost issued by a new CA (or expired, or
/// self-signed) and its key; returns the two paths.
fn write_certificate(dir: &Path, kind: &str) -> (PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let host = if kind == "other-host" { "other.example.net" } else { "localhost" };
    let mut params = CertificateParams::new(vec![host.to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, host);
    if kind == "expired" {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().expect("key");
    let pem = if kind == "self-signed" {
        params.self_signed(&key).expect("self-signed").pem()
    } else {
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, "Test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // The harness's client trusts DATA_DIR/tls/ca.pem.
        std::fs::create_dir_all(dir.join("tls")).expect("tls dir");
        std::fs::write(dir.join("tls/ca.pem"), ca.clone().self_signed(&ca_key).expect("CA").pem()).expect("write CA");
        params.signed_by(&key, &Issuer::new(ca, ca_key)).expect("signed").pem()
    };
    let cert_path = dir.join(format!("{kind}.pem"));
    let key_path = dir.join(format!("{kind}-key.pem"));
    std::fs::write(&cert_path, pem).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (cert_path, key_path)
}

fn serve_args() -> Vec<&'static str> {
    [SERVE_ARGS, &["--production"]].concat()
}

#[tokio::test]
async fn production_mode_rejects_development_setup() {
    let server = Server::new().await;
    assert!(server.cli(&["secret", "put", "smtp-password"], "changeme").status.success());

    let output = server.run_until_exit(&serve_args(), LIMIT);
    assert!(!output.status.success());
    let message = stderr(&output);
    for expected in [
        "production mode cannot start",
        "development one LearnTrac generates",
        "no user exists",
        "secret \"smtp-password\" has a development value",
    ] {
        assert!(message.contains(expected), "missing {expected:?} in:\n{message}");
    }
    assert!(!message.contains("changeme"), "the message must not show the secret: {message}");
    assert!(!message.contains("One-time password"), "production mode must not create a first-start administrator");
}

#[tokio::test]
async fn production_mode_rejects_bad_certificates() {
    for (kind, expected) in
        [("self-signed", "self-signed"), ("expired", "expired"), ("other-host", "other.example.net")]
    {
        let server = Server::new().await;
        let (cert, key) = write_certificate(&server.data_dir, kind);
        server.write_settings(&format!(
            "tls_cert = {:?}\ntls_key = {:?}\npassword_grant = false\n",
            cert.display().to_string(),
            key.display().to_string()
        ));
        let output = server.run_until_exit(&serve_args(), LIMIT);
        assert!(!output.status.success(), "{kind} certificate accepted");
        assert!(stderr(&output).contains(expected), "{kind}: {}", stderr(&output));
    }
}

/// Settings that pass the production checks: a CA-issued certificate, the
/// password grant off and, on PostgreSQL, the password moved from the URL
/// into the secrets store. `top_level` is added before the policy table.
pub fn production_settings(server: &mut Server, top_level: &str) -> String {
    let (cert, key) = write_certificate(&server.data_dir, "issued");
    let mut settings = format!(
        "tls_cert = {:?}\ntls_key = {:?}\npassword_grant = false\n{top_level}",
        cert.display().to_string(),
        key.display().to_string()
    );
    if let Some(url) = server.postgres_url().map(String::from) {
        let (scheme, rest) = url.split_once("://").expect("scheme");
        let (userinfo, host) = rest.split_once('@').expect("userinfo");
        let (user, password) = userinfo.split_once(':').expect("the CI URL has a password");
        let put = server.cli(&["secret", "put", "db-password"], password);
        assert!(put.status.success(), "{}", stderr(&put));
        server.set_env("LEARNTRAC_DATABASE_URL", &format!("{scheme}://{user}@{host}"));
        settings.push_str(
            "database_password = \"secret:db-password\"\n\
             [secret_policy]\ntrac = [\"db-password\"]\napi = [\"db-password\"]\nidp = [\"db-password\"]\n",
        );
    }
    settings.push_str("[identity]\nmfa_required_groups = [\"admins\"]\n");
    settings
}

#[tokio::test]
async fn production_mode_starts_when_every_check_passes() {
    let mut server = Server::new().await;
    let settings = production_settings(&mut server, "");
    server.write_settings(&settings);
    server.add_user("admin@example.org", "admins");

    server.set_env("LEARNTRAC_PRODUCTION", "true");
    server.serve().await;
    assert!(server.stdout_text().contains("production checks passed"), "{}", server.stdout_text());

    // The password grant is off; the sign-in form still works.
    let response = server.token_response("admin@example.org", PASSWORD).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "unsupported_grant_type");
    let cookie = server.sign_in("admin@example.org", PASSWORD).await;
    assert!(cookie.contains('='));
}
