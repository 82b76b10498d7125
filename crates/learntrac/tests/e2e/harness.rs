//! Starts the real `learntrac` binary on free loopback ports with a fresh
//! data directory and database, and talks to it over HTTPS.
//!
//! The database is SQLite in the data directory unless
//! `LEARNTRAC_DATABASE_URL` names a PostgreSQL server; then each server
//! gets a new database on it, dropped afterwards.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_learntrac");

/// `learntrac serve` on free loopback ports.
pub const SERVE_ARGS: &[&str] =
    &["serve", "--https-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];

/// Headers the gateway puts on every response.
pub const SECURITY_HEADERS: &[&str] = &[
    "strict-transport-security",
    "content-security-policy",
    "x-content-type-options",
    "x-frame-options",
    "x-xss-protection",
    "referrer-policy",
    "permissions-policy",
    "x-request-id",
];

/// Fails unless `response` carries every header in [`SECURITY_HEADERS`];
/// `what` names the response in the message.
pub fn assert_security_headers(response: &reqwest::Response, what: &str) {
    for name in SECURITY_HEADERS {
        assert!(response.headers().contains_key(*name), "{name} is missing on {what}");
    }
}

/// A test user's password; it meets the password policy.
pub const PASSWORD: &str = "Learn-Trac-2026!";

/// Serves `app` over HTTPS on a free loopback port with a certificate
/// for 127.0.0.1 from a CA made for it, written to `dir/NAME-ca.pem`, as a
/// stand-in for a service LearnTrac calls. Returns the base address, the
/// CA file and the handle that stops the server.
pub async fn serve_https(
    dir: &Path,
    name: &str,
    app: axum::Router,
) -> (String, PathBuf, axum_server::Handle<std::net::SocketAddr>) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.clone().self_signed(&ca_key).expect("CA");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("leaf params");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
    let ca_file = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    let tls =
        axum_server::tls_rustls::RustlsConfig::from_pem(leaf.pem().into_bytes(), leaf_key.serialize_pem().into_bytes())
            .await
            .expect("TLS config");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(listener, tls).expect("server").handle(handle.clone());
    tokio::spawn(async move { server.serve(app.into_make_service()).await });
    (format!("https://127.0.0.1:{port}"), ca_file, handle)
}

/// Returns the all-MiniLM-L6-v2 folder from `LEARNTRAC_MINILM_DIR`. When it
/// is not set, prints that the test is skipped and returns `None`, unless
/// `LEARNTRAC_REQUIRE_MODEL=1` makes that a failure.
pub fn minilm_dir() -> Option<String> {
    let Ok(model) = std::env::var("LEARNTRAC_MINILM_DIR") else {
        assert!(
            std::env::var("LEARNTRAC_REQUIRE_MODEL").as_deref() != Ok("1"),
            "LEARNTRAC_REQUIRE_MODEL=1 but LEARNTRAC_MINILM_DIR is not set"
        );
        eprintln!("skipped: set LEARNTRAC_MINILM_DIR to the all-MiniLM-L6-v2 folder");
        return None;
    };
    Some(model)
}

/// Directory of the real textbooks: `LEARNTRAC_CORPUS`, or `../shared/corpus`
/// beside the repository.
pub fn corpus_dir() -> PathBuf {
    std::env::var_os("LEARNTRAC_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"))
}

pub struct Server {
    pub data_dir: PathBuf,
    database: Option<PostgresDatabase>,
    child: Option<Child>,
    /// `https://localhost:PORT`
    pub base: String,
    pub https_port: u16,
    pub http_port: u16,
    /// Port of the Prometheus metrics listener, once its log line is seen.
    metrics_port: Arc<Mutex<u16>>,
    pub client: reqwest::Client,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    /// Environment variables added to every command, after the defaults.
    extra_env: Vec<(String, String)>,
}

impl Server {
    /// Prepares a data directory and database without starting the server.
    pub async fn new() -> Server {
        let data_dir = std::env::temp_dir().join(format!("learntrac-test-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)).expect("chmod data dir");
        }
        let database = match std::env::var("LEARNTRAC_DATABASE_URL") {
            Ok(url) if url.starts_with("postgres") => Some(PostgresDatabase::create(&url).await),
            _ => None,
        };
        Server {
            data_dir,
            database,
            child: None,
            base: String::new(),
            https_port: 0,
            http_port: 0,
            metrics_port: Arc::default(),
            client: reqwest::Client::new(),
            stderr: Arc::default(),
            stdout: Arc::default(),
            extra_env: Vec::new(),
        }
    }

    /// Sets an environment variable for every later command.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra_env.retain(|(k, _)| k != key);
        self.extra_env.push((key.to_string(), value.to_string()));
    }

    /// Returns the PostgreSQL URL of this server's database, when tests run on PostgreSQL.
    pub fn postgres_url(&self) -> Option<&str> {
        self.database.as_ref().map(|db| db.url.as_str())
    }

    /// `DATA_DIR/backups/NAME`, creating the directory; backups may not be
    /// written directly into the data directory.
    pub fn backup_path(&self, name: &str) -> PathBuf {
        let dir = self.data_dir.join("backups");
        std::fs::create_dir_all(&dir).expect("create the backup directory");
        dir.join(name)
    }

    /// Writes `DATA_DIR/learntrac.toml`.
    pub fn write_settings(&self, toml: &str) {
        std::fs::write(self.data_dir.join("learntrac.toml"), toml).expect("write learntrac.toml");
    }

    /// Runs `learntrac ARGS` and waits at most `limit` for it to exit; a
    /// command still running then is killed and reported.
    pub fn run_until_exit(&self, args: &[&str], limit: Duration) -> Output {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn learntrac");
        let deadline = std::time::Instant::now() + limit;
        while child.try_wait().expect("poll learntrac").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let output = child.wait_with_output().expect("wait for learntrac");
                panic!(
                    "learntrac {args:?} was still running after {limit:?}; stderr:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().expect("wait for learntrac")
    }

    /// Prepares and starts a server.
    pub async fn start() -> Server {
        let mut server = Server::new().await;
        server.serve().await;
        server
    }

    fn command(&self) -> Command {
        let mut command = Command::new(BIN);
        command.env("LEARNTRAC_DATA_DIR", &self.data_dir).env("LEARNTRAC_LOG", "info,learntrac::access=info");
        match &self.database {
            Some(db) => command.env("LEARNTRAC_DATABASE_URL", &db.url),
            None => command.env_remove("LEARNTRAC_DATABASE_URL"),
        };
        command.env_remove("LEARNTRAC_MASTER_KEY").env_remove("LEARNTRAC_PRODUCTION");
        for (key, value) in &self.extra_env {
            command.env(key, value);
        }
        command
    }

    /// Runs `learntrac ARGS` on this server's data directory and database.
    pub fn cli(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn learntrac");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
        child.wait_with_output().expect("wait for learntrac")
    }

    pub fn add_user(&self, email: &str, group: &str) {
        let output = self
            .cli(&["user", "add", "--email", email, "--group", group, "--password-stdin"], &format!("{PASSWORD}\n"));
        assert!(output.status.success(), "user add failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    pub fn ingest(&self, file: &Path) -> String {
        let output = self.cli(&["ingest", file.to_str().expect("utf-8 path")], "");
        assert!(output.status.success(), "ingest failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).to_string()
    }

    /// Starts a server with the instructor teacher@example.org and the
    /// learner learner@example.org, and returns it with their access tokens.
    pub async fn with_teacher_and_learner() -> (Server, String, String) {
        let mut server = Server::new().await;
        server.add_user("teacher@example.org", "instructors");
        server.add_user("learner@example.org", "students");
        server.serve().await;
        let teacher = server.token("teacher@example.org").await;
        let learner = server.token("learner@example.org").await;
        (server, teacher, learner)
    }

    /// Starts `learntrac serve` on port 0 and waits for its bound addresses.
    pub async fn serve(&mut self) {
        self.serve_with(SERVE_ARGS).await;
    }

    /// Starts `learntrac ARGS` (`serve` or `gateway` with their listen
    /// flags) and waits for its bound addresses.
    pub async fn serve_with(&mut self, args: &[&str]) {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn learntrac serve");

        let (sender, receiver) = mpsc::channel::<(u16, u16)>();
        let stdout = child.stdout.take().expect("stdout");
        let stdout_log = self.stdout.clone();
        let metrics_port = self.metrics_port.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    if event["fields"]["message"] == "metrics listening" {
                        let port = event["fields"]["metrics"].as_str().and_then(|a| a.rsplit(':').next());
                        *metrics_port.lock().expect("port lock") = port.and_then(|p| p.parse().ok()).unwrap_or(0);
                    }
                    if event["fields"]["message"] == "gateway listening" {
                        let port = |key: &str| {
                            event["fields"][key]
                                .as_str()
                                .and_then(|a| a.rsplit(':').next())
                                .and_then(|p| p.parse().ok())
                                .unwrap_or(0)
                        };
                        let _ = sender.send((port("https"), port("http")));
                    }
                }
                stdout_log.lock().expect("log lock").push_str(&format!("{line}\n"));
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let stderr_log = self.stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                stderr_log.lock().expect("log lock").push_str(&format!("{line}\n"));
            }
        });
        self.child = Some(child);

        let (https_port, http_port) = match receiver.recv_timeout(Duration::from_secs(60)) {
            Ok(ports) => ports,
            Err(_) => panic!("server did not start; stderr:\n{}\nstdout:\n{}", self.stderr_text(), self.stdout_text()),
        };
        self.https_port = https_port;
        self.http_port = http_port;
        self.base = format!("https://localhost:{https_port}");
        self.client = self.client_from([127, 0, 0, 1].into());
    }

    /// Builds a client that trusts the generated CA and connects from `local`
    /// (any 127.x.y.z address reaches the loopback listener).
    pub fn client_from(&self, local: std::net::IpAddr) -> reqwest::Client {
        let ca = std::fs::read(self.data_dir.join("tls/ca.pem")).expect("read generated CA");
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA certificate"))
            .resolve("localhost", ([127, 0, 0, 1], self.https_port).into())
            .local_address(local)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client")
    }

    /// Starts `learntrac ROLE --listen 127.0.0.1:PORT` on this server's data
    /// directory and database, and waits until it listens.
    pub fn spawn_role(&self, role: &str, port: u16) -> Process {
        let listen = format!("127.0.0.1:{port}");
        let mut child = self
            .command()
            .args([role, "--listen", &listen])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a role");
        let output: Arc<Mutex<String>> = Arc::default();
        let (sender, receiver) = mpsc::channel::<()>();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let output = output.clone();
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains("role listening for the gateway") {
                        let _ = sender.send(());
                    }
                    output.lock().expect("log lock").push_str(&format!("{line}\n"));
                }
            });
        }
        let process = Process { child, output };
        if receiver.recv_timeout(Duration::from_secs(60)).is_err() {
            panic!("learntrac {role} did not start:\n{}", process.output());
        }
        process
    }

    /// `http://127.0.0.1:PORT/metrics`, waiting up to 10 s for the listener.
    /// Stops `learntrac serve`, so that it can be started again with
    /// other settings.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn metrics_url(&self) -> String {
        for _ in 0..200 {
            let port = *self.metrics_port.lock().expect("port lock");
            if port != 0 {
                return format!("http://127.0.0.1:{port}/metrics");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the metrics listener did not start; stdout:\n{}", self.stdout_text());
    }

    /// Sends a signal such as `HUP` to the running server.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("the server runs").id().to_string();
        let status = Command::new("kill").args([&format!("-{name}"), &pid]).status().expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("log lock").clone()
    }

    pub fn stdout_text(&self) -> String {
        self.stdout.lock().expect("log lock").clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Requests tokens with the password grant and returns the whole response.
    pub async fn token_response(&self, email: &str, password: &str) -> reqwest::Response {
        self.password_grant(email, password, None).await
    }

    /// Requests tokens with the password grant and, when given, a second factor.
    pub async fn password_grant(&self, email: &str, password: &str, mfa_code: Option<&str>) -> reqwest::Response {
        let mut form = vec![
            ("grant_type", "password"),
            ("client_id", "learntrac-cli"),
            ("username", email),
            ("password", password),
        ];
        if let Some(code) = mfa_code {
            form.push(("mfa_code", code));
        }
        self.client.post(self.url("/oauth2/token")).form(&form).send().await.expect("token request")
    }

    /// Returns an access token for a user created with [`PASSWORD`].
    pub async fn token(&self, email: &str) -> String {
        let response = self.token_response(email, PASSWORD).await;
        assert_eq!(response.status(), 200, "token for {email}");
        let body: Value = response.json().await.expect("token JSON");
        body["access_token"].as_str().expect("access_token").to_string()
    }

    pub async fn get_json(&self, token: &str, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).bearer_auth(token).send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, token: &str, path: &str, body: &Value) -> (u16, Value) {
        let response = self.client.post(self.url(path)).bearer_auth(token).json(body).send().await.expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Uploads a book through the API as `name`.
    pub async fn upload(&self, token: &str, name: &str, body: &'static str) -> reqwest::Response {
        let url = self.url(&format!("/api/v1/books?name={name}"));
        self.client.post(url).bearer_auth(token).body(body).send().await.expect("upload")
    }

    /// Waits until the library job that `response` (202) accepted ends and
    /// returns the job as `GET /api/v1/jobs/{id}` shows it last.
    pub async fn finished_job(&self, token: &str, response: reqwest::Response) -> Value {
        assert_eq!(response.status(), 202, "an upload is accepted as a job");
        let job: Value = response.json().await.expect("job JSON");
        self.wait_for_job(token, job["id"].as_i64().expect("job id")).await
    }

    /// Polls a library job until it has ended, for at most two minutes.
    pub async fn wait_for_job(&self, token: &str, id: i64) -> Value {
        for _ in 0..1200 {
            let (status, job) = self.get_json(token, &format!("/api/v1/jobs/{id}")).await;
            assert_eq!(status, 200, "{job}");
            if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or_default()) {
                return job;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("job {id} did not end within two minutes");
    }

    /// Signs in through the form and returns the session cookie
    /// (`__Host-lt_session=…`).
    pub async fn sign_in(&self, email: &str, password: &str) -> String {
        let (form_cookie, token) = self.anonymous_form("/login").await;
        let response = self
            .client
            .post(self.url("/login"))
            .header("cookie", &form_cookie)
            .form(&[("username", email), ("password", password), ("next", "/wiki/WikiStart"), ("csrf", &token)])
            .send()
            .await
            .expect("sign in");
        assert_eq!(response.status(), 303, "sign-in redirects");
        set_cookie(&response, "__Host-lt_session").expect("session cookie")
    }

    /// Opens an anonymous form page and returns its form cookie pair and
    /// the token its forms carry.
    pub async fn anonymous_form(&self, path: &str) -> (String, String) {
        let response = self.client.get(self.url(path)).send().await.expect("form page");
        let cookie = set_cookie(&response, "__Host-lt_form").expect("form cookie");
        let html = response.text().await.expect("form page body");
        (cookie, form_token(&html).expect("form token"))
    }

    /// Returns the form token of a signed-in session, from a page every
    /// session may open.
    pub async fn csrf(&self, session: &str) -> String {
        let response =
            self.client.get(self.url("/account/password")).header("cookie", session).send().await.expect("page");
        form_token(&response.text().await.expect("password page")).expect("form token")
    }

    /// Signs `email` in with [`PASSWORD`], turns on TOTP through the account
    /// pages as a user would, and returns the secret (base32) with the
    /// recovery codes shown.
    pub async fn enrol_mfa(&self, email: &str) -> (String, Vec<String>) {
        let session = self.sign_in(email, PASSWORD).await;
        let page = self.client.get(self.url("/account/mfa")).header("cookie", &session).send().await.expect("mfa page");
        let html = page.text().await.expect("mfa page");
        let secret = between(&html, "id=\"totp-secret\">", "</code>").expect("secret on the page");
        let sealed = between(&html, "name=\"sealed\" value=\"", "\"").expect("sealed secret");
        let issued = between(&html, "name=\"issued\" value=\"", "\"").expect("issue time");
        let code = totp_code(&secret, 0);
        let response = self
            .post_form(&session, "/account/mfa", &[("sealed", &sealed), ("issued", &issued), ("code", &code)])
            .await;
        assert_eq!(response.status(), 200, "enrolment");
        let html = response.text().await.expect("codes");
        let list = between(&html, "id=\"recovery-codes\">", "</ul>").expect("recovery codes");
        let codes = list.split("<code>").skip(1).filter_map(|item| item.split("</code>").next()).map(String::from);
        (secret, codes.collect())
    }

    /// Requests tokens with the password grant and a second factor.
    pub async fn token_with_code(&self, email: &str, code: &str) -> reqwest::Response {
        self.password_grant(email, PASSWORD, Some(code)).await
    }

    /// Returns an access token for a user with TOTP, using the code of the
    /// time step `steps` after the current one (each step's code works once).
    pub async fn mfa_token(&self, email: &str, secret: &str, steps: i64) -> String {
        let response = self.token_with_code(email, &totp_code(secret, steps)).await;
        assert_eq!(response.status(), 200, "token for {email}");
        let body: Value = response.json().await.expect("token JSON");
        body["access_token"].as_str().expect("access_token").to_string()
    }

    /// Posts a form as the signed-in `session`, with its form token.
    pub async fn post_form(&self, session: &str, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let token = self.csrf(session).await;
        let mut fields = fields.to_vec();
        fields.push(("csrf", &token));
        self.client.post(self.url(path)).header("cookie", session).form(&fields).send().await.expect("form post")
    }
}

/// Returns the `name=value` pair of cookie `name` set by `response`.
pub fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
        .find(|pair| pair.starts_with(&format!("{name}=")))
}

/// Returns the TOTP code of `secret` for the time step `steps` after the current one.
pub fn totp_code(secret: &str, steps: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    learntrac_identity::totp::TotpSecret::from_base32(secret).expect("base32 secret").code_at(now + 30 * steps)
}

/// Returns the text between `start` and the next `end` in `text`.
pub fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(text[from..to].to_string())
}

/// Returns the form token in a page: a hidden `csrf` field or the `csrf`
/// query parameter of a multipart form's action.
pub fn form_token(html: &str) -> Option<String> {
    let start = html
        .find("name=\"csrf\" value=\"")
        .map(|i| i + "name=\"csrf\" value=\"".len())
        .or_else(|| html.find("?csrf=").map(|i| i + "?csrf=".len()))?;
    let rest = &html[start..];
    let end = rest.find(['"', '&'])?;
    Some(rest[..end].to_string())
}

/// A role process started by [`Server::spawn_role`]; killed when dropped.
pub struct Process {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Process {
    /// Returns what the process printed so far, standard output and error.
    pub fn output(&self) -> String {
        self.output.lock().expect("log lock").clone()
    }

    /// Sends SIGTERM, as an operator stopping the service would.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit after [`Process::terminate`].
    pub fn wait(&mut self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.child.try_wait().expect("poll the role").is_none() {
            assert!(std::time::Instant::now() < deadline, "the role did not stop:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns a loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(db) = self.database.take() {
            db.drop_blocking();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{nanos}{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A database created on the PostgreSQL server for one test.
struct PostgresDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PostgresDatabase {
    async fn create(admin_url: &str) -> PostgresDatabase {
        use sqlx::Connection;
        let name = format!("lt_test_{}_{}", std::process::id(), unique());
        let mut connection = sqlx::PgConnection::connect(admin_url).await.expect("connect to LEARNTRAC_DATABASE_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut connection)
            .await
            .expect("create database");
        // The query may hold paths (sslrootcert=/…), so the database name is
        // found before it.
        let (before_query, query) = admin_url.split_once('?').unwrap_or((admin_url, ""));
        let (prefix, _) = before_query.rsplit_once('/').expect("database URL has a path");
        let url = if query.is_empty() { format!("{prefix}/{name}") } else { format!("{prefix}/{name}?{query}") };
        PostgresDatabase { admin_url: admin_url.to_string(), name, url }
    }

    fn drop_blocking(self) {
        let handle = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async {
                use sqlx::Connection;
                if let Ok(mut connection) = sqlx::PgConnection::connect(&self.admin_url).await {
                    let _ =
                        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
                            .execute(&mut connection)
                            .await;
                }
            });
        });
        let _ = handle.join();
    }
}
