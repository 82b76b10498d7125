//! Bad input gets a 4xx that names the problem, and nothing is stored.

use serde_json::{Value, json};

use crate::harness::{Server, corpus_dir};

#[tokio::test]
async fn invalid_requests_are_explained() {
    let mut server = Server::new().await;
    server.ingest(&corpus_dir().join("R-intro.pdf"));
    server.add_user("learner@example.org", "students");
    server.serve().await;
    let token = server.token("learner@example.org").await;

    let (status, path) = server.post_json(&token, "/api/v1/paths", &json!({"query": "logical vectors"})).await;
    assert_eq!(status, 201);
    let ticket = path["tickets"][0]["id"].as_i64().expect("ticket id");
    let answers = format!("/api/v1/tickets/{ticket}/answers");

    for (body, needle) in [
        (json!({"answer": ""}), "empty"),
        (json!({"answer": "TRUE"}), "at least 3 words"),
        (json!({"answer": "x".repeat(20_000)}), "limit"),
        (json!({"reply": "wrong field name here"}), "answer"),
    ] {
        let (status, error) = server.post_json(&token, &answers, &body).await;
        assert_eq!(status, 400, "{body} -> {error}");
        assert!(error["message"].as_str().expect("message").contains(needle), "{error}");
    }
    let (_, attempts) = server.get_json(&token, &answers).await;
    assert_eq!(attempts["answers"].as_array().expect("answers").len(), 0, "rejected answers are not stored");
    let (_, current) = server.get_json(&token, &format!("/api/v1/tickets/{ticket}")).await;
    assert_eq!(current["status"], "new");

    let response = server
        .client
        .post(server.url(&answers))
        .bearer_auth(&token)
        .body("{\"answer\": ")
        .header("content-type", "application/json")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 400);
    let response =
        server.client.post(server.url(&answers)).bearer_auth(&token).body("answer=x").send().await.expect("post");
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("json");
    assert!(error["message"].as_str().expect("message").contains("application/json"), "{error}");

    for (body, needle) in [
        (json!({"query": "   "}), "empty"),
        (json!({"query": "the of and"}), "searchable"),
        (json!({"query": "q".repeat(600)}), "500"),
        (json!({"query": "vectors", "max_concepts": 0}), "max_concepts"),
        (json!({"query": "vectors", "max_concepts": 99}), "max_concepts"),
        (json!({"query": "quantum chromodynamics gluon"}), "no passage"),
    ] {
        let (status, error) = server.post_json(&token, "/api/v1/paths", &body).await;
        assert_eq!(status, 400, "{body} -> {error}");
        assert!(error["message"].as_str().expect("message").contains(needle), "{body} -> {error}");
    }

    for path in ["/api/v1/tickets/abc", "/api/v1/tickets/-4", "/api/v1/paths/1.5"] {
        let (status, error) = server.get_json(&token, path).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(error["error"], "invalid_id");
    }
    let (status, error) = server.get_json(&token, "/api/v1/tickets/999999").await;
    assert_eq!(status, 404);
    assert!(error["message"].as_str().expect("message").contains("999999"));
    let (status, _) = server.get_json(&token, "/api/v1/no-such-route").await;
    assert_eq!(status, 404);
    let cookie = server.sign_in("learner@example.org", crate::harness::PASSWORD).await;
    let response =
        server.client.get(server.url("/library?job=abc")).header("cookie", &cookie).send().await.expect("get");
    assert_eq!(response.status(), 400);
    assert!(response.text().await.expect("html").contains("job"), "the page names the bad parameter");
    let response = server.client.get(server.url("/no-such-page")).send().await.expect("get");
    assert_eq!(response.status(), 404);
    assert!(response.text().await.expect("html").contains("page not found"), "an HTML page, not an empty body");

    let response = server.client.delete(server.url("/api/v1/paths")).bearer_auth(&token).send().await.expect("delete");
    assert_eq!(response.status(), 405);
    let error: Value = response.json().await.expect("json body on 405");
    assert_eq!(error["error"], "method_not_allowed");

    let huge = json!({"answer": "word ".repeat(400_000)});
    let (status, error) = server.post_json(&token, &answers, &huge).await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(error["error"], "payload_too_large");

    let (status, error) = server.post_json(&token, "/api/v1/search", &json!({"query": "vectors", "limit": 500})).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"], "invalid_limit");

    let response = server
        .client
        .post(server.url("/oauth2/token"))
        .json(&json!({"grant_type": "password"}))
        .send()
        .await
        .expect("token");
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"], "invalid_request");
    assert!(error["error_description"].as_str().expect("description").contains("form-encoded"));
}

#[tokio::test]
async fn cli_rejects_weak_passwords_and_unknown_groups() {
    let server = Server::new().await;
    let weak =
        server.cli(&["user", "add", "--email", "a@example.org", "--group", "students", "--password-stdin"], "short\n");
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("at least 8 characters"));
    let group = server
        .cli(&["user", "add", "--email", "a@example.org", "--group", "wizards", "--password-stdin"], "Good-pass-1!\n");
    assert!(!group.status.success());
    assert!(String::from_utf8_lossy(&group.stderr).contains("wizards"));
    let missing = server.cli(&["ingest", "/nonexistent/book.pdf"], "");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/book.pdf"));
    let corrupt_path = server.data_dir.join("broken.pdf");
    std::fs::write(&corrupt_path, b"%PDF-1.4 not really").expect("write");
    let corrupt = server.cli(&["ingest", corrupt_path.to_str().expect("utf-8")], "");
    assert!(!corrupt.status.success());
    assert!(
        String::from_utf8_lossy(&corrupt.stderr).contains("broken.pdf"),
        "{}",
        String::from_utf8_lossy(&corrupt.stderr)
    );
}
