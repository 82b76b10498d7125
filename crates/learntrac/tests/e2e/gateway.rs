//! The gateway in front of the roles: TLS versions, redirects, security
//! headers, path checks, size and time limits, filtering rules, rate
//! limits, administration address ranges, certificate reload, and roles in
//! separate processes behind mutual TLS.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{PASSWORD, Server, assert_security_headers, free_port};

/// Runs `openssl s_client` against the server with `options`; true when the
/// handshake succeeded.
fn handshake(server: &Server, options: &[&str]) -> bool {
    let connect = format!("127.0.0.1:{}", server.https_port);
    let output = Command::new("openssl")
        .args(["s_client", "-connect", &connect, "-servername", "localhost"])
        .args(options)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client (apt-get install openssl)");
    let text = String::from_utf8_lossy(&output.stdout);
    output.status.success() && text.contains("Cipher is") && !text.contains("Cipher is (NONE)")
}

#[tokio::test]
async fn tls_versions_and_ciphers() {
    let server = Server::start().await;
    // SECLEVEL=0 lets the client offer the old protocols and ciphers, so a
    // failure is the server's refusal.
    let old = ["-cipher", "DEFAULT:@SECLEVEL=0"];
    assert!(!handshake(&server, &[&["-tls1"][..], &old].concat()), "TLS 1.0 must fail");
    assert!(!handshake(&server, &[&["-tls1_1"][..], &old].concat()), "TLS 1.1 must fail");
    assert!(handshake(&server, &["-tls1_2"]), "TLS 1.2 works");
    assert!(handshake(&server, &["-tls1_3"]), "TLS 1.3 works");
    for cipher in ["AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA", "DHE-RSA-AES128-SHA"] {
        assert!(!handshake(&server, &["-tls1_2", "-cipher", cipher]), "{cipher} lacks forward secrecy or AEAD");
    }
    assert!(handshake(&server, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"]));
}

#[tokio::test]
async fn plain_http_redirects_everything_but_the_health_check() {
    let server = Server::start().await;
    let http = format!("http://127.0.0.1:{}", server.http_port);
    let response = server.client.get(format!("{http}/wiki/WikiStart?version=2&x=%C3%A9")).send().await.expect("GET");
    assert_eq!(response.status(), 308);
    assert!(response.headers().contains_key("x-request-id"), "the redirect names its request id");
    assert_eq!(response.headers()["location"], format!("{}/wiki/WikiStart?version=2&x=%C3%A9", server.base));
    let response = server.client.post(format!("{http}/oauth2/token")).send().await.expect("POST");
    assert_eq!(response.status(), 308, "a post is redirected too, never served");

    let health = server.client.get(format!("{http}/health")).send().await.expect("health");
    assert_eq!(health.status(), 200);
    assert!(health.text().await.expect("text").starts_with("ok"));
    let health = server.client.get(server.url("/health")).send().await.expect("health over HTTPS");
    assert_eq!(health.status(), 200);
    assert_security_headers(&health, "the health check");
}

/// Sends a request with curl and returns the status and body; `options`
/// come before the URL and `data` after it.
fn curl(server: &Server, options: &[&str], data: &[&str], path: &str) -> (String, String) {
    let url = format!("{}{path}", server.base);
    let resolve = format!("localhost:{}:127.0.0.1", server.https_port);
    let ca = server.data_dir.join("tls/ca.pem");
    let output = Command::new("curl")
        .args(["-s", "--resolve", &resolve, "--cacert"])
        .arg(&ca)
        .args(options)
        .args(["-w", "\n%{http_code}", &url])
        .args(data)
        .output()
        .expect("curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", ""));
    (status.to_string(), body.to_string())
}

/// Sends a raw path with curl, which keeps `..` segments as written.
fn raw_status(server: &Server, path: &str) -> (String, String) {
    curl(server, &["--path-as-is"], &[], path)
}

#[tokio::test]
async fn traversal_and_malformed_paths_get_400() {
    let server = Server::start().await;
    for path in [
        "/wiki/../../etc/passwd",
        "/wiki/%2e%2e/%2e%2e/etc/passwd",
        "/wiki/%2E%2E/%2E%2E/etc/passwd",
        "/wiki/%252e%252e/%252e%252e/etc/passwd",
        "/wiki/%25252e%25252e/etc/passwd",
        "/..%2f..%2fetc/passwd",
        "/wiki/..%5c..%5cetc%5cpasswd",
        "/api/v1/../v1/me",
        "/api/v1/%2e%2e/openapi.json",
        "/wiki/./WikiStart",
        "/wiki/%zz",
        "/wiki/%00",
    ] {
        let (status, body) = raw_status(&server, path);
        assert_eq!(status, "400", "{path}: {body}");
        assert!(!body.contains("root:"), "{path} served a file");
        assert!(body.contains("Request id") || body.contains("\"request_id\""), "{path}: no request id: {body}");
    }
    let (status, _) = raw_status(&server, "//wiki//WikiStart");
    assert_eq!(status, "303", "repeated slashes are collapsed and routed");
}

#[tokio::test]
async fn header_body_and_upload_limits() {
    let mut server = Server::new().await;
    server.add_user("teacher@example.org", "instructors");
    server.write_settings("max_upload_mib = 3\n[gateway]\nmax_body_bytes = 65536\n");
    server.serve().await;
    let teacher = server.token("teacher@example.org").await;

    let big_header = "x".repeat(20 * 1024);
    let response =
        server.client.get(server.url("/wiki/WikiStart")).header("x-filler", &big_header).send().await.expect("GET");
    assert_eq!(response.status(), 431, "headers over max_header_bytes");
    assert_security_headers(&response, "a 431");
    let huge_header = "x".repeat(80 * 1024);
    // Far beyond the limit, hyper returns a bare 431 or closes the connection.
    let response = server.client.get(server.url("/wiki/WikiStart")).header("x-filler", &huge_header).send().await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 431);
    }
    let response = server.client.get(server.url("/health")).send().await.expect("health");
    assert_eq!(response.status(), 200, "the server goes on");

    let big_json = json!({"query": "a ".repeat(40_000)});
    let (status, body) = server.post_json(&teacher, "/api/v1/search", &big_json).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "payload_too_large");
    assert!(body["request_id"].is_string());
    // Over HTTP/2 the early response arrives whole, although the body is unread.
    let big_file = server.data_dir.join("big.json");
    std::fs::write(&big_file, serde_json::to_vec(&big_json).expect("json")).expect("write");
    for _ in 0..5 {
        let (status, body) = curl(
            &server,
            &["--http2", "-H", &format!("authorization: Bearer {teacher}"), "-H", "content-type: application/json"],
            &["--data-binary", &format!("@{}", big_file.display())],
            "/api/v1/search",
        );
        assert_eq!(status, "413", "HTTP/2: {body}");
    }
    // The same without a declared length, so that the limit trips while reading.
    let (status, body) = curl(
        &server,
        &["--http2", "-H", &format!("authorization: Bearer {teacher}"), "-H", "content-type: application/json"],
        &["-H", "content-length:", "-T", &big_file.display().to_string(), "-X", "POST"],
        "/api/v1/search",
    );
    assert_eq!(status, "413", "HTTP/2 without a length: {body}");

    // An upload route takes far more than max_body_bytes ...
    let mut book = String::from("# Big book\n\n## Means\n\n");
    while book.len() < 1200 * 1024 {
        book.push_str("The mean of a sample is the sum of its values divided by their count. ");
    }
    // Posts `body` to the upload route as `name`, with `content_type` if given.
    let upload = |name: &str, content_type: Option<&str>, body: String| {
        let mut request = server.client.post(server.url(&format!("/api/v1/books?name={name}"))).bearer_auth(&teacher);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.body(body).send()
    };
    let response = upload("big.md", None, book).await.expect("upload");
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap_or_default());
    // ... but not more than max_upload_mib, and only book types.
    let response = upload("big.md", None, "x".repeat(4 * 1024 * 1024)).await.expect("upload");
    assert_eq!(response.status(), 413);
    let response = upload("tool.exe", None, "MZ".into()).await.expect("upload");
    assert_eq!(response.status(), 415);
    let response = upload("big.md", Some("application/x-msdownload"), "MZ".into()).await.expect("upload");
    assert_eq!(response.status(), 415);
    // The API takes the file itself; a form belongs to the library page.
    let form = "--x\r\n\r\n# A\r\n--x--\r\n".to_string();
    let response = upload("big.md", Some("multipart/form-data; boundary=x"), form).await.expect("upload");
    assert_eq!(response.status(), 415, "multipart to the API");
    // Uploads are checked by type and size, not by the filtering rules.
    let sql_book = "# SQL\n\n## Joins\n\nSELECT name FROM users WHERE id = 1 UNION SELECT 2; -- a comment\n";
    let response = upload("sql.md", None, sql_book.into()).await.expect("upload");
    assert_eq!(response.status(), 202);
}

/// Reads until the peer closes; true when it closed within `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let deadline = Instant::now() + limit;
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error)
                if error.kind() == std::io::ErrorKind::WouldBlock || error.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[tokio::test]
async fn slow_and_greedy_clients_are_cut_off() {
    let mut server = Server::new().await;
    server.write_settings("[gateway]\nheader_read_seconds = 1\nidle_seconds = 2\nconnections_per_client = 3\n");
    server.serve().await;
    let address = format!("127.0.0.1:{}", server.https_port);

    // A client that sends half a request head is disconnected.
    let mut slow = TcpStream::connect(&address).expect("connect");
    slow.write_all(b"\x16\x03\x01").expect("write");
    assert!(closed_within(&mut slow, Duration::from_secs(15)), "a stalled TLS handshake is closed");
    let http = format!("127.0.0.1:{}", server.http_port);
    let mut slow = TcpStream::connect(&http).expect("connect");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n").expect("write");
    assert!(closed_within(&mut slow, Duration::from_secs(6)), "a slow request head is closed");
    // A client that sends nothing is disconnected once idle.
    let mut idle = TcpStream::connect(&http).expect("connect");
    assert!(closed_within(&mut idle, Duration::from_secs(6)), "an idle connection is closed");

    // A fourth connection from one address is refused while three are open
    // (within the one second they have to send a request).
    let open: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&http).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut fourth = TcpStream::connect(&http).expect("connect");
    assert!(closed_within(&mut fourth, Duration::from_millis(500)), "the fourth connection is closed at once");
    let other = server.client_from([127, 0, 0, 2].into());
    let response = other.get(format!("http://127.0.0.1:{}/health", server.http_port)).send().await;
    assert!(response.is_ok_and(|r| r.status() == 200), "another address is still served");
    // Once the three are closed, their places are free again.
    drop(open);
    std::thread::sleep(Duration::from_millis(300));
    let response = server.client.get(format!("http://127.0.0.1:{}/health", server.http_port)).send().await;
    assert!(response.is_ok_and(|r| r.status() == 200), "places are released");
}

/// Adds a small book about SQL and HTML to the library, before the server starts.
fn ingest_small_book(server: &Server) {
    let book = server.data_dir.join("databases.md");
    std::fs::write(
        &book,
        "# Databases\n\n## 1.1 Queries\n\nA query selects rows from a table. SQL queries name columns and a condition.\n\n\
         ## 1.2 Markup\n\nHTML markup wraps text in tags such as paragraphs and scripts.\n",
    )
    .expect("write book");
    server.ingest(&book);
}

/// Creates a path for the learner and returns a ticket id and the token.
async fn learner_ticket(server: &Server) -> (i64, String) {
    let learner = server.token("learner@example.org").await;
    let (status, path) =
        server.post_json(&learner, "/api/v1/paths", &json!({"query": "how do SQL queries select rows"})).await;
    assert_eq!(status, 201, "{path}");
    (path["tickets"][0]["id"].as_i64().expect("ticket id"), learner)
}

#[tokio::test]
async fn filtering_rules_spare_learner_text() {
    let mut server = Server::new().await;
    server.add_user("learner@example.org", "students");
    ingest_small_book(&server);
    // Each attack is also posted to the sign-in form, which counts against
    // the sign-in rate limit before the rules see it.
    server.write_settings("[gateway.rate_limits]\nauth = { per_second = 10.0, burst = 100 }\n");
    server.serve().await;
    let (ticket, learner) = learner_ticket(&server).await;

    // Each rule, with an attack where it does not belong and the same topic
    // written by a learner in an answer.
    let cases: &[(&str, &str, &str)] = &[
        ("sqli-union", "1 UNION SELECT password FROM users", "SELECT name FROM users UNION SELECT name FROM staff"),
        ("sqli-tautology", "x' OR '1'='1", "The condition WHERE id = 1 OR 1=1 is always true."),
        ("sqli-comment", "admin'--", "In SQL, text after -- is a comment, as in 'x' -- note."),
        ("sqli-stacked", "1; DROP TABLE users", "A statement like 1; DROP TABLE users is a stacked query."),
        ("sqli-subquery", "1 AND (SELECT 1)=1", "A subquery such as (SELECT max(x) FROM t) nests a query."),
        ("sqli-function", "1 AND SLEEP(5)", "MySQL's SLEEP(5) pauses; information_schema lists tables."),
        ("xss-script", "<script>alert(1)</script>", "A <script>alert(1)</script> tag runs JavaScript."),
        ("xss-handler", "<img src=x onerror=alert(1)>", "An <img onerror=...> attribute runs on failure."),
        ("xss-url", "javascript:alert(1)", "A javascript: link runs code when clicked."),
        ("xss-tag", "<iframe src=//evil.example>", "An <iframe> embeds another page."),
        ("traversal", "../../etc/passwd", "The path ../../etc/passwd climbs two folders."),
        ("command", "127.0.0.1; cat /etc/hosts", "In a shell, a; cat b runs cat after a."),
    ];
    for (rule, attack, answer) in cases {
        let encoded: String = attack.bytes().map(|b| format!("%{b:02X}")).collect();
        let response =
            server.client.get(server.url(&format!("/wiki/WikiStart?q={encoded}"))).send().await.expect("GET");
        assert_eq!(response.status(), 403, "{rule} in a query string");
        assert_security_headers(&response, "a filtered request");
        let response = server
            .client
            .post(server.url("/login"))
            .form(&[("username", *attack), ("password", "x"), ("next", "/")])
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 403, "{rule} in a form field");
        let (status, _) =
            server.post_json(&learner, "/api/v1/search", &json!({"filter": attack, "query": "sql"})).await;
        assert_eq!(status, 403, "{rule} in a JSON field");

        let (status, graded) =
            server.post_json(&learner, &format!("/api/v1/tickets/{ticket}/answers"), &json!({"answer": answer})).await;
        assert_eq!(status, 201, "{rule}: a learner's answer about it is accepted: {graded}");
        let (status, _) = server.post_json(&learner, "/api/v1/search", &json!({"query": answer})).await;
        assert_ne!(status, 403, "{rule}: a search about it is accepted");
    }
    let response = server
        .client
        .get(server.url("/wiki/WikiStart"))
        .header("user-agent", "sqlmap/1.7.2#stable (https://sqlmap.org)")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 403, "scanner user agent");
    let response = server
        .client
        .get(server.url("/wiki/WikiStart"))
        .header("referer", "https://localhost/?q=<script>alert(1)</script>")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 403, "an attack in a header");
    let (status, _) =
        server.post_json(&learner, &format!("/api/v1/tickets/{ticket}/answers"), &json!({"answer": "a\u{0}b"})).await;
    assert_eq!(status, 403, "control characters in free text");
    let answer = json!({"answer": "page 1\u{c}page 2"});
    let (status, _) = server.post_json(&learner, &format!("/api/v1/tickets/{ticket}/answers"), &answer).await;
    assert_eq!(status, 201, "a form feed pasted from a PDF");
    let response = server.client.get(server.url("/wiki/WikiStart?q=%zz%27%20or%201%3D1--")).send().await.expect("GET");
    assert_eq!(response.status(), 403, "a broken escape does not hide the rest of the value");
    let response = server.client.get(server.url("/wiki/1%20union%20select%201")).send().await.expect("GET");
    assert_eq!(response.status(), 403, "an attack in the path");
    let response = server
        .client
        .get(server.url("/wiki/WikiStart"))
        .header("user-agent", "Mozilla/5.0 (Linux; U; Android 4.4.2; id-id; SM-G7102) AppleWebKit/534.30 Safari/534.30")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 303, "a browser whose locale is id-id");

    // Wiki text about HTML passes too.
    server.add_user("teacher@example.org", "instructors");
    let cookie = server.sign_in("teacher@example.org", PASSWORD).await;
    let text = "= HTML =\nUse <b>bold</b>; never trust <script>alert(1)</script> from users.";
    let response = server.post_form(&cookie, "/wiki/HtmlNotes", &[("text", text)]).await;
    assert_eq!(response.status(), 303, "wiki text about HTML is saved");

    // Every match is logged with its rule id.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = server.stdout_text();
    for (rule, _, _) in cases {
        assert!(log.contains(&format!("\"rule\":\"{rule}\"")), "{rule} is logged");
    }
    assert!(log.contains("\"rule\":\"scanner\""));
}

#[tokio::test]
async fn rules_in_count_mode_log_without_blocking() {
    let mut server = Server::new().await;
    server.write_settings("[gateway.waf.rules]\n\"sqli-union\" = \"count\"\n");
    server.serve().await;
    let response = server.client.get(server.url("/wiki/WikiStart?q=1%20UNION%20SELECT%202")).send().await.expect("GET");
    assert_eq!(response.status(), 303, "counted, then sent on to sign-in");
    let response = server.client.get(server.url("/wiki/WikiStart?q=%3Cscript%3E")).send().await.expect("GET");
    assert_eq!(response.status(), 403, "other rules still block");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = server.stdout_text();
    let line = log.lines().find(|l| l.contains("\"rule\":\"sqli-union\"")).expect("the match is logged");
    assert!(line.contains("\"mode\":\"count\""), "{line}");
    let metrics = reqwest::get(server.metrics_url()).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("learntrac_filter_matches_total{rule=\"sqli-union\",mode=\"count\"} 1"), "{metrics}");
}

#[tokio::test]
async fn token_burst_gets_429() {
    let mut server = Server::new().await;
    server.add_user("learner@example.org", "students");
    server.write_settings(
        "[gateway.rate_limits]\naddress = { per_second = 1000.0, burst = 1000 }\n\
         user = { per_second = 0.01, burst = 5 }\nauth = { per_second = 0.01, burst = 4 }\n",
    );
    server.serve().await;
    let token = server.token("learner@example.org").await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let response = server.token_response("learner@example.org", "Wrong-password-1!").await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert_security_headers(&response, "a 429");
            retry_after = response.headers().get("retry-after").map(|v| v.to_str().expect("ascii").to_string());
            let body: Value = response.json().await.expect("the token endpoint answers JSON");
            assert_eq!(body["error"], "rate_limited");
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let seconds: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!(seconds >= 1, "{seconds}");

    let other = server.client_from([127, 0, 0, 2].into());
    let response = other
        .post(server.url("/oauth2/token"))
        .form(&[
            ("grant_type", "password"),
            ("client_id", "learntrac-cli"),
            ("username", "learner@example.org"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .expect("token");
    assert_eq!(response.status(), 200, "another address is served");
    let body: Value = response.json().await.expect("token JSON");
    let second_token = body["access_token"].as_str().expect("access_token").to_string();

    // The per-user bucket: the sixth request of one user is refused, also
    // with another of that user's tokens.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(server.get_json(&token, "/api/v1/me").await.0);
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429]);
    assert_eq!(server.get_json(&second_token, "/api/v1/me").await.0, 429, "the bucket is per user, not per token");
}

#[tokio::test]
async fn administration_only_from_allowed_ranges() {
    let mut server = Server::new().await;
    server.add_user("root@example.org", "admins");
    server.add_user("learner@example.org", "students");
    server.write_settings("[gateway]\nadmin_networks = [\"10.0.0.0/8\", \"fd00::/8\"]\n");
    server.serve().await;
    let (secret, _) = server.enrol_mfa("root@example.org").await;
    let token = server.mfa_token("root@example.org", &secret, 1).await;
    let (status, body) = server.get_json(&token, "/api/v1/admin/users").await;
    assert_eq!(status, 403, "{body}");
    let cookie = server.sign_in("root@example.org", PASSWORD).await;
    let page = server.client.get(server.url("/admin")).header("cookie", &cookie).send().await.expect("admin page");
    assert_eq!(page.status(), 403);
    assert!(page.text().await.expect("html").contains("not allowed from this address"));
    let output = server.cli(&["audit", "list"], "");
    let audit = String::from_utf8_lossy(&output.stdout);
    let denied = audit.lines().find(|l| l.contains("admin.access") && l.contains("/api/v1/admin/users"));
    let denied = denied.unwrap_or_else(|| panic!("no admin.access record: {audit}"));
    assert!(denied.contains("denied"), "{denied}");
    assert!(denied.contains("user:1"), "the record names the signed-in admin: {denied}");
    assert!(
        audit.lines().any(|l| l.contains("admin.access") && l.contains("/admin") && l.contains("127.0.0.1")),
        "{audit}"
    );
    drop(server);

    // From an allowed address, admins see the pool and learners do not.
    let mut server = Server::new().await;
    server.add_user("root@example.org", "admins");
    server.add_user("learner@example.org", "students");
    server.serve().await;
    let (secret, _) = server.enrol_mfa("root@example.org").await;
    let token = server.mfa_token("root@example.org", &secret, 1).await;
    let (status, body) = server.get_json(&token, "/api/v1/admin/users").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["users"].as_array().map(Vec::len), Some(2));
    let learner = server.token("learner@example.org").await;
    assert_eq!(server.get_json(&learner, "/api/v1/admin/users").await.0, 403);
}

/// Issues a server certificate for localhost under `ca`; returns the
/// certificate chain and the key as PEM.
fn issue_certificate(ca: &(rcgen::Issuer<'static, rcgen::KeyPair>, String), serial: u64) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.serial_number = Some(serial.into());
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.0).expect("sign");
    (format!("{}{}", cert.pem(), ca.1), key.serialize_pem())
}

fn test_ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "Reload test CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-sign");
    (rcgen::Issuer::new(params, key), cert.pem())
}

/// Returns the serial number of the certificate a new connection receives.
fn served_serial(server: &Server) -> String {
    let connect = format!("127.0.0.1:{}", server.https_port);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {connect} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    let mut out = String::new();
    child.stdout.take().expect("stdout").read_to_string(&mut out).expect("read");
    child.wait().expect("wait");
    out.trim().to_string()
}

#[tokio::test]
async fn certificate_files_reload_without_restart() {
    let mut server = Server::new().await;
    let ca = test_ca();
    let cert_file = server.data_dir.join("gateway.pem");
    let key_file = server.data_dir.join("gateway-key.pem");
    let (cert, key) = issue_certificate(&ca, 1001);
    std::fs::write(&cert_file, cert).expect("cert");
    std::fs::write(&key_file, key).expect("key");
    server.write_settings(&format!("tls_cert = {:?}\ntls_key = {:?}\n", cert_file, key_file));
    // The harness trusts DATA_DIR/tls/ca.pem.
    std::fs::create_dir_all(server.data_dir.join("tls")).expect("tls dir");
    std::fs::write(server.data_dir.join("tls/ca.pem"), &ca.1).expect("ca");
    server.serve().await;
    assert_eq!(served_serial(&server), "serial=03E9");

    let (cert, key) = issue_certificate(&ca, 1002);
    std::fs::write(&key_file, key).expect("key");
    std::fs::write(&cert_file, cert).expect("cert");
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_serial(&server) != "serial=03EA" {
        assert!(Instant::now() < deadline, "the new certificate was not served: {}", served_serial(&server));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let response = server.client.get(server.url("/health")).send().await.expect("health");
    assert_eq!(response.status(), 200, "requests go on with the new certificate");

    // A broken file keeps the previous certificate; SIGHUP reloads on demand.
    std::fs::write(&cert_file, "not a certificate").expect("cert");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(served_serial(&server), "serial=03EA");
    assert!(server.stdout_text().contains("still serving the previous one"));
    let (cert, key) = issue_certificate(&ca, 1003);
    std::fs::write(&key_file, key).expect("key");
    std::fs::write(&cert_file, cert).expect("cert");
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_serial(&server) != "serial=03EB" {
        assert!(Instant::now() < deadline, "the repaired certificate was not served");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    server.signal("HUP");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(server.stdout_text().contains("\"signalled\":true"), "{}", server.stdout_text());
    assert_eq!(served_serial(&server), "serial=03EB");
}

/// Builds a client with the internal CA as its only root and, optionally,
/// a client certificate.
fn internal_client(pki: &std::path::Path, identity: Option<(&str, &str)>) -> reqwest::Client {
    let ca = std::fs::read(pki.join("ca.pem")).expect("internal CA");
    let mut builder = reqwest::Client::builder().tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("CA")]);
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).expect("cert");
        pem.extend(std::fs::read(key).expect("key"));
        builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
    }
    builder.build().expect("client")
}

#[tokio::test]
async fn roles_in_separate_processes_behind_one_gateway() {
    let mut server = Server::new().await;
    server.add_user("learner@example.org", "students");
    let output = server.cli(&["pki", "init"], "");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let pki = server.data_dir.join("pki");

    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let (api1_port, api2_port, trac_port, idp_port) = (ports[0], ports[1], ports[2], ports[3]);
    server.write_settings(&format!(
        "log_client_address = \"full\"\n[gateway]\nhealth_check_seconds = 1\n[gateway.upstreams]\n\
         api = [\"https://127.0.0.1:{api1_port}\", \"https://127.0.0.1:{api2_port}\"]\n\
         trac = [\"https://127.0.0.1:{trac_port}\"]\nidp = [\"https://localhost:{idp_port}\"]\n\
         [gateway.rate_limits]\naddress = {{ per_second = 100000.0, burst = 100000 }}\n\
         user = {{ per_second = 100000.0, burst = 100000 }}\n"
    ));
    // All four start at once on a data directory without a signing key,
    // so they must agree on the one key that the first of them stores.
    let (mut api1, api2, _trac, idp) = std::thread::scope(|scope| {
        let api1 = scope.spawn(|| server.spawn_role("api", api1_port));
        let api2 = scope.spawn(|| server.spawn_role("api", api2_port));
        let trac = scope.spawn(|| server.spawn_role("trac", trac_port));
        let idp = scope.spawn(|| server.spawn_role("idp", idp_port));
        let join = |handle: std::thread::ScopedJoinHandle<'_, _>| handle.join().expect("start a role");
        (join(api1), join(api2), join(trac), join(idp))
    });
    let output = server.cli(&["audit", "list", "--action", "secret.generate"], "");
    let generated = String::from_utf8_lossy(&output.stdout);
    assert_eq!(generated.matches("secret:token-signing-key").count(), 1, "{generated}");

    // A role alone refuses clients without the gateway's certificate.
    let health = format!("https://127.0.0.1:{api1_port}/healthz");
    let no_certificate = internal_client(&pki, None);
    assert!(no_certificate.get(&health).send().await.is_err(), "no client certificate");
    let role_as_client = (pki.join("trac.pem"), pki.join("trac-key.pem"));
    let role_client = internal_client(
        &pki,
        Some((role_as_client.0.to_str().expect("path"), role_as_client.1.to_str().expect("path"))),
    );
    assert!(role_client.get(&health).send().await.is_err(), "a role's certificate is not the gateway's");
    let foreign = test_ca();
    let (foreign_cert, foreign_key) = issue_certificate(&foreign, 7);
    let foreign_dir = server.data_dir.join("foreign");
    std::fs::create_dir_all(&foreign_dir).expect("dir");
    std::fs::write(foreign_dir.join("c.pem"), foreign_cert).expect("cert");
    std::fs::write(foreign_dir.join("k.pem"), foreign_key).expect("key");
    let foreign_client = internal_client(
        &pki,
        Some((foreign_dir.join("c.pem").to_str().expect("path"), foreign_dir.join("k.pem").to_str().expect("path"))),
    );
    assert!(foreign_client.get(&health).send().await.is_err(), "a certificate from another CA");
    let gateway_client = internal_client(
        &pki,
        Some((pki.join("gateway.pem").to_str().expect("path"), pki.join("gateway-key.pem").to_str().expect("path"))),
    );
    let response = gateway_client.get(&health).send().await.expect("the gateway's certificate is accepted");
    assert_eq!(response.status(), 200);

    server
        .serve_with(&[
            "gateway",
            "--https-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .await;
    let token = server.token("learner@example.org").await;
    for _ in 0..10 {
        assert_eq!(server.get_json(&token, "/api/v1/me").await.0, 200);
    }
    let cookie = server.sign_in("learner@example.org", PASSWORD).await;
    let page = server.client.get(server.url("/roadmap")).header("cookie", &cookie).send().await.expect("roadmap");
    assert_eq!(page.status(), 200, "pages through the trac process");

    // Both api instances served; the metrics name each.
    let metrics = reqwest::get(server.metrics_url()).await.expect("metrics").text().await.expect("text");
    for port in [api1_port, api2_port] {
        let series = format!("upstream=\"api\",instance=\"https://127.0.0.1:{port}\",outcome=\"answered\"");
        let count: u64 = metrics
            .lines()
            .find(|l| l.contains(&series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(count >= 3, "{series}: {count}\n{metrics}");
    }

    // The client's own X-Forwarded-For is replaced, and the request id
    // reaches the role.
    let response = server
        .client
        .post(server.url("/oauth2/token"))
        .header("x-forwarded-for", "10.9.9.9")
        .form(&[
            ("grant_type", "password"),
            ("client_id", "learntrac-cli"),
            ("username", "nobody@example.org"),
            ("password", "Wrong-password-1!"),
        ])
        .send()
        .await
        .expect("token");
    assert_eq!(response.status(), 400);
    let request_id = response.headers()["x-request-id"].to_str().expect("ascii").to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idp_log = idp.output();
    let line = idp_log
        .lines()
        .find(|l| l.contains("auth event") && l.contains("unknown_account"))
        .expect("the idp logs the failure");
    assert!(line.contains("127.0.0.1"), "{line}");
    assert!(!line.contains("10.9.9.9"), "{line}");
    let served = idp_log.lines().find(|l| l.contains("request served for the gateway") && l.contains(&request_id));
    assert!(served.is_some(), "the role logs the gateway's request id {request_id}:\n{idp_log}");

    // Stopping one api instance loses no request.
    let client = server.client.clone();
    let url = server.url("/api/v1/me");
    let load = tokio::spawn(async move {
        let mut statuses = Vec::new();
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let status = client.get(&url).bearer_auth(&token).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
            statuses.push(status);
        }
        statuses
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    api1.terminate();
    api1.wait(Duration::from_secs(15));
    let statuses = load.await.expect("load");
    assert!(statuses.len() > 10, "{}", statuses.len());
    let failed: Vec<u16> = statuses.iter().copied().filter(|s| *s != 200).collect();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), statuses.len());
    let health = server.client.get(server.url("/health")).send().await.expect("health").text().await.expect("text");
    assert!(health.contains("api: 1 of 2 instances healthy"), "{health}");
    drop(api2);
}

#[tokio::test]
async fn failed_upstreams_give_5xx() {
    let mut server = Server::new().await;
    let output = server.cli(&["pki", "init"], "");
    assert!(output.status.success());
    // An instance that accepts connections and never responds.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let keep: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>> = Default::default();
    let accepted = keep.clone();
    std::thread::spawn(move || {
        for stream in silent.incoming().flatten() {
            accepted.lock().expect("lock").push(stream);
        }
    });
    let closed_port = free_port();
    server.write_settings(&format!(
        "[gateway]\nrequest_seconds = 2\nhealth_check_seconds = 600\n\
         routes = [{{ prefix = \"/\", upstream = \"trac\" }}, {{ prefix = \"/api/\", upstream = \"api\" }}, \
         {{ prefix = \"/oauth2/\", upstream = \"slow\" }}]\n\
         [gateway.upstreams]\napi = [\"https://127.0.0.1:{closed_port}\"]\nslow = [\"https://127.0.0.1:{silent_port}\"]\n"
    ));
    // The settings are checked before anything is created.
    let output = server.run_until_exit(
        &["gateway", "--https-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--metrics-listen", "off"],
        Duration::from_secs(30),
    );
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("\"trac\""), "{error}");
    assert!(error.contains("[gateway.upstreams]"), "{error}");
    assert!(!server.data_dir.join("learntrac.db").exists(), "learntrac gateway created a database before failing");
    server.serve().await;

    let response = server.client.get(server.url("/api/v1/me")).send().await.expect("GET");
    assert_eq!(response.status(), 502, "a refused connection");
    let id = response.headers()["x-request-id"].to_str().expect("ascii").to_string();
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["request_id"], id.as_str());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gateway_log = std::fs::read_to_string(server.data_dir.join("logs/gateway.log")).expect("gateway.log");
    let failure = gateway_log.lines().find(|l| l.contains("upstream request failed")).expect("the failure is logged");
    assert!(failure.contains(&id), "with the request id: {failure}");
    assert!(failure.contains("onnect"), "and its cause: {failure}");
    let response = server.client.get(server.url("/api/v1/me")).send().await.expect("GET");
    assert_eq!(response.status(), 503, "the failed instance is out of rotation");
    let response = server.client.post(server.url("/oauth2/token")).send().await.expect("POST");
    assert_eq!(response.status(), 504, "an instance that never answers");
    let body: Value = response.json().await.expect("the token endpoint answers JSON");
    assert_eq!(body["error"], "gateway_timeout");
    assert!(body["request_id"].is_string(), "{body}");
    let health = server.client.get(server.url("/health")).send().await.expect("health");
    assert_eq!(health.status(), 503, "the load balancer sees the gateway as unhealthy");
    assert_eq!(server.client.get(server.url("/wiki/WikiStart")).send().await.expect("GET").status(), 303);
    drop(keep);
}
