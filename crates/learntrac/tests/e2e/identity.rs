//! The user pool and the OpenID Connect provider: sign-up with a mailed
//! code over a real SMTP listener, lockout, password reset, TOTP, the
//! authorization code flow with PKCE, refresh-token families, service
//! accounts, administration, key rotation, and tokens of an external
//! provider whose key set is served on loopback.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use learntrac_identity::testing::TestSmtpServer;
use serde_json::{Value, json};

use crate::harness::{PASSWORD, Server, set_cookie, totp_code};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// Raises the gateway's sign-in bucket for tests that sign in many times.
const RELAXED_SIGN_IN: &str = "[gateway.rate_limits.auth]\nper_second = 50.0\nburst = 100\n";

/// Starts an SMTP listener on loopback and points the server's mail at it.
async fn with_smtp(server: &Server, identity: &str) -> TestSmtpServer {
    let smtp = TestSmtpServer::start(None).await.expect("SMTP listener");
    server.write_settings(&format!(
        "{RELAXED_SIGN_IN}[identity]\nmail_from = \"LearnTrac <noreply@example.org>\"\n{identity}\n\
         [identity.smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\n",
        smtp.addr().port()
    ));
    smtp
}

/// Returns the 8-digit code in the body of a mailed message.
fn code_in(message: &str) -> String {
    let body = message.split_once("\r\n\r\n").or_else(|| message.split_once("\n\n")).map_or(message, |(_, body)| body);
    let digits: Vec<char> = body.chars().collect();
    for start in 0..digits.len().saturating_sub(8) {
        let window = &digits[start..start + 8];
        let before = start.checked_sub(1).map(|i| digits[i]);
        let after = digits.get(start + 8);
        if window.iter().all(char::is_ascii_digit)
            && !before.is_some_and(|c| c.is_ascii_digit())
            && !after.is_some_and(char::is_ascii_digit)
        {
            return window.iter().collect();
        }
    }
    panic!("no code in the message:\n{message}");
}

/// Posts an anonymous form (sign-up, reset, confirmation) with its token.
async fn post_anonymous(server: &Server, page: &str, action: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    let (cookie, token) = server.anonymous_form(page).await;
    let mut fields = fields.to_vec();
    fields.push(("csrf", &token));
    server.client.post(server.url(action)).header("cookie", cookie).form(&fields).send().await.expect("form post")
}

/// Decodes the claims of a JWT without checking it.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON claims")
}

fn header(token: &str) -> Value {
    let part = token.split('.').next().expect("a JWT has a header");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON header")
}

fn events(server: &Server, email: &str) -> String {
    let output = server.cli(&["user", "events", email], "");
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
}

#[tokio::test]
async fn sign_up_verifies_the_address_by_mail() {
    let mut server = Server::new().await;
    let smtp = with_smtp(&server, "").await;
    server.serve().await;

    let cookie_check = server.client.get(server.url("/signup")).send().await.expect("page");
    let form_cookie = cookie_check.headers()["set-cookie"].to_str().expect("ascii").to_string();
    for attribute in ["__Host-lt_form=", "HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(form_cookie.contains(attribute), "{form_cookie}");
    }
    assert!(!form_cookie.contains("Domain"), "{form_cookie}");

    // The policy is explained, common passwords are refused.
    for (password, reason) in [("short1!", "at least 8 characters"), ("Password1!", "common")] {
        let fields = [("name", "Ada"), ("email", "ada@example.org"), ("password", password)];
        let response = post_anonymous(&server, "/signup", "/signup", &fields).await;
        assert_eq!(response.status(), 400, "{password}");
        assert!(response.text().await.expect("html").contains(reason), "{password}");
    }
    let fields = [("name", "Ada"), ("email", "not-an-address"), ("password", "Analytical-Engine-1843")];
    let response = post_anonymous(&server, "/signup", "/signup", &fields).await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.expect("html").contains("not-an-address"));

    // Someone signs up first with Ada's address and a password of their own.
    let fields = [("name", "Mallory"), ("email", "ada@example.org"), ("password", "Mallory-Was-Here-1")];
    let response = post_anonymous(&server, "/signup", "/signup", &fields).await;
    assert_eq!(response.status(), 303);
    let mail = smtp.wait_for(1, Duration::from_secs(10)).await.expect("first verification mail");
    let first_code = code_in(&mail[0].data);

    // Ada signs up: her name and password replace the first ones, and a new code goes out.
    let fields = [("name", "Ada"), ("email", "Ada@Example.org"), ("password", "Analytical-Engine-1843")];
    let response = post_anonymous(&server, "/signup", "/signup", &fields).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/signup/confirm?email=ada%40example.org");
    let mail = smtp.wait_for(2, Duration::from_secs(10)).await.expect("verification mail");
    assert_eq!(mail[1].to, ["ada@example.org"]);
    assert!(mail[1].data.contains("Verify your email address"), "{}", mail[1].data);
    let code = code_in(&mail[1].data);
    let stale = [("email", "ada@example.org"), ("code", first_code.as_str()), ("password", "Mallory-Was-Here-1")];
    let response = post_anonymous(&server, "/signup/confirm", "/signup/confirm", &stale).await;
    assert_eq!(response.status(), 400, "the first sign-up's code and password are gone");

    // No sign-in before the address is verified.
    let token = server.token_response("ada@example.org", "Analytical-Engine-1843").await;
    assert_eq!(token.status(), 400);
    let body: Value = token.json().await.expect("json");
    assert!(body["error_description"].as_str().expect("text").contains("verify"), "{body}");

    let wrong = if code == "00000000" { "11111111" } else { "00000000" };
    let fields = [("email", "ada@example.org"), ("code", wrong), ("password", "Analytical-Engine-1843")];
    let response = post_anonymous(&server, "/signup/confirm", "/signup/confirm", &fields).await;
    assert_eq!(response.status(), 400);
    let fields = [("email", "ada@example.org"), ("code", code.as_str()), ("password", "Mallory-Was-Here-1")];
    let response = post_anonymous(&server, "/signup/confirm", "/signup/confirm", &fields).await;
    assert_eq!(response.status(), 400, "the code verifies only with the latest sign-up's password");
    let fields = [("email", "ada@example.org"), ("code", code.as_str()), ("password", "Analytical-Engine-1843")];
    let response = post_anonymous(&server, "/signup/confirm", "/signup/confirm", &fields).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/login?notice=verified");
    let response = post_anonymous(&server, "/signup/confirm", "/signup/confirm", &fields).await;
    assert_eq!(response.status(), 400, "a code works once");

    let token = server.token_response("ada@example.org", "Analytical-Engine-1843").await;
    assert_eq!(token.status(), 200);
    let body: Value = token.json().await.expect("json");
    let (status, me) = server.get_json(body["access_token"].as_str().expect("token"), "/api/v1/me").await;
    assert_eq!(status, 200);
    assert_eq!(me["groups"], json!(["students"]), "self sign-up makes a learner");
    assert_eq!(me["name"], "Ada");
    assert_eq!(server.token_response("ada@example.org", "Mallory-Was-Here-1").await.status(), 400);

    // Signing up again with a taken address gets the same response and a note to the owner.
    let fields = [("name", "Mallory"), ("email", "ada@example.org"), ("password", "Another-Pass-2026")];
    let response = post_anonymous(&server, "/signup", "/signup", &fields).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/signup/confirm?email=ada%40example.org");
    let mail = smtp.wait_for(3, Duration::from_secs(10)).await.expect("notice mail");
    assert!(mail[2].data.contains("Subject: Your LearnTrac account"), "{}", mail[2].data);
    assert_eq!(server.token_response("ada@example.org", "Another-Pass-2026").await.status(), 400);

    let history = events(&server, "ada@example.org");
    for expected in ["sign_up", "email_verification", "sign_in", "address_taken", "email_not_verified"] {
        assert!(history.contains(expected), "{expected} missing from:\n{history}");
    }
}

#[tokio::test]
async fn mail_goes_to_a_file_without_smtp() {
    let server = Server::start().await;
    assert!(server.stdout_text().contains("no SMTP server is configured"), "the operator is told at start-up");
    let fields = [("name", "Bo"), ("email", "bo@example.org"), ("password", "Correct-Horse-Battery-9")];
    let response = post_anonymous(&server, "/signup", "/signup", &fields).await;
    assert_eq!(response.status(), 303);
    // Mail goes out after the response.
    let outbox = server.data_dir.join("mail").join("outbox");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        match std::fs::read_to_string(&outbox) {
            Ok(text) if text.contains("To: bo@example.org") => break text,
            _ => assert!(std::time::Instant::now() < deadline, "no mail in {}", outbox.display()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.contains("To: bo@example.org"), "{text}");
    code_in(&text);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&outbox).expect("outbox").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the outbox holds codes");
    }
}

#[tokio::test]
async fn repeated_failures_lock_the_account_until_unlocked() {
    let mut server = Server::new().await;
    server.write_settings("[identity]\nslow_after_failures = 2\nlock_after_failures = 4\nlock_minutes = 10\n");
    server.add_user("learner@example.org", "students");
    server.serve().await;

    let mut bodies = Vec::new();
    for email in ["learner@example.org", "nobody@example.org"] {
        for _ in 0..4 {
            let response = server.token_response(email, "Wrong-Password-1!").await;
            assert_eq!(response.status(), 400);
            bodies.push(response.json::<Value>().await.expect("json"));
        }
    }
    assert!(bodies.windows(2).all(|pair| pair[0] == pair[1]), "every failure looks the same: {bodies:?}");
    let locked = server.token_response("learner@example.org", PASSWORD).await;
    assert_eq!(locked.status(), 400, "the right password fails while locked");
    assert_eq!(locked.json::<Value>().await.expect("json"), bodies[0], "a locked account looks like a wrong password");

    let history = events(&server, "learner@example.org");
    for expected in ["wrong_password", "lockout", "locked"] {
        assert!(history.contains(expected), "{expected} missing from:\n{history}");
    }
    let list = stdout(&server.cli(&["user", "list"], ""));
    assert!(list.contains("locked until"), "{list}");

    let unlock = server.cli(&["user", "unlock", "learner@example.org"], "");
    assert!(unlock.status.success(), "{}", stderr(&unlock));
    assert!(stdout(&unlock).contains("unlocked"));
    assert_eq!(server.token_response("learner@example.org", PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn password_reset_by_mailed_code() {
    let mut server = Server::new().await;
    let smtp = with_smtp(&server, "").await;
    server.add_user("learner@example.org", "students");
    server.serve().await;
    let old = server.token("learner@example.org").await;

    // An unknown address gets the same response and no mail.
    for email in ["nobody@example.org", "learner@example.org"] {
        let response = post_anonymous(&server, "/account/reset", "/account/reset", &[("email", email)]).await;
        assert_eq!(response.status(), 303);
        assert!(response.headers()["location"].to_str().expect("ascii").starts_with("/account/reset/confirm?email="));
    }
    let mail = smtp.wait_for(1, Duration::from_secs(10)).await.expect("reset mail");
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].to, ["learner@example.org"]);
    let code = code_in(&mail[0].data);

    let page = "/account/reset/confirm?email=learner%40example.org";
    let weak = [("email", "learner@example.org"), ("code", code.as_str()), ("new_password", "weakling")];
    let response = post_anonymous(&server, page, "/account/reset/confirm", &weak).await;
    assert_eq!(response.status(), 400);
    let fields = [("email", "learner@example.org"), ("code", code.as_str()), ("new_password", "Fresh-Start-2027")];
    let response = post_anonymous(&server, page, "/account/reset/confirm", &fields).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/login?notice=reset");
    let again = [("email", "learner@example.org"), ("code", code.as_str()), ("new_password", "Second-Try-2027")];
    assert_eq!(post_anonymous(&server, page, "/account/reset/confirm", &again).await.status(), 400, "once only");

    assert_eq!(server.get_json(&old, "/api/v1/me").await.0, 401, "tokens from before the reset end");
    assert_eq!(server.token_response("learner@example.org", PASSWORD).await.status(), 400);
    let response = server.token_response("learner@example.org", "Fresh-Start-2027").await;
    assert_eq!(response.status(), 200);
    let history = events(&server, "learner@example.org");
    assert!(history.contains("password_reset"), "{history}");
}

#[tokio::test]
async fn totp_sign_in_and_recovery_codes() {
    let mut server = Server::new().await;
    server.write_settings(RELAXED_SIGN_IN);
    server.add_user("learner@example.org", "students");
    server.serve().await;
    let before = server.token("learner@example.org").await;
    let (secret, recovery) = server.enrol_mfa("learner@example.org").await;
    assert_eq!(recovery.len(), 10);
    let history = events(&server, "learner@example.org");
    assert!(history.contains("mfa_enable"), "{history}");
    assert_eq!(server.get_json(&before, "/api/v1/me").await.0, 200, "enrolment keeps existing tokens");

    // The password grant needs the second factor now, and a code works once.
    let response = server.token_response("learner@example.org", PASSWORD).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert!(body["error_description"].as_str().expect("text").contains("mfa_code"), "{body}");
    let code = totp_code(&secret, 1);
    assert_eq!(server.token_with_code("learner@example.org", &code).await.status(), 200);
    assert_eq!(server.token_with_code("learner@example.org", &code).await.status(), 400, "a replayed code fails");

    // The sign-in form requests the code on a second page.
    let (form_cookie, token) = server.anonymous_form("/login").await;
    let response = server
        .client
        .post(server.url("/login"))
        .header("cookie", &form_cookie)
        .form(&[("username", "learner@example.org"), ("password", PASSWORD), ("next", "/roadmap"), ("csrf", &token)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/login/mfa?next=/roadmap");
    let pending = set_cookie(&response, "__Host-lt_session").expect("pending session");
    let page = server.client.get(server.url("/roadmap")).header("cookie", &pending).send().await.expect("page");
    assert_eq!(page.status(), 303, "a session without its second factor opens nothing");
    let page = server.client.get(server.url("/login/mfa")).header("cookie", &pending).send().await.expect("mfa page");
    let token = crate::harness::form_token(&page.text().await.expect("html")).expect("token");
    let post = |code: String| {
        let pending = pending.clone();
        let token = token.clone();
        let server = &server;
        async move {
            server
                .client
                .post(server.url("/login/mfa"))
                .header("cookie", pending)
                .form(&[("code", code.as_str()), ("next", "/roadmap"), ("csrf", token.as_str())])
                .send()
                .await
                .expect("mfa")
        }
    };
    assert_eq!(post("000000".into()).await.status(), 400);
    // The current time step's code is used up, so a recovery code serves here.
    let response = post(recovery[2].clone()).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/roadmap");
    let session = set_cookie(&response, "__Host-lt_session").expect("session");
    assert_ne!(session, pending, "the session id changes after the second factor");
    let page = server.client.get(server.url("/roadmap")).header("cookie", &session).send().await.expect("page");
    assert_eq!(page.status(), 200);

    // A recovery code signs in once, in either spelling.
    let spaced = recovery[0].replace('-', " ").to_uppercase();
    assert_eq!(server.token_with_code("learner@example.org", &spaced).await.status(), 200);
    assert_eq!(server.token_with_code("learner@example.org", &recovery[0]).await.status(), 400, "once only");

    // Turning it off takes a code too.
    let wrong = server.post_form(&session, "/account/mfa/disable", &[("code", "123456")]).await;
    assert_eq!(wrong.status(), 400);
    let off = server.post_form(&session, "/account/mfa/disable", &[("code", &recovery[1])]).await;
    assert_eq!(off.status(), 303, "{:?}", off.text().await);
    assert_eq!(server.token_response("learner@example.org", PASSWORD).await.status(), 200);
    let history = events(&server, "learner@example.org");
    for expected in ["wrong_mfa_code", "mfa_disable"] {
        assert!(history.contains(expected), "{expected} missing from:\n{history}");
    }
}

/// Returns a PKCE verifier and its S256 challenge.
fn pkce() -> (String, String) {
    let verifier = format!("v{}", "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG".repeat(1));
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    (verifier.clone(), URL_SAFE_NO_PAD.encode(digest.as_ref()))
}

fn query_value(location: &str, name: &str) -> Option<String> {
    let query = location.split_once('?')?.1;
    query.split('&').find_map(|pair| pair.strip_prefix(&format!("{name}="))).map(|v| {
        let decoded: Vec<(String, String)> = serde_urlencoded::from_str(&format!("v={v}")).expect("query");
        decoded[0].1.clone()
    })
}

#[tokio::test]
async fn authorization_code_flow_with_pkce_and_refresh_families() {
    let mut server = Server::new().await;
    server.write_settings(RELAXED_SIGN_IN);
    server.serve().await;
    server.add_user("learner@example.org", "students");
    let add = server.cli(
        &[
            "client",
            "add",
            "web",
            "--grant",
            "authorization_code",
            "--grant",
            "refresh_token",
            "--scope",
            "openid",
            "--scope",
            "email",
            "--scope",
            "learntrac/api",
            "--redirect-uri",
            "https://app.example/callback",
            "--logout-uri",
            "https://app.example/bye",
        ],
        "",
    );
    assert!(add.status.success(), "{}", stderr(&add));
    let discovery: Value = server
        .client
        .get(server.url("/.well-known/openid-configuration"))
        .send()
        .await
        .expect("d")
        .json()
        .await
        .expect("j");
    assert_eq!(discovery["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(discovery["authorization_endpoint"], format!("{}/oauth2/authorize", server.base).as_str());

    let (verifier, challenge) = pkce();
    let authorize = |extra: &str| {
        format!(
            "/oauth2/authorize?response_type=code&client_id=web&redirect_uri=https%3A%2F%2Fapp.example%2Fcallback\
             &scope=openid%20email%20learntrac%2Fapi&state=xyz&nonce=n-1{extra}"
        )
    };
    let session = server.sign_in("learner@example.org", PASSWORD).await;
    let get = |path: String, cookie: Option<String>| {
        let server = &server;
        async move {
            let mut request = server.client.get(server.url(&path));
            if let Some(cookie) = cookie {
                request = request.header("cookie", cookie);
            }
            request.send().await.expect("authorize")
        }
    };

    // Unregistered addresses get a page, never a redirect.
    let wrong = get(authorize("").replace("app.example%2Fcallback", "evil.example%2Fcb"), Some(session.clone())).await;
    assert_eq!(wrong.status(), 400);
    // PKCE is required, and plain is refused.
    for extra in ["", &format!("&code_challenge={verifier}&code_challenge_method=plain")] {
        let response = get(authorize(extra), Some(session.clone())).await;
        assert_eq!(response.status(), 303);
        let location = response.headers()["location"].to_str().expect("ascii").to_string();
        assert!(location.starts_with("https://app.example/callback?error=invalid_request"), "{location}");
        assert_eq!(query_value(&location, "state").as_deref(), Some("xyz"));
    }
    let with_pkce = authorize(&format!("&code_challenge={challenge}&code_challenge_method=S256"));
    let anonymous = get(with_pkce.clone(), None).await;
    assert!(
        anonymous.headers()["location"]
            .to_str()
            .expect("ascii")
            .starts_with("/login?next=/oauth2/authorize%3Fresponse_type%3Dcode")
    );
    let response = get(with_pkce.clone(), Some(session.clone())).await;
    let location = response.headers()["location"].to_str().expect("ascii").to_string();
    assert!(location.starts_with("https://app.example/callback?code="), "{location}");
    let code = query_value(&location, "code").expect("code");
    assert_eq!(query_value(&location, "state").as_deref(), Some("xyz"));

    let exchange = |code: String, verifier: String| {
        let server = &server;
        async move {
            server
                .client
                .post(server.url("/oauth2/token"))
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("client_id", "web"),
                    ("code", code.as_str()),
                    ("redirect_uri", "https://app.example/callback"),
                    ("code_verifier", verifier.as_str()),
                ])
                .send()
                .await
                .expect("token")
        }
    };
    let wrong_verifier = exchange(code.clone(), "w".repeat(43)).await;
    assert_eq!(wrong_verifier.status(), 400);
    assert_eq!(exchange(code, verifier.clone()).await.status(), 400, "a code is gone after one attempt");

    let response = get(with_pkce.clone(), Some(session.clone())).await;
    let code = query_value(response.headers()["location"].to_str().expect("ascii"), "code").expect("code");
    let tokens: Value = exchange(code.clone(), verifier.clone()).await.json().await.expect("json");
    let access = tokens["access_token"].as_str().expect("access").to_string();
    let access_claims = claims(&access);
    assert_eq!(access_claims["token_use"], "access");
    assert_eq!(access_claims["client_id"], "web");
    assert_eq!(access_claims["scope"], "openid email learntrac/api");
    assert_eq!(access_claims["groups"], json!(["students"]));
    assert!(access_claims["auth_time"].is_i64(), "{access_claims}");
    assert!(access_claims["jti"].is_string(), "{access_claims}");
    assert!(access_claims.get("aud").is_none(), "access tokens carry client_id, not aud");
    assert!(header(&access)["kid"].is_string());
    let id_claims = claims(tokens["id_token"].as_str().expect("id token"));
    assert_eq!(id_claims["aud"], "web");
    assert_eq!(id_claims["token_use"], "id");
    assert_eq!(id_claims["email"], "learner@example.org");
    assert_eq!(id_claims["email_verified"], true);
    assert_eq!(id_claims["nonce"], "n-1");
    assert_eq!(exchange(code, verifier.clone()).await.status(), 400, "a code works once");
    assert_eq!(server.get_json(&access, "/api/v1/me").await.0, 401, "and its reuse revokes the tokens issued for it");
    let history = events(&server, "learner@example.org");
    assert!(history.contains("reused_authorization_code"), "{history}");

    // A token granted less than learntrac/api cannot use the API.
    let narrow = get(
        authorize(&format!("&code_challenge={challenge}&code_challenge_method=S256")).replace("%20learntrac%2Fapi", ""),
        Some(session.clone()),
    )
    .await;
    let code = query_value(narrow.headers()["location"].to_str().expect("ascii"), "code").expect("code");
    let narrow: Value = exchange(code, verifier.clone()).await.json().await.expect("json");
    let narrow = narrow["access_token"].as_str().expect("access").to_string();
    assert_eq!(server.get_json(&narrow, "/api/v1/me").await.0, 403, "learntrac/api was not granted");
    let anonymous = get(with_pkce.clone() + "&prompt=none", None).await;
    let location = anonymous.headers()["location"].to_str().expect("ascii").to_string();
    assert!(location.starts_with("https://app.example/callback?error=login_required"), "{location}");
    let fresh = get(with_pkce.clone() + "&prompt=login", Some(session.clone())).await;
    let location = fresh.headers()["location"].to_str().expect("ascii").to_string();
    assert!(location.starts_with("/login?next=/oauth2/authorize"), "prompt=login asks to sign in again: {location}");
    assert!(!location.contains("prompt"), "and comes back without it: {location}");

    let response = get(with_pkce.clone(), Some(session.clone())).await;
    let code = query_value(response.headers()["location"].to_str().expect("ascii"), "code").expect("code");
    let tokens: Value = exchange(code, verifier.clone()).await.json().await.expect("json");
    let access = tokens["access_token"].as_str().expect("access").to_string();

    let info: Value = server
        .client
        .get(server.url("/oauth2/userInfo"))
        .bearer_auth(&access)
        .send()
        .await
        .expect("userinfo")
        .json()
        .await
        .expect("json");
    assert_eq!(info["email"], "learner@example.org");

    // Refresh tokens rotate; presenting a used one revokes the family.
    let refresh = |token: String| {
        let server = &server;
        async move {
            server
                .client
                .post(server.url("/oauth2/token"))
                .form(&[("grant_type", "refresh_token"), ("client_id", "web"), ("refresh_token", token.as_str())])
                .send()
                .await
                .expect("refresh")
        }
    };
    let first = tokens["refresh_token"].as_str().expect("refresh").to_string();
    let rotated: Value = refresh(first.clone()).await.json().await.expect("json");
    let second = rotated["refresh_token"].as_str().expect("rotated").to_string();
    assert_ne!(first, second);
    let renewed = rotated["access_token"].as_str().expect("access").to_string();
    assert_eq!(server.get_json(&renewed, "/api/v1/me").await.0, 200);
    assert_eq!(refresh(first).await.status(), 400, "a used refresh token is refused");
    assert_eq!(refresh(second).await.status(), 400, "and its whole family with it");
    assert_eq!(server.get_json(&renewed, "/api/v1/me").await.0, 401, "the family's access tokens too");
    let history = events(&server, "learner@example.org");
    assert!(history.contains("reused_refresh_token"), "{history}");

    // Revocation ends a family at the client's request.
    let response = get(with_pkce, Some(session.clone())).await;
    let code = query_value(response.headers()["location"].to_str().expect("ascii"), "code").expect("code");
    let tokens: Value = exchange(code, verifier).await.json().await.expect("json");
    let access = tokens["access_token"].as_str().expect("access");
    let revoke = server
        .client
        .post(server.url("/oauth2/revoke"))
        .form(&[("client_id", "web"), ("token", tokens["refresh_token"].as_str().expect("refresh"))])
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoke.status(), 200);
    assert_eq!(server.get_json(access, "/api/v1/me").await.0, 401);

    // Browser applications on a registered client's origin may call the
    // token endpoint across origins; other origins get no CORS headers.
    let preflight = |origin: &'static str| {
        let server = &server;
        async move {
            server
                .client
                .request(reqwest::Method::OPTIONS, server.url("/oauth2/token"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type")
                .send()
                .await
                .expect("preflight")
        }
    };
    let allowed = preflight("https://app.example").await;
    assert_eq!(allowed.status(), 204);
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://app.example");
    assert!(allowed.headers()["access-control-allow-methods"].to_str().expect("ascii").contains("POST"));
    let refused = preflight("https://evil.example").await;
    assert!(refused.headers().get("access-control-allow-origin").is_none(), "an unregistered origin");
    let keys = server
        .client
        .get(server.url("/.well-known/jwks.json"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("jwks");
    assert_eq!(keys.headers()["access-control-allow-origin"], "*", "the key set is public");

    // Sign-out returns only to an address the client registered.
    let evil =
        get("/logout?client_id=web&logout_uri=https%3A%2F%2Fevil.example%2F".into(), Some(session.clone())).await;
    assert_eq!(evil.status(), 400);
    let page =
        get("/logout?client_id=web&logout_uri=https%3A%2F%2Fapp.example%2Fbye".into(), Some(session.clone())).await;
    let csrf = crate::harness::form_token(&page.text().await.expect("html")).expect("token");
    let response = server
        .client
        .post(server.url("/logout"))
        .header("cookie", &session)
        .form(&[("client_id", "web"), ("logout_uri", "https://app.example/bye"), ("csrf", csrf.as_str())])
        .send()
        .await
        .expect("sign out");
    assert_eq!(response.headers()["location"], "https://app.example/bye");
    let page = server.client.get(server.url("/roadmap")).header("cookie", &session).send().await.expect("page");
    assert_eq!(page.status(), 303, "the session ended on the server");
}

#[tokio::test]
async fn service_accounts_use_client_credentials_within_their_scopes() {
    let mut server = Server::new().await;
    server.ingest(&crate::harness::corpus_dir().join("R-intro.pdf"));
    server.serve().await;
    let add = server.cli(
        &["client", "add", "indexer", "--confidential", "--grant", "client_credentials", "--scope", "learntrac/read"],
        "",
    );
    assert!(add.status.success(), "{}", stderr(&add));
    let secret = stdout(&add)
        .lines()
        .find_map(|l| l.strip_prefix("client secret (shown only now): "))
        .expect("secret printed")
        .to_string();
    let public = server.cli(&["client", "add", "spa", "--grant", "client_credentials"], "");
    assert!(!public.status.success(), "a public client cannot use client_credentials");

    let token_request = |secret: String| {
        let server = &server;
        async move {
            server
                .client
                .post(server.url("/oauth2/token"))
                .basic_auth("indexer", Some(secret))
                .form(&[("grant_type", "client_credentials"), ("scope", "learntrac/read")])
                .send()
                .await
                .expect("token")
        }
    };
    let wrong = token_request("wrong".into()).await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.json::<Value>().await.expect("json")["error"], "invalid_client");
    let response = token_request(secret.clone()).await;
    assert_eq!(response.status(), 200);
    let token: Value = response.json().await.expect("json");
    let token = token["access_token"].as_str().expect("access").to_string();
    assert_eq!(claims(&token)["sub"], "indexer");

    let (status, found) = server.post_json(&token, "/api/v1/search", &json!({"query": "missing values"})).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(server.get_json(&token, "/api/v1/books").await.0, 200);
    assert_eq!(server.get_json(&token, "/api/v1/paths").await.0, 403, "no learner's data");
    assert_eq!(server.upload(&token, "notes.md", "# Notes\n\nText.\n").await.status(), 403, "read scope only");
    let other_grant = server
        .client
        .post(server.url("/oauth2/token"))
        .basic_auth("indexer", Some(secret.clone()))
        .form(&[("grant_type", "password"), ("username", "a@example.org"), ("password", "x")])
        .send()
        .await
        .expect("token");
    assert_eq!(other_grant.status(), 400);
    assert_eq!(other_grant.json::<Value>().await.expect("json")["error"], "unauthorized_client");
    let unknown_grant = server
        .client
        .post(server.url("/oauth2/token"))
        .basic_auth("indexer", Some(secret.clone()))
        .form(&[("grant_type", "implicit")])
        .send()
        .await
        .expect("token");
    assert_eq!(unknown_grant.json::<Value>().await.expect("json")["error"], "unsupported_grant_type");

    // A service account's token can be revoked, and ends with its client.
    let revoke = server
        .client
        .post(server.url("/oauth2/revoke"))
        .basic_auth("indexer", Some(secret.clone()))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoke.status(), 200);
    assert_eq!(server.get_json(&token, "/api/v1/books").await.0, 401, "a revoked token stops at once");
    let fresh: Value = token_request(secret).await.json().await.expect("json");
    let fresh = fresh["access_token"].as_str().expect("access").to_string();
    assert_eq!(server.get_json(&fresh, "/api/v1/books").await.0, 200);
    let delete = server.cli(&["client", "delete", "indexer"], "");
    assert!(delete.status.success(), "{}", stderr(&delete));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.get_json(&fresh, "/api/v1/books").await.0 != 401 {
        assert!(std::time::Instant::now() < deadline, "a deleted client's token still works");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn administrators_manage_users_by_api() {
    let mut server = Server::new().await;
    let smtp = with_smtp(&server, "").await;
    server.add_user("root@example.org", "admins");
    server.add_user("ops@example.org", "operators");
    server.add_user("learner@example.org", "students");
    server.serve().await;
    let (secret, _) = server.enrol_mfa("root@example.org").await;
    let admin = server.mfa_token("root@example.org", &secret, 1).await;
    let ops = server.token("ops@example.org").await;
    let learner = server.token("learner@example.org").await;
    let (_, users) = server.get_json(&admin, "/api/v1/admin/users").await;
    let id = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["email"] == "learner@example.org")
        .expect("learner")["id"]
        .as_i64()
        .expect("id");
    let user_path = format!("/api/v1/admin/users/{id}");
    let patch = |token: String, body: Value| {
        let server = &server;
        let path = user_path.clone();
        async move {
            let response =
                server.client.patch(server.url(&path)).bearer_auth(token).json(&body).send().await.expect("patch");
            response.status().as_u16()
        }
    };

    assert_eq!(server.get_json(&learner, &user_path).await.0, 403, "learners administer nothing");
    assert_eq!(patch(ops.clone(), json!({"groups": ["instructors"]})).await, 403, "operators may not change groups");
    assert_eq!(patch(ops.clone(), json!({"disabled": true})).await, 200, "operators may disable");
    assert_eq!(server.get_json(&learner, "/api/v1/me").await.0, 401, "a disabled user's tokens stop at once");
    assert_eq!(server.token_response("learner@example.org", PASSWORD).await.status(), 400);
    assert_eq!(patch(admin.clone(), json!({"disabled": false, "groups": ["instructors"]})).await, 200);
    let fresh = server.token("learner@example.org").await;
    let (_, me) = server.get_json(&fresh, "/api/v1/me").await;
    assert_eq!(me["groups"], json!(["instructors"]));
    assert_eq!(patch(admin.clone(), json!({"groups": ["wizards"]})).await, 400);

    let post = |token: String, action: &str| {
        let server = &server;
        let path = format!("{user_path}/{action}");
        async move { server.client.post(server.url(&path)).bearer_auth(token).send().await.expect("post").status() }
    };
    assert_eq!(post(ops.clone(), "sign-out").await, 200);
    assert_eq!(server.get_json(&fresh, "/api/v1/me").await.0, 401, "signed out everywhere");
    assert_eq!(post(ops.clone(), "reset-password").await, 200);
    let mail = smtp.wait_for(1, Duration::from_secs(10)).await.expect("reset mail");
    assert!(mail[0].data.contains("Reset your password"));
    assert_eq!(server.token_response("learner@example.org", PASSWORD).await.status(), 400, "the password is gone");
    assert_eq!(post(admin.clone(), "unlock").await, 200);
    assert_eq!(post(ops.clone(), "reset-mfa").await, 200);
    assert_eq!(post(ops.clone(), "wave").await, 400, "an unknown action is a bad request");
    let (status, listed) = server.get_json(&admin, &format!("{user_path}/events")).await;
    assert_eq!(status, 200);
    let names: Vec<&str> =
        listed["events"].as_array().expect("events").iter().filter_map(|e| e["event"].as_str()).collect();
    for expected in ["sign_in", "admin_disable", "admin_sign_out", "admin_force_reset", "admin_reset_mfa"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }

    let root_id = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["email"] == "root@example.org")
        .expect("root")["id"]
        .as_i64()
        .expect("id");
    let self_delete =
        server.client.delete(server.url(&format!("/api/v1/admin/users/{root_id}"))).bearer_auth(&admin).send().await;
    assert_eq!(self_delete.expect("delete").status(), 409, "an admin cannot delete their own account");
    let delete = server.client.delete(server.url(&user_path)).bearer_auth(&ops).send().await.expect("delete");
    assert_eq!(delete.status(), 403);
    let delete = server.client.delete(server.url(&user_path)).bearer_auth(&admin).send().await.expect("delete");
    assert_eq!(delete.status(), 204);
    assert_eq!(server.get_json(&admin, &user_path).await.0, 404);

    let audit = stdout(&server.cli(&["audit", "list"], ""));
    for action in ["user.disable", "user.groups", "user.sign_out", "user.force_reset", "user.delete"] {
        assert!(audit.contains(action), "{action} missing from the audit trail:\n{audit}");
    }
}

#[tokio::test]
async fn sessions_end_when_idle_and_everywhere() {
    let mut server = Server::new().await;
    server.write_settings("[identity]\nsession_idle_seconds = 2\n");
    server.add_user("learner@example.org", "students");
    server.serve().await;
    let session = server.sign_in("learner@example.org", PASSWORD).await;
    let page = server.client.get(server.url("/roadmap")).header("cookie", &session).send().await.expect("page");
    assert_eq!(page.status(), 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let page = server.client.get(server.url("/roadmap")).header("cookie", &session).send().await.expect("page");
    assert_eq!(page.status(), 303, "an idle session ends");

    let (form_cookie, token) = server.anonymous_form("/login").await;
    let response = server
        .client
        .post(server.url("/login"))
        .header("cookie", &form_cookie)
        .form(&[("username", "learner@example.org"), ("password", PASSWORD), ("csrf", &token)])
        .send()
        .await
        .expect("sign in");
    let set = response.headers()["set-cookie"].to_str().expect("ascii").to_string();
    for attribute in ["__Host-lt_session=", "HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age="] {
        assert!(set.contains(attribute), "{set}");
    }
    let session = set_cookie(&response, "__Host-lt_session").expect("session");
    let other = server.sign_in("learner@example.org", PASSWORD).await;
    let api = server.token("learner@example.org").await;
    let response = server.post_form(&session, "/account/sign-out-everywhere", &[]).await;
    assert_eq!(response.status(), 303);
    for cookie in [&session, &other] {
        let page = server.client.get(server.url("/roadmap")).header("cookie", cookie).send().await.expect("page");
        assert_eq!(page.status(), 303);
    }
    assert_eq!(server.get_json(&api, "/api/v1/me").await.0, 401);
    assert!(events(&server, "learner@example.org").contains("sign_out_everywhere"));
}

#[tokio::test]
async fn rotated_signing_keys_keep_old_tokens_valid() {
    let server = Server::start().await;
    server.add_user("learner@example.org", "students");
    let old = server.token("learner@example.org").await;
    let old_kid = header(&old)["kid"].as_str().expect("kid").to_string();

    let rotate = server.cli(&["token-key", "rotate", "--algorithm", "es256"], "");
    assert!(rotate.status.success(), "{}", stderr(&rotate));
    let again = server.cli(&["token-key", "rotate"], "");
    assert!(!again.status.success(), "a second rotation would drop a key still in use");
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    server.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let jwks = loop {
        let jwks: Value = server
            .client
            .get(server.url("/.well-known/jwks.json"))
            .send()
            .await
            .expect("jwks")
            .json()
            .await
            .expect("j");
        if jwks["keys"].as_array().map(Vec::len) == Some(2) {
            break jwks;
        }
        assert!(std::time::Instant::now() < deadline, "the server did not pick up the rotation: {jwks}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let algorithms: Vec<&str> =
        jwks["keys"].as_array().expect("keys").iter().filter_map(|k| k["alg"].as_str()).collect();
    assert_eq!(algorithms, ["ES256", "RS256"]);

    let new = server.token("learner@example.org").await;
    assert_eq!(header(&new)["alg"], "ES256");
    assert_ne!(header(&new)["kid"].as_str(), Some(old_kid.as_str()));
    assert_eq!(server.get_json(&new, "/api/v1/me").await.0, 200, "ES256 tokens are accepted");
    assert_eq!(server.get_json(&old, "/api/v1/me").await.0, 200, "tokens of the retired key still work");
    let show = stdout(&server.cli(&["token-key", "show"], ""));
    assert!(show.contains(&old_kid), "{show}");
    assert!(show.contains("retired"), "{show}");
}

/// An HTTPS server on loopback that serves a key set and counts requests.
struct KeySetServer {
    url: String,
    ca_file: std::path::PathBuf,
    keys: std::sync::Arc<std::sync::Mutex<Value>>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    handle: axum_server::Handle<std::net::SocketAddr>,
}

impl KeySetServer {
    async fn start(dir: &std::path::Path) -> KeySetServer {
        let keys = std::sync::Arc::new(std::sync::Mutex::new(json!({"keys": []})));
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (served, counted) = (keys.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let served = served.clone();
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    axum::Json(served.lock().expect("keys").clone())
                }
            }),
        );
        let (base, ca_file, handle) = crate::harness::serve_https(dir, "jwks", app).await;
        KeySetServer { url: format!("{base}/jwks.json"), ca_file, keys, hits, handle }
    }
}

impl Drop for KeySetServer {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

const ISSUER: &str = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Test";

/// A signing key the test controls, from the same generator LearnTrac uses.
fn test_key(key_type: learntrac_server::keys::KeyType) -> (learntrac_server::keys::KeyPair, String) {
    let pem = learntrac_server::keys::generate(key_type).expect("key");
    (learntrac_server::keys::KeyPair::from_pkcs8_pem(&pem).expect("pair"), pem)
}

/// Claims shaped like a managed user pool's access token.
fn pool_claims(groups: &[&str], now: i64) -> Value {
    json!({
        "iss": ISSUER,
        "sub": "5f1c0d2e-0000-4000-8000-00000000abcd",
        "client_id": "app-client",
        "token_use": "access",
        "scope": "openid email",
        "cognito:groups": groups,
        "username": "grace",
        "auth_time": now,
        "iat": now,
        "exp": now + 3600,
        "jti": format!("jti-{now}-{}", groups.len()),
    })
}

fn sign(key: &learntrac_server::keys::KeyPair, header: jsonwebtoken::Header, claims: &Value) -> String {
    jsonwebtoken::encode(&header, claims, &key.encoding).expect("sign")
}

fn header_for(key: &learntrac_server::keys::KeyPair) -> jsonwebtoken::Header {
    let mut header = jsonwebtoken::Header::new(key.algorithm);
    header.kid = Some(key.kid.clone());
    header
}

#[tokio::test]
async fn external_provider_tokens_checked() {
    let mut server = Server::new().await;
    server.ingest(&crate::harness::corpus_dir().join("R-intro.pdf"));
    let keyset = KeySetServer::start(&server.data_dir).await;
    let (rsa, rsa_pem) = test_key(learntrac_server::keys::KeyType::Rs256);
    let (ec, _) = test_key(learntrac_server::keys::KeyType::Es256);
    *keyset.keys.lock().expect("keys") = json!({"keys": [rsa.jwk, ec.jwk]});
    server.write_settings(&format!(
        "[identity]\nclock_skew_seconds = 60\n[identity.external]\nissuer = \"{ISSUER}\"\nclient_ids = [\"app-client\"]\n\
         jwks_url = \"{}\"\nca_file = {:?}\n",
        keyset.url,
        keyset.ca_file.display().to_string()
    ));
    server.serve().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;

    // Groups map to rights: an instructor may add books, a learner may not.
    let instructor = sign(&rsa, header_for(&rsa), &pool_claims(&["instructors"], now));
    let (status, me) = server.get_json(&instructor, "/api/v1/me").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["groups"], json!(["instructors"]));
    let response = server.upload(&instructor, "notes.md", "# Notes\n\nExternal instructors add books.\n").await;
    assert_eq!(server.finished_job(&instructor, response).await["state"], "succeeded");
    let mut learner_claims = pool_claims(&["students"], now);
    learner_claims["sub"] = "learner-sub".into();
    learner_claims["username"] = "lin".into();
    let learner = sign(&ec, header_for(&ec), &learner_claims);
    assert_eq!(server.get_json(&learner, "/api/v1/me").await.0, 200, "ES256 tokens are accepted");
    assert_eq!(server.upload(&learner, "more.md", "# More\n\nText.\n").await.status(), 403);
    let admin = sign(&rsa, header_for(&rsa), &pool_claims(&["admins"], now));
    assert_eq!(server.get_json(&admin, "/api/v1/admin/users").await.0, 200);
    let fetches = keyset.hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(fetches, 1, "the key set is cached");

    // Every forged or mismatched token is refused with a generic 401.
    let public_pem = rcgen::KeyPair::from_pem(&rsa_pem).expect("key").public_key_pem();
    let base = pool_claims(&["students"], now);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = base.clone();
        change(&mut claims);
        claims
    };
    let unsigned = {
        let head = URL_SAFE_NO_PAD.encode(format!("{{\"alg\":\"none\",\"kid\":\"{}\"}}", rsa.kid));
        format!("{head}.{}.", URL_SAFE_NO_PAD.encode(base.to_string()))
    };
    let hmac = |secret: &[u8]| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(rsa.kid.clone());
        jsonwebtoken::encode(&header, &base, &jsonwebtoken::EncodingKey::from_secret(secret).expect("key"))
            .expect("hmac")
    };
    let mut unknown_kid = header_for(&rsa);
    unknown_kid.kid = Some("no-such-key".into());
    let mut jku = header_for(&rsa);
    jku.jku = Some("https://evil.example/jwks.json".into());
    let mut x5u = header_for(&rsa);
    x5u.x5u = Some("https://evil.example/cert.pem".into());
    let (stranger, _) = test_key(learntrac_server::keys::KeyType::Rs256);
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", unsigned, "algorithm"),
        ("HMAC", hmac(b"a shared secret"), "algorithm"),
        ("public key as HMAC secret", hmac(public_pem.as_bytes()), "algorithm"),
        ("unknown kid", sign(&rsa, unknown_kid, &base), "unknown key id"),
        ("jku header", sign(&rsa, jku, &base), "jku"),
        ("x5u header", sign(&rsa, x5u, &base), "x5u"),
        ("another key", sign(&stranger, header_for(&rsa), &base), "invalid signature"),
        ("expired", sign(&rsa, header_for(&rsa), &with(&|c| c["exp"] = (now - 61).into())), "expired"),
        ("not yet valid", sign(&rsa, header_for(&rsa), &with(&|c| c["nbf"] = (now + 120).into())), "not valid before"),
        ("wrong issuer", sign(&rsa, header_for(&rsa), &with(&|c| c["iss"] = "https://evil.example".into())), "invalid"),
        ("wrong client", sign(&rsa, header_for(&rsa), &with(&|c| c["client_id"] = "other-app".into())), "client"),
        (
            "wrong audience",
            sign(
                &rsa,
                header_for(&rsa),
                &with(&|c| {
                    c.as_object_mut().expect("object").remove("client_id");
                    c["aud"] = "other-app".into();
                }),
            ),
            "client",
        ),
        ("ID token", sign(&rsa, header_for(&rsa), &with(&|c| c["token_use"] = "id".into())), "token_use"),
    ];
    for (name, token, _) in &cases {
        let (status, body) = server.get_json(token, "/api/v1/me").await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(body["error"], "invalid_token", "{name}: a generic answer");
    }
    let within_skew = sign(&rsa, header_for(&rsa), &with(&|c| c["exp"] = (now - 50).into()));
    assert_eq!(server.get_json(&within_skew, "/api/v1/me").await.0, 200, "60 seconds of clock skew are allowed");
    assert!(
        keyset.hits.load(std::sync::atomic::Ordering::SeqCst) <= 2,
        "unknown key ids fetch the key set at most once per interval"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = server.stdout_text();
    for (name, _, reason) in &cases {
        assert!(
            log.lines()
                .any(|l| l.contains("token rejected") && l.contains("learntrac::security") && l.contains(reason)),
            "{name}: no security log line with {reason:?}"
        );
    }

    // A user disabled in LearnTrac is refused even with a valid token.
    let disable = server.cli(&["user", "disable", "grace@cognito-idp.eu-west-1.amazonaws.com"], "");
    assert!(disable.status.success(), "{}", stderr(&disable));
    // Another process changed the database; the server notices within seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.get_json(&instructor, "/api/v1/me").await.0 != 401 {
        assert!(std::time::Instant::now() < deadline, "the disabled user's token still works");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
