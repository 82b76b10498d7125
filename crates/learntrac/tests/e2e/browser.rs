//! A learner's whole visit in headless Chromium, driven through
//! ChromeDriver's WebDriver API: sign in, state a goal, confirm the path,
//! answer a question and see the feedback.
//!
//! Needs Debian's `chromium` and `chromium-driver`. Without them the test
//! reports itself skipped, unless `LEARNTRAC_REQUIRE_BROWSER=1` (as in CI)
//! makes that a failure.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{PASSWORD, Server, corpus_dir};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The W3C WebDriver key under which an element reference is returned.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    async fn start() -> Option<Browser> {
        if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
            assert!(
                std::env::var("LEARNTRAC_REQUIRE_BROWSER").as_deref() != Ok("1"),
                "LEARNTRAC_REQUIRE_BROWSER=1 but {CHROMEDRIVER} or {CHROMIUM} is missing; apt-get install chromium chromium-driver"
            );
            eprintln!(
                "skipped: the browser test needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let profile = TempDir(std::env::temp_dir().join(format!("learntrac-chromium-{port}")));

        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         format!("--user-data-dir={}", profile.0.display())]
            }
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("json");
        let session =
            created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).to_string();
        Some(Browser { driver, base, session, http, _profile: profile })
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply: Value = request.send().await.expect("webdriver").json().await.expect("webdriver json");
        reply["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    /// Waits up to 10 seconds for an element matching `css`.
    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .command(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css})))
                .await;
            if let Some(id) = found[ELEMENT_KEY].as_str() {
                return id.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} on {} ({found}):\n{}",
                self.url().await,
                self.source().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.command(reqwest::Method::POST, &format!("/element/{element}/value"), Some(json!({"text": text}))).await;
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.command(reqwest::Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await;
    }

    async fn url(&self) -> String {
        self.command(reqwest::Method::GET, "/url", None).await.as_str().unwrap_or_default().to_string()
    }

    async fn source(&self) -> String {
        self.command(reqwest::Method::GET, "/source", None).await.as_str().unwrap_or_default().to_string()
    }

    /// Waits up to 10 seconds for the page source to contain `text`.
    async fn wait_for_text(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let source = self.source().await;
            if source.contains(text) {
                return source;
            }
            assert!(Instant::now() < deadline, "{text:?} not on {}:\n{source}", self.url().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test]
async fn learner_takes_a_path_in_chromium() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let mut server = Server::new().await;
    server.ingest(&corpus_dir().join("R-intro.pdf"));
    server.add_user("learner@example.org", "students");
    server.serve().await;

    // A page without a session leads to the sign-in form and back.
    browser.go(&server.url("/wiki/WikiStart")).await;
    browser.type_into("input[name=username]", "learner@example.org").await;
    browser.type_into("input[name=password]", PASSWORD).await;
    browser.click("form button[type=submit]").await;
    browser.wait_for_text("What do you want to learn?").await;
    assert!(browser.url().await.ends_with("/wiki/WikiStart"));

    // The goal form shows the passages found, then confirming creates the path.
    browser.type_into("form.learning-path textarea[name=goal]", "how R handles missing values").await;
    browser.click("form.learning-path button").await;
    browser.wait_for_text("2.5 Missing values").await;
    browser.click("#confirm-path").await;
    let page = browser.wait_for_text("Knowledge graph").await;
    assert!(page.contains("data-status=\"new\""), "new concepts are grey");
    assert!(browser.url().await.contains("/paths/"));

    // Answering a question shows the score and feedback.
    browser.click("table a[href^='/ticket/']").await;
    browser.wait_for_text("Your answer").await;
    browser.type_into("textarea[name=answer]", "I do not know anything about this topic yet").await;
    browser.click("form.answer button").await;
    let page = browser.wait_for_text("Latest feedback").await;
    assert!(page.contains("class=\"score\""));
    assert!(page.contains("status-studying"), "a weak answer moves the ticket to studying");

    // Too short an answer is refused with the reason, on the page.
    browser.type_into("textarea[name=answer]", "NA").await;
    browser.click("form.answer button").await;
    browser.wait_for_text("at least 3 words").await;

    // Signing out ends the session.
    browser.click("form[action='/logout'] button").await;
    browser.wait_for_text("Sign in").await;
    browser.go(&server.url("/roadmap")).await;
    browser.find("input[name=username]").await;

    browser.command(reqwest::Method::DELETE, "", None).await;
}

/// Returns the TOTP code `steps` time steps from now, for a secret shown on a page.
fn code_for(secret: &str, steps: i64) -> String {
    crate::harness::totp_code(secret, steps)
}

#[tokio::test]
async fn sign_up_and_totp_in_chromium() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let mut server = Server::new().await;
    let smtp = learntrac_identity::testing::TestSmtpServer::start(None).await.expect("SMTP listener");
    server.write_settings(&format!(
        "[identity]\nmail_from = \"LearnTrac <noreply@example.org>\"\n\
         [identity.smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\n",
        smtp.addr().port()
    ));
    server.serve().await;

    // Sign up, then read the code from the mail that reached the SMTP listener.
    browser.go(&server.url("/login")).await;
    browser.click("a[href='/signup']").await;
    browser.type_into("input[name=name]", "Grace Hopper").await;
    browser.type_into("input[name=email]", "grace@example.org").await;
    browser.type_into("input[name=password]", "Compiler-Pioneer-1952").await;
    browser.click("form[action='/signup'] button").await;
    browser.wait_for_text("Verify your email address").await;
    let mail = smtp.wait_for(1, Duration::from_secs(10)).await.expect("verification mail");
    let body = mail[0].data.split_once("\r\n\r\n").map_or(mail[0].data.as_str(), |(_, body)| body);
    let code: String = body
        .split(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() == 8)
        .expect("an 8-digit code in the mail")
        .to_string();
    browser.type_into("input[name=code]", &code).await;
    browser.type_into("form[action='/signup/confirm'] input[name=password]", "Compiler-Pioneer-1952").await;
    browser.click("form[action='/signup/confirm'] button").await;
    browser.wait_for_text("Your email address is verified").await;

    // Sign in and set up TOTP from the key shown next to the QR code.
    browser.type_into("input[name=username]", "grace@example.org").await;
    browser.type_into("input[name=password]", "Compiler-Pioneer-1952").await;
    browser.click("form[action='/login'] button").await;
    browser.wait_for_text("What do you want to learn?").await;
    browser.go(&server.url("/account/mfa")).await;
    let page = browser.wait_for_text("totp-secret").await;
    assert!(page.contains("<svg"), "the QR code is on the page");
    let secret = page
        .split("id=\"totp-secret\">")
        .nth(1)
        .and_then(|rest| rest.split("</code>").next())
        .expect("the key on the page")
        .to_string();
    browser.type_into("form[action='/account/mfa'] input[name=code]", &code_for(&secret, 0)).await;
    browser.click("form[action='/account/mfa'] button").await;
    browser.wait_for_text("recovery-codes").await;

    // Sign out, then sign in with the password and a code.
    browser.go(&server.url("/account")).await;
    browser.click("form[action='/logout'] button").await;
    browser.wait_for_text("You are signed out").await;
    browser.type_into("input[name=username]", "grace@example.org").await;
    browser.type_into("input[name=password]", "Compiler-Pioneer-1952").await;
    browser.click("form[action='/login'] button").await;
    browser.wait_for_text("Second factor").await;
    browser.type_into("input[name=code]", &code_for(&secret, 1)).await;
    browser.click("form[action='/login/mfa'] button").await;
    browser.wait_for_text("What do you want to learn?").await;

    // Sign out everywhere ends this browser's session.
    browser.go(&server.url("/account")).await;
    let page = browser.wait_for_text("Recent activity").await;
    assert!(page.contains("mfa_enable"), "the account page lists auth events");
    assert!(page.contains("sign_in"), "the account page lists sign-ins");
    browser.click("#sign-out-everywhere").await;
    browser.wait_for_text("You are signed out on every device").await;
    browser.go(&server.url("/roadmap")).await;
    browser.find("input[name=username]").await;
    browser.command(reqwest::Method::DELETE, "", None).await;
}
