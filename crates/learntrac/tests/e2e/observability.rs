//! Logs, the audit trail, metrics, alerts and `learntrac check`, seen from
//! outside: through HTTPS, the log files and the operator's commands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{PASSWORD, Server};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// Starts an HTTPS listener on loopback that stores each JSON body posted
/// to `/hook`. Returns its address and the CA file that issued its certificate.
async fn webhook_listener(dir: &Path) -> (SocketAddr, PathBuf, Arc<Mutex<Vec<Value>>>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "Webhook test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_file = dir.join("webhook-ca.pem");
    std::fs::write(&ca_file, ca.clone().self_signed(&ca_key).expect("CA").pem()).expect("write CA");
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &Issuer::new(ca, ca_key))
        .expect("leaf");

    let received = Arc::new(Mutex::new(Vec::new()));
    let store = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let store = store.clone();
            async move {
                store.lock().expect("lock").push(body);
                "ok"
            }
        }),
    );
    let config =
        axum_server::tls_rustls::RustlsConfig::from_pem(leaf.pem().into_bytes(), key.serialize_pem().into_bytes())
            .await
            .expect("TLS config");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let address = listener.local_addr().expect("address");
    let server = axum_server::from_tcp_rustls(listener, config).expect("server");
    tokio::spawn(server.serve(app.into_make_service()));
    (address, ca_file, received)
}

async fn wait_for(received: &Arc<Mutex<Vec<Value>>>, count: usize) -> Vec<Value> {
    for _ in 0..100 {
        let seen = received.lock().expect("lock").clone();
        if seen.len() >= count {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    received.lock().expect("lock").clone()
}

#[tokio::test]
async fn bad_token_burst_fires_one_alert() {
    let mut server = Server::new().await;
    let (hook, ca_file, received) = webhook_listener(&server.data_dir).await;
    server.write_settings(&format!(
        "alert_webhook = \"https://localhost:{}/hook\"\negress_ca_file = {:?}\nalert_auth_failures_per_minute = 5\n",
        hook.port(),
        ca_file.display().to_string()
    ));
    server.serve().await;

    for _ in 0..12 {
        let (status, _) = server.get_json("not-a-token", "/api/v1/paths").await;
        assert_eq!(status, 401);
    }
    let alerts = wait_for(&received, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alerts_after = received.lock().expect("lock").clone();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts_after.len(), 1, "repeats are grouped, not posted again: {alerts_after:?}");
    assert_eq!(alerts[0]["rule"], "auth_failures");
    assert_eq!(alerts[0]["source"], "learntrac");
    let subject = alerts[0]["subject"].as_str().expect("subject");
    assert!(subject.starts_with("h:"), "the client address is masked: {subject}");

    // The second firing (at 10 responses) joined the first alert.
    let grouped = server.run_until_exit(
        &["logs", "filter", "--group", "gateway", "--pattern", "alert grouped=true rule=auth_failures"],
        Duration::from_secs(30),
    );
    assert!(stdout(&grouped).contains("\"count\":2"), "{}{}", stdout(&grouped), stderr(&grouped));

    // The operator finds the 401s in the access log from the terminal.
    let filter = server.run_until_exit(
        &["logs", "filter", "--group", "gateway", "--pattern", "unauthorized OR 401 OR 403", "--since", "1h"],
        Duration::from_secs(30),
    );
    assert!(filter.status.success(), "{}", stderr(&filter));
    let by_status = server.run_until_exit(
        &["logs", "filter", "--group", "gateway", "--pattern", "status=401 path=/api/v1/paths"],
        Duration::from_secs(30),
    );
    let lines: Vec<String> = stdout(&by_status).lines().map(String::from).collect();
    assert_eq!(lines.len(), 12, "{lines:?}");
    assert!(stdout(&filter).lines().count() >= 12);
    let line: Value = serde_json::from_str(&lines[0]).expect("JSON line");
    assert_eq!(line["fields"]["client"], subject, "the alert names the address the log shows");

    let requests =
        server.run_until_exit(&["metrics", "requests", "--since", "1h", "--period", "3600"], Duration::from_secs(30));
    let table = stdout(&requests);
    let total_401: u64 = table.lines().skip(1).filter_map(|row| row.split('\t').nth(6)?.parse::<u64>().ok()).sum();
    assert_eq!(total_401, 12, "{table}");
}

#[tokio::test]
async fn metrics_count_requests_and_sign_ins() {
    let mut server = Server::new().await;
    server.add_user("ann@example.org", "students");
    server.serve().await;
    let token = server.token("ann@example.org").await;
    let (status, _) = server.get_json(&token, "/api/v1/tickets/12345").await;
    assert_eq!(status, 404);
    let wrong = server.token_response("ann@example.org", "Wrong-Password-1!").await;
    assert_eq!(wrong.status(), 400);
    for unknown in ["/api/v1/c123", "/api/v1/c456", "/no-such-page-789"] {
        let (status, _) = server.get_json(&token, unknown).await;
        assert_eq!(status, 404, "{unknown}");
    }

    let text = reqwest::get(server.metrics_url()).await.expect("metrics").text().await.expect("text");
    for expected in [
        "learntrac_http_requests_total{route=\"/oauth2/token\",method=\"POST\",status=\"2xx\"} 1",
        "learntrac_http_requests_total{route=\"/api/v1/tickets/{id}\",method=\"GET\",status=\"4xx\"} 1",
        "learntrac_http_request_duration_seconds_count{route=\"/oauth2/token\"} 2",
        "learntrac_sign_ins_total{outcome=\"success\"} 1",
        "learntrac_sign_ins_total{outcome=\"wrong_password\"} 1",
        "learntrac_db_connections_max",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(text.contains("route=\"unmatched\",method=\"GET\",status=\"4xx\"} 3"), "{text}");
    for unknown in ["c123", "c456", "no-such-page"] {
        assert!(!text.contains(unknown), "an unknown path must not become a series: {unknown}");
    }
}

#[tokio::test]
async fn log_files_hold_no_personal_data() {
    let mut server = Server::new().await;
    server.set_env("LEARNTRAC_LOG", "debug,sqlx=warn");
    server.add_user("ann.learner@example.org", "students");
    server.add_user("ted.teacher@example.org", "instructors");
    server.serve().await;

    let token_body: Value =
        server.token_response("ann.learner@example.org", PASSWORD).await.json().await.expect("json");
    let access = token_body["access_token"].as_str().expect("access token").to_string();
    let refresh = token_body["refresh_token"].as_str().expect("refresh token").to_string();
    let _ = server.token_response("ted.teacher@example.org", "Not-The-Password-9!").await;
    let _ = server.token_response("nobody@example.org", PASSWORD).await;
    let cookie = server.sign_in("ted.teacher@example.org", PASSWORD).await;
    let (status, _) = server.get_json(&access, "/api/v1/paths").await;
    assert_eq!(status, 200);
    let (status, _) = server.get_json(&format!("{access}x"), "/api/v1/paths").await;
    assert_eq!(status, 401);
    let one_time =
        server.stderr_text().lines().find_map(|line| line.trim().strip_prefix("One-time password: ").map(String::from));

    let session = cookie.split_once('=').map(|(_, value)| value.to_string()).expect("cookie value");
    let mut secrets = vec![
        "ann.learner@example.org".to_string(),
        "ted.teacher@example.org".to_string(),
        "nobody@example.org".to_string(),
        PASSWORD.to_string(),
        "Not-The-Password-9!".to_string(),
        access,
        refresh,
        session,
    ];
    secrets.extend(one_time);

    let dir = server.data_dir.join("logs");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("log dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read log");
        files += 1;
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{} contains {secret:?}", path.display());
        }
        for line in text.lines().filter(|line| line.contains("\"learntrac::access\"")) {
            let event: Value = serde_json::from_str(line).expect("JSON");
            let client = event["fields"]["client"].as_str().expect("client");
            assert!(client.starts_with("h:"), "client addresses are hashed: {line}");
        }
    }
    assert_eq!(files, 5, "one file per log group");
    let stdout_log = server.stdout_text();
    assert!(!stdout_log.contains("ann.learner@example.org"), "standard output is masked too");
    // Every address of the test's domain appears masked.
    for (at, _) in stdout_log.match_indices("@example.org") {
        assert!(
            stdout_log[..at].ends_with("***"),
            "an unmasked address: {}",
            stdout_log.get(at.saturating_sub(40)..at).unwrap_or_default()
        );
    }
}

/// Opens the server's database directly, as an intruder with file access would.
async fn raw_database(server: &Server) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let url = match server.postgres_url() {
        Some(url) => url.to_string(),
        None => format!("sqlite://{}", server.data_dir.join("learntrac.db").display()),
    };
    sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.expect("open the database")
}

#[tokio::test]
async fn audit_trail_detects_tampering() {
    let mut server = Server::new().await;
    server.add_user("ted@example.org", "instructors");
    server.add_user("ann@example.org", "students");
    server.serve().await;
    let ann = server.token("ann@example.org").await;
    let denied = server.upload(&ann, "notes.md", "# Notes\n\nA learner may not add books.\n").await;
    assert_eq!(denied.status(), 403);
    let cookie = server.sign_in("ted@example.org", PASSWORD).await;
    for text in ["first version", "second version"] {
        let response = server.post_form(&cookie, "/wiki/Notes", &[("text", text)]).await;
        assert_eq!(response.status(), 303);
    }

    let list = server.cli(&["audit", "list", "--action", "wiki.update"], "");
    let rows: Vec<String> = stdout(&list).lines().map(String::from).collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let columns: Vec<&str> = rows[0].split('\t').collect();
    assert!(columns[2].starts_with("user:"), "actor: {}", rows[0]);
    assert_eq!(columns[4], "wiki:Notes");
    assert_eq!(columns[5], "success");
    assert_eq!(columns[6], "127.0.0.1", "the trail keeps the client address");
    assert_ne!(columns[7], "-", "the trail keeps the request id");
    let all = stdout(&server.cli(&["audit", "list"], ""));
    assert!(all.contains("\tuser.create\t"), "{all}");
    assert!(all.contains("\tsecret.generate\t"), "{all}");
    assert!(all.contains("\tsettings.change\tlearntrac.toml\t"), "{all}");
    let denials = stdout(&server.cli(&["audit", "list", "--action", "access.staff_only"], ""));
    assert_eq!(denials.lines().count(), 1, "{denials}");
    assert!(denials.contains("\tPOST /api/v1/books\tdenied\t"), "{denials}");

    let verify = server.cli(&["audit", "verify"], "");
    assert!(verify.status.success(), "{}", stderr(&verify));
    let seq: i64 = columns[0].parse().expect("seq");

    let pool = raw_database(&server).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE audit_log SET details = 'nothing happened' WHERE seq = {seq}")))
        .execute(&pool)
        .await
        .expect("edit a record");
    let edited = server.cli(&["audit", "verify"], "");
    assert!(!edited.status.success());
    assert!(stderr(&edited).contains(&format!("broken at record {seq}")), "{}", stderr(&edited));

    sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM audit_log WHERE seq = {}", seq - 1)))
        .execute(&pool)
        .await
        .expect("delete a record");
    let deleted = server.cli(&["audit", "verify"], "");
    assert!(!deleted.status.success());
    assert!(stderr(&deleted).contains(&format!("broken at record {}", seq - 1)), "{}", stderr(&deleted));
    pool.close().await;

    let check = server.cli(&["check"], "");
    assert!(stdout(&check).contains("fail\taudit_chain"), "{}", stdout(&check));
}

#[tokio::test]
async fn audit_tail_removal_is_detected() {
    let mut server = Server::new().await;
    server.add_user("ann@example.org", "students");
    server.serve().await;
    let verify = server.cli(&["audit", "verify"], "");
    assert!(verify.status.success(), "{}", stderr(&verify));

    // Remove the newest record and rewind the head: the chain in the
    // database is valid again, but the audit log files still list it.
    let pool = raw_database(&server).await;
    let newest: i64 =
        sqlx::Row::get(&sqlx::query("SELECT MAX(seq) AS m FROM audit_log").fetch_one(&pool).await.expect("max"), "m");
    sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM audit_log WHERE seq = {newest}")))
        .execute(&pool)
        .await
        .expect("delete the newest record");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE audit_head SET seq = {}, hash = (SELECT hash FROM audit_log WHERE seq = {})",
        newest - 1,
        newest - 1
    )))
    .execute(&pool)
    .await
    .expect("rewind the head");
    pool.close().await;

    let removed = server.cli(&["audit", "verify"], "");
    assert!(!removed.status.success(), "{}", stdout(&removed));
    assert!(stderr(&removed).contains(&format!("broken at record {newest}")), "{}", stderr(&removed));
    assert!(stderr(&removed).contains("audit log files"), "{}", stderr(&removed));

    // A new record takes the removed number, and still does not match the logs.
    server.add_user("bob@example.org", "students");
    let overwritten = server.cli(&["audit", "verify"], "");
    assert!(!overwritten.status.success(), "{}", stdout(&overwritten));
    assert!(stderr(&overwritten).contains(&format!("broken at record {newest}")), "{}", stderr(&overwritten));
}

#[tokio::test]
async fn audit_commands_create_nothing() {
    let server = Server::new().await;
    let missing = server.data_dir.join("no-such-dir");
    let output = server.cli(&["audit", "verify", "--data-dir", missing.to_str().expect("utf-8")], "");
    assert!(!output.status.success());
    assert!(stderr(&output).contains("does not exist"), "{}", stderr(&output));
    assert!(!missing.exists(), "a mistyped --data-dir must not be created");
}

#[tokio::test]
async fn check_fails_on_development_setup() {
    let mut server = Server::new().await;
    server.serve().await;
    let check = server.cli(&["check"], "");
    assert!(!check.status.success());
    let report = stdout(&check);
    for expected in [
        "pass\ttls_min_version",
        "pass\thsts",
        "warn\tproduction_mode",
        "fail\tcertificate",
        "fail\tadministrators",
        "pass\tmfa_admins",
        "fail\tbackups",
        "pass\taudit_chain",
        "pass\tlog_masking",
        "pass\trate_limits",
        "pass\tdatabase_tls",
        "pass\tadmin_networks",
        "pass\tfiltering_rules",
    ] {
        assert!(report.contains(expected), "missing {expected:?} in:\n{report}");
    }
    assert!(stderr(&check).contains("control(s) failed"), "{}", stderr(&check));

    server.write_settings(
        "log_client_address = \"full\"\n[gateway]\nadmin_networks = [\"0.0.0.0/0\"]\n[gateway.waf]\nmode = \"count\"\n",
    );
    let full = stdout(&server.cli(&["check"], ""));
    assert!(full.contains("fail\tlog_masking"), "{full}");
    assert!(full.contains("fail\tadmin_networks"), "a range open to the internet: {full}");
    assert!(full.contains("warn\tfiltering_rules"), "rules that only count: {full}");
}

#[tokio::test]
async fn check_passes_on_production_setup() {
    let mut server = Server::new().await;
    let settings = crate::operations::production_settings(&mut server, "production = true\n");
    server.write_settings(&settings);
    server.add_user("admin@example.org", "admins");
    server.serve().await;

    let backup = server.backup_path("nightly.ltb");
    let create = server.cli(&["backup", "create", "--out", backup.to_str().expect("utf-8")], "");
    assert!(create.status.success(), "{}", stderr(&create));

    let check = server.cli(&["check"], "");
    let report = stdout(&check);
    assert!(check.status.success(), "{report}{}", stderr(&check));
    assert!(!report.contains("fail\t"), "{report}");
    assert!(report.contains("pass\tbackups"), "{report}");
    assert!(report.contains("pass\tproduction_mode"), "{report}");
    assert!(report.contains("pass\tcertificate"), "{report}");
}
