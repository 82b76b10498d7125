//! Authentication at the gateway: HTTPS only, every request with a valid token.

use serde_json::Value;

use crate::harness::{PASSWORD, Server};

#[tokio::test]
async fn plain_http_redirects_to_https() {
    let server = Server::start().await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let response =
        client.get(format!("http://127.0.0.1:{}/wiki/WikiStart?x=1", server.http_port)).send().await.expect("http");
    assert_eq!(response.status(), 308);
    assert_eq!(response.headers()["location"], format!("{}/wiki/WikiStart?x=1", server.base).as_str());
    let response = client
        .get(format!("http://127.0.0.1:{}/x", server.http_port))
        .header("host", "evil.example")
        .send()
        .await
        .expect("http");
    assert_eq!(response.headers()["location"], format!("{}/x", server.base).as_str(), "the Host header is not trusted");
    let response =
        client.post(format!("http://127.0.0.1:{}/oauth2/token", server.http_port)).send().await.expect("http");
    assert_eq!(response.status(), 308, "nothing is served over plain HTTP");
}

#[tokio::test]
async fn api_without_valid_token_is_401() {
    let server = Server::start().await;
    server.add_user("learner@example.org", "students");

    let response = server.client.get(server.url("/api/v1/paths")).send().await.expect("request");
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"].to_str().expect("ascii").to_string();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "unauthorized");
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));

    let tokens: Value = server.token_response("learner@example.org", PASSWORD).await.json().await.expect("json");
    for field in ["access_token", "id_token", "refresh_token", "token_type", "expires_in"] {
        assert!(!tokens[field].is_null(), "token response has {field}: {tokens}");
    }
    assert_eq!(tokens["token_type"], "Bearer");
    let access = tokens["access_token"].as_str().expect("access");
    let id_token = tokens["id_token"].as_str().expect("id");

    let mut tampered = access.to_string();
    let last = tampered.pop().map_or('A', |c| if c == 'A' { 'B' } else { 'A' });
    tampered.push(last);
    for (label, token) in [("tampered", tampered.as_str()), ("id token", id_token), ("garbage", "abc.def.ghi")] {
        let response = server.client.get(server.url("/api/v1/paths")).bearer_auth(token).send().await.expect("request");
        assert_eq!(response.status(), 401, "{label}");
        assert!(response.headers().contains_key("www-authenticate"), "{label}");
    }
    let (status, _) = server.get_json(access, "/api/v1/paths").await;
    assert_eq!(status, 200);
    // The log reaches the harness through a pipe, so it may lag the response.
    let mut logged_user = false;
    for _ in 0..50 {
        logged_user = server.stdout_text().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).any(|event| {
            event["target"] == "learntrac::access"
                && event["fields"]["status"] == 200
                && event["fields"]["user_id"].is_i64()
        });
        if logged_user {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(logged_user, "the access log names the authenticated user");

    // A second server has its own key: its tokens are not accepted here.
    let other = Server::start().await;
    other.add_user("learner@example.org", "students");
    let foreign = other.token("learner@example.org").await;
    let (status, _) = server.get_json(&foreign, "/api/v1/paths").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn keys_and_discovery_are_published() {
    let server = Server::start().await;
    let jwks: Value =
        server.client.get(server.url("/.well-known/jwks.json")).send().await.expect("jwks").json().await.expect("json");
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["alg"], "RS256");
    assert!(key["n"].as_str().is_some_and(|n| n.len() > 300), "2048-bit modulus");
    let discovery: Value = server
        .client
        .get(server.url("/.well-known/openid-configuration"))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    assert_eq!(discovery["issuer"], server.base.as_str());
    assert_eq!(discovery["jwks_uri"], format!("{}/.well-known/jwks.json", server.base).as_str());
}

#[tokio::test]
async fn refresh_tokens_work_once() {
    let server = Server::start().await;
    server.add_user("learner@example.org", "students");
    let tokens: Value = server.token_response("learner@example.org", PASSWORD).await.json().await.expect("json");
    let refresh = tokens["refresh_token"].as_str().expect("refresh");
    let form = [("grant_type", "refresh_token"), ("client_id", "learntrac-cli"), ("refresh_token", refresh)];
    let first = server.client.post(server.url("/oauth2/token")).form(&form).send().await.expect("refresh");
    assert_eq!(first.status(), 200);
    let renewed: Value = first.json().await.expect("json");
    let (status, _) = server.get_json(renewed["access_token"].as_str().expect("access"), "/api/v1/me").await;
    assert_eq!(status, 200);
    let again = server.client.post(server.url("/oauth2/token")).form(&form).send().await.expect("refresh");
    assert_eq!(again.status(), 400);
    let error: Value = again.json().await.expect("json");
    assert_eq!(error["error"], "invalid_grant");
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_the_same() {
    let server = Server::start().await;
    server.add_user("learner@example.org", "students");
    let wrong = server.token_response("learner@example.org", "Wrong-pass-1!").await;
    let wrong_status = wrong.status();
    let wrong_body: Value = wrong.json().await.expect("json");
    let unknown = server.token_response("nobody@example.org", "Wrong-pass-1!").await;
    assert_eq!(wrong_status, unknown.status());
    let unknown_body: Value = unknown.json().await.expect("json");
    assert_eq!(wrong_body, unknown_body);
    assert_eq!(wrong_body["error"], "invalid_grant");
}

#[tokio::test]
async fn pages_redirect_to_sign_in() {
    let server = Server::start().await;
    server.add_user("learner@example.org", "students");
    for path in ["/wiki/WikiStart", "/roadmap", "/ticket/1", "/library"] {
        let response = server.client.get(server.url(path)).send().await.expect("page");
        assert_eq!(response.status(), 303, "{path}");
        let location = response.headers()["location"].to_str().expect("ascii");
        assert!(location.starts_with("/login?next="), "{path} -> {location}");
    }
    let response = server
        .client
        .get(server.url("/wiki/WikiStart"))
        .header("cookie", "__Host-lt_session=forged")
        .send()
        .await
        .expect("page");
    assert_eq!(response.status(), 303, "an invalid session cookie is not a session");

    let cookie = server.sign_in("learner@example.org", PASSWORD).await;
    let page = server.client.get(server.url("/wiki/WikiStart")).header("cookie", &cookie).send().await.expect("page");
    assert_eq!(page.status(), 200);
    crate::harness::assert_security_headers(&page, "a wiki page");
    let html = page.text().await.expect("html");
    assert!(html.contains("action=\"/paths/preview\""), "the LearningPath macro shows the goal form");

    // Form posts from another origin are rejected over HTTP/2 and HTTP/1.1,
    // on the trac pages and on the identity provider's forms.
    let http1 = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(server.data_dir.join("tls/ca.pem")).expect("ca"))
                .expect("ca"),
        )
        .resolve("localhost", ([127, 0, 0, 1], server.https_port).into())
        .redirect(reqwest::redirect::Policy::none())
        .http1_only()
        .build()
        .expect("client");
    let token = server.csrf(&cookie).await;
    for client in [&server.client, &http1] {
        for (path, mut form) in [
            ("/paths/preview", vec![("goal", "vectors")]),
            ("/account/password", vec![("current", PASSWORD), ("new_password", "Other-pass-99!")]),
            ("/logout", vec![]),
        ] {
            form.push(("csrf", token.as_str()));
            for origin in ["https://evil.example", "null", &format!("http://localhost:{}", server.https_port)] {
                let response = client
                    .post(server.url(path))
                    .header("cookie", &cookie)
                    .header("origin", origin)
                    .form(&form)
                    .send()
                    .await
                    .expect("post");
                assert_eq!(response.status(), 403, "{path} from {origin}");
            }
        }
        let response = client
            .post(server.url("/paths/preview"))
            .header("cookie", &cookie)
            .header("origin", server.base.as_str())
            .form(&[("goal", "vectors")])
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 403, "a form without its token is refused");
        for wrong in ["", "forged-token-forged-token-forged"] {
            let response = client
                .post(server.url("/paths/preview"))
                .header("cookie", &cookie)
                .form(&[("goal", "vectors"), ("csrf", wrong)])
                .send()
                .await
                .expect("post");
            assert_eq!(response.status(), 403, "a form with a wrong token is refused");
        }
        let response = client
            .post(server.url("/paths/preview"))
            .header("cookie", &cookie)
            .header("origin", server.base.as_str())
            .form(&[("goal", "vectors"), ("csrf", token.as_str())])
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 200, "same-origin posts with the session's token pass");
    }
    let response = server.client.get(server.url("/wiki/WikiStart")).send().await.expect("page");
    assert_eq!(response.version(), reqwest::Version::HTTP_2, "the gateway speaks HTTP/2");
}

#[tokio::test]
async fn sign_in_redirect_stays_on_site() {
    let server = Server::start().await;
    server.add_user("learner@example.org", "students");
    let (form_cookie, token) = server.anonymous_form("/login").await;
    for next in ["/\t/evil.example", "//evil.example", "https://evil.example/", "/\n/x", "/\\evil"] {
        let response = server
            .client
            .post(server.url("/login"))
            .header("cookie", &form_cookie)
            .form(&[("username", "learner@example.org"), ("password", PASSWORD), ("next", next), ("csrf", &token)])
            .send()
            .await
            .expect("sign in");
        assert_eq!(response.status(), 303, "{next:?}");
        assert_eq!(response.headers()["location"], "/", "{next:?}");
    }
}

#[tokio::test]
async fn first_administrator_must_change_password() {
    let server = Server::start().await;
    let stderr = server.stderr_text();
    let one_time = stderr
        .lines()
        .find_map(|line| line.trim().strip_prefix("One-time password: "))
        .unwrap_or_else(|| panic!("no one-time password on stderr: {stderr}"))
        .to_string();
    assert!(!server.stdout_text().contains(&one_time), "the password never reaches the log");

    let response = server.token_response("admin@localhost", &one_time).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert!(body["error_description"].as_str().expect("description").contains("changed"), "{body}");

    let (form_cookie, token) = server.anonymous_form("/login").await;
    let response = server
        .client
        .post(server.url("/login"))
        .header("cookie", &form_cookie)
        .form(&[
            ("username", "admin@localhost"),
            ("password", one_time.as_str()),
            ("next", "/roadmap"),
            ("csrf", &token),
        ])
        .send()
        .await
        .expect("sign in");
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/account/password");
    let cookie = crate::harness::set_cookie(&response, "__Host-lt_session").expect("session cookie");
    let roadmap = server.client.get(server.url("/roadmap")).header("cookie", &cookie).send().await.expect("page");
    assert_eq!(roadmap.headers()["location"], "/account/password", "nothing else until the password is changed");

    let weak =
        server.post_form(&cookie, "/account/password", &[("current", &one_time), ("new_password", "weak")]).await;
    assert_eq!(weak.status(), 400);
    assert!(weak.text().await.expect("html").contains("upper-case"));

    let changed = server
        .post_form(&cookie, "/account/password", &[("current", &one_time), ("new_password", "New-Admin-Pass-9")])
        .await;
    assert_eq!(changed.status(), 303);
    // Admins must also set up a second factor before they get tokens.
    let fresh = server.token_response("admin@localhost", "New-Admin-Pass-9").await;
    assert_eq!(fresh.status(), 400);
    let body: Value = fresh.json().await.expect("json");
    assert!(body["error_description"].as_str().expect("description").contains("multi-factor"), "{body}");
    let account = server.client.get(server.url("/roadmap")).header("cookie", &cookie).send().await.expect("page");
    assert_eq!(account.status(), 303, "the old session ended with the password change");
    assert_eq!(
        server.token_response("admin@localhost", &one_time).await.status(),
        400,
        "the one-time password is gone"
    );
}

#[tokio::test]
async fn password_change_and_sign_out_end_sessions() {
    let server = Server::start().await;
    server.add_user("learner@example.org", "students");
    let tokens: Value = server.token_response("learner@example.org", PASSWORD).await.json().await.expect("json");
    let access = tokens["access_token"].as_str().expect("access").to_string();
    let refresh = tokens["refresh_token"].as_str().expect("refresh").to_string();
    let old_session = server.sign_in("learner@example.org", PASSWORD).await;
    let session = server.sign_in("learner@example.org", PASSWORD).await;

    // Signing out revokes that session, not only the browser's cookie.
    let response = server.post_form(&old_session, "/logout", &[]).await;
    assert_eq!(response.status(), 303);
    let page = server.client.get(server.url("/roadmap")).header("cookie", &old_session).send().await.expect("page");
    assert_eq!(page.status(), 303, "a copy of a signed-out cookie is refused");
    let page = server.client.get(server.url("/roadmap")).header("cookie", &session).send().await.expect("page");
    assert_eq!(page.status(), 200, "other sessions go on");

    // A password change signs the user out everywhere.
    let changed = server
        .post_form(&session, "/account/password", &[("current", PASSWORD), ("new_password", "Brand-new-pass-7")])
        .await;
    assert_eq!(changed.status(), 303);
    let (status, _) = server.get_json(&access, "/api/v1/me").await;
    assert_eq!(status, 401, "access tokens issued before the change are refused");
    let page = server.client.get(server.url("/roadmap")).header("cookie", &session).send().await.expect("page");
    assert_eq!(page.status(), 303, "sessions from before the change are refused");
    let form = [("grant_type", "refresh_token"), ("client_id", "learntrac-cli"), ("refresh_token", refresh.as_str())];
    let response = server.client.post(server.url("/oauth2/token")).form(&form).send().await.expect("refresh");
    assert_eq!(response.status(), 400, "refresh tokens are revoked");

    let fresh = server.token_response("learner@example.org", "Brand-new-pass-7").await;
    assert_eq!(fresh.status(), 200);
    let fresh: Value = fresh.json().await.expect("json");
    let (status, _) = server.get_json(fresh["access_token"].as_str().expect("access"), "/api/v1/me").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn cli_password_reset_revokes_tokens() {
    let server = Server::start().await;
    server.add_user("learner@example.org", "students");
    let old = server.token("learner@example.org").await;

    let reset =
        server.cli(&["user", "set-password", "--email", "learner@example.org", "--password-stdin"], "Reset-pass-42!\n");
    assert!(reset.status.success(), "{}", String::from_utf8_lossy(&reset.stderr));
    let (status, _) = server.get_json(&old, "/api/v1/me").await;
    assert_eq!(status, 401, "a token issued before the reset is refused");
    assert_eq!(server.token_response("learner@example.org", "Reset-pass-42!").await.status(), 200);

    let unknown =
        server.cli(&["user", "set-password", "--email", "nobody@example.org", "--password-stdin"], "Reset-pass-42!\n");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("nobody@example.org"));
}

#[tokio::test]
async fn public_url_from_settings_file_names_issuer() {
    let mut server = Server::new().await;
    std::fs::write(server.data_dir.join("learntrac.toml"), "public_url = \"https://learn.example:9443/\"\n")
        .expect("write settings");
    server.serve().await;
    let discovery: Value = server
        .client
        .get(server.url("/.well-known/openid-configuration"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(discovery["issuer"], "https://learn.example:9443", "the file's value survives --https-listen");

    let bad = Server::new().await;
    std::fs::write(bad.data_dir.join("learntrac.toml"), "public_url = \"http://learn.example\"\n")
        .expect("write settings");
    let output = bad.cli(crate::harness::SERVE_ARGS, "");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("learntrac.toml"), "{stderr}");
    assert!(stderr.contains("https://"), "{stderr}");
    std::fs::write(bad.data_dir.join("learntrac.toml"), "no_such_setting = 1\n").expect("write settings");
    let output = bad.cli(crate::harness::SERVE_ARGS, "");
    assert!(String::from_utf8_lossy(&output.stderr).contains("no_such_setting"));
}
