//! A learner masters a concept from a real textbook.

use serde_json::{Value, json};

use crate::harness::{PASSWORD, Server, corpus_dir};

fn ticket_with_section<'a>(path: &'a Value, heading: &str) -> Option<&'a Value> {
    path["tickets"].as_array()?.iter().find(|t| t["section"] == heading)
}

#[tokio::test]
async fn learner_masters_missing_values_from_r_intro() {
    let mut server = Server::new().await;
    let output = server.ingest(&corpus_dir().join("R-intro.pdf"));
    assert!(output.contains("An Introduction to R"), "{output}");
    server.add_user("learner@example.org", "students");
    server.add_user("teacher@example.org", "instructors");
    server.serve().await;

    let learner = server.token("learner@example.org").await;
    let teacher = server.token("teacher@example.org").await;

    // The library shows the book with its real structure.
    let (status, books) = server.get_json(&learner, "/api/v1/books").await;
    assert_eq!(status, 200);
    assert_eq!(books["books"][0]["title"], "An Introduction to R");

    // Search finds the section on missing values first.
    let (status, found) = server.post_json(&learner, "/api/v1/search", &json!({"query": "missing values in R"})).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["passages"][0]["heading"], "2.5 Missing values", "{found}");

    // A path about the goal includes section 2.5.
    let (status, path) = server
        .post_json(&learner, "/api/v1/paths", &json!({"query": "I want to understand how R handles missing values"}))
        .await;
    assert_eq!(status, 201, "{path}");
    let path_id = path["path_id"].as_i64().expect("path_id");
    let tickets = path["tickets"].as_array().expect("tickets");
    assert!(tickets.len() >= 2, "{path}");
    for ticket in tickets {
        assert!(ticket["question"].as_str().is_some_and(|q| q.ends_with('?')), "{ticket}");
        let difficulty = ticket["difficulty"].as_i64().expect("difficulty");
        assert!((1..=5).contains(&difficulty), "{ticket}");
        assert!(ticket["prerequisites"].is_array());
        assert!(ticket.get("expected_answer").is_none(), "path response hides expected answers");
    }
    let missing = ticket_with_section(&path, "2.5 Missing values").expect("section 2.5 in the path");
    let missing_id = missing["id"].as_i64().expect("id");
    let other = tickets.iter().find(|t| t["id"] != missing["id"]).expect("a second ticket");
    let other_id = other["id"].as_i64().expect("id");
    assert!(
        tickets.iter().any(|t| !t["prerequisites"].as_array().expect("array").is_empty()),
        "tickets are linked by prerequisites: {path}"
    );

    // The expected answer is for instructors only.
    let (status, as_learner) = server.get_json(&learner, &format!("/api/v1/tickets/{missing_id}")).await;
    assert_eq!(status, 200);
    assert!(as_learner.get("expected_answer").is_none(), "{as_learner}");
    let (status, as_teacher) = server.get_json(&teacher, &format!("/api/v1/tickets/{missing_id}")).await;
    assert_eq!(status, 200);
    let expected = as_teacher["expected_answer"].as_str().expect("expected_answer for instructors");
    assert!(expected.contains("NA") || expected.to_lowercase().contains("missing"), "{expected}");

    // The expected answer masters the concept.
    let (status, graded) = server
        .post_json(&learner, &format!("/api/v1/tickets/{missing_id}/answers"), &json!({"answer": expected}))
        .await;
    assert_eq!(status, 201, "{graded}");
    assert!(graded["score"].as_f64().expect("score") >= 0.9, "{graded}");
    assert_eq!(graded["mastered"], true);
    assert_eq!(graded["status"], "mastered");
    assert!(graded["feedback"].as_str().is_some_and(|f| !f.is_empty()));

    // An unrelated answer does not.
    let unrelated = "Photosynthesis lets green plants turn sunlight, water and carbon dioxide into sugar and oxygen.";
    let (status, graded) =
        server.post_json(&learner, &format!("/api/v1/tickets/{other_id}/answers"), &json!({"answer": unrelated})).await;
    assert_eq!(status, 201, "{graded}");
    assert!(graded["score"].as_f64().expect("score") <= 0.2, "{graded}");
    assert_eq!(graded["mastered"], false);
    assert_eq!(graded["status"], "studying");
    assert!(!graded["suggestions"].as_array().expect("suggestions").is_empty());

    // Every attempt is kept.
    let (status, attempts) = server.get_json(&learner, &format!("/api/v1/tickets/{other_id}/answers")).await;
    assert_eq!(status, 200);
    assert_eq!(attempts["answers"].as_array().expect("answers").len(), 1);
    assert_eq!(attempts["answers"][0]["answer"], unrelated);

    // The graph shows both states, each node a link to its ticket.
    let response = server
        .client
        .get(server.url(&format!("/api/v1/paths/{path_id}/graph.svg")))
        .bearer_auth(&learner)
        .send()
        .await
        .expect("graph");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/svg+xml");
    let svg = response.text().await.expect("svg");
    assert!(svg.contains(&format!("data-ticket=\"{missing_id}\" data-status=\"mastered\"")), "{svg}");
    assert!(svg.contains(&format!("data-ticket=\"{other_id}\" data-status=\"studying\"")), "{svg}");
    assert!(svg.contains("#4caf50"), "a green node");
    assert!(svg.contains("#f5a623"), "an orange node");
    assert!(svg.contains(&format!("href=\"/ticket/{missing_id}\"")));
    assert!(svg.contains("class=\"prerequisite\""), "arrows for prerequisites");

    // The knowledge-graph page shows the same for a signed-in browser.
    let cookie = server.sign_in("learner@example.org", PASSWORD).await;
    let page = server
        .client
        .get(server.url(&format!("/paths/{path_id}")))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("data-status=\"mastered\""));
    assert!(html.contains("data-status=\"studying\""));

    // The roadmap counts the mastered concept.
    let (status, paths) = server.get_json(&learner, "/api/v1/paths").await;
    assert_eq!(status, 200);
    assert_eq!(paths["paths"][0]["mastered"], 1);
    assert_eq!(paths["paths"][0]["studying"], 1);
}

#[tokio::test]
async fn learners_see_only_their_own_paths() {
    let mut server = Server::new().await;
    server.ingest(&corpus_dir().join("R-intro.pdf"));
    server.add_user("ann@example.org", "students");
    server.add_user("bob@example.org", "students");
    server.add_user("teacher@example.org", "instructors");
    server.serve().await;
    let ann = server.token("ann@example.org").await;
    let bob = server.token("bob@example.org").await;
    let teacher = server.token("teacher@example.org").await;

    let (status, path) =
        server.post_json(&ann, "/api/v1/paths", &json!({"query": "factors and tapply", "max_concepts": 3})).await;
    assert_eq!(status, 201, "{path}");
    assert!(path["tickets"].as_array().expect("tickets").len() <= 3);
    let path_id = path["path_id"].as_i64().expect("id");
    let ticket_id = path["tickets"][0]["id"].as_i64().expect("id");

    let (status, _) = server.get_json(&bob, &format!("/api/v1/paths/{path_id}")).await;
    assert_eq!(status, 404, "another learner's path is not found");
    let (status, _) = server.get_json(&bob, &format!("/api/v1/tickets/{ticket_id}")).await;
    assert_eq!(status, 404);
    let (status, _) = server
        .post_json(&bob, &format!("/api/v1/tickets/{ticket_id}/answers"), &json!({"answer": "a factor groups values"}))
        .await;
    assert_eq!(status, 404);
    let (_, bobs) = server.get_json(&bob, "/api/v1/paths").await;
    assert_eq!(bobs["paths"].as_array().expect("paths").len(), 0);

    let (status, _) = server.get_json(&teacher, &format!("/api/v1/paths/{path_id}")).await;
    assert_eq!(status, 200, "instructors see their learners' progress");
    let (_, all) = server.get_json(&teacher, "/api/v1/paths").await;
    assert_eq!(all["paths"][0]["owner_email"], "ann@example.org");
    let (status, body) = server
        .post_json(
            &teacher,
            &format!("/api/v1/tickets/{ticket_id}/answers"),
            &json!({"answer": "a factor groups values"}),
        )
        .await;
    assert_eq!(status, 403, "only the owner answers: {body}");
}

#[tokio::test]
async fn instructor_uploads_markdown_book() {
    let (server, teacher, learner) = Server::with_teacher_and_learner().await;
    let book = "# Statistics basics\n\n## 1.1 The mean\n\nThe mean of a sample is the sum of its values divided by their count. \
                The mean is sensitive to outliers.\n\n## 1.2 The median\n\nThe median is the middle value of the sorted sample. \
                Unlike the mean, the median resists outliers.\n";

    let response = server.upload(&learner, "stats.md", book).await;
    assert_eq!(response.status(), 403, "learners cannot add books");

    let job = server.finished_job(&teacher, server.upload(&teacher, "stats.md", book).await).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["passages_done"], job["passages_total"]);
    let (_, books) = server.get_json(&learner, "/api/v1/books").await;
    let record =
        books["books"].as_array().expect("books").iter().find(|b| b["id"] == job["book_id"]).expect("book").clone();
    assert_eq!(record["title"], "Statistics basics");
    assert_eq!(record["sections"], 3);

    let (status, found) =
        server.post_json(&learner, "/api/v1/search", &json!({"query": "median of a sorted sample"})).await;
    assert_eq!(status, 200);
    assert_eq!(found["passages"][0]["heading"], "1.2 The median", "{found}");

    // The library page's upload form takes a multipart file.
    let cookie = server.sign_in("teacher@example.org", PASSWORD).await;
    let boundary = "learntrac-test-boundary";
    let html_book = "<html><head><title>Site</title></head><body><h1>Graph theory</h1><p>A graph has vertices.</p>\
                     <h2>1.1 Trees</h2><p>A tree is a connected graph without cycles. <script>alert(1)</script></p></body></html>";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"book\"; filename=\"graphs.html\"\r\nContent-Type: text/html\r\n\r\n{html_book}\r\n--{boundary}--\r\n"
    );
    let token = server.csrf(&cookie).await;
    let response = server
        .client
        .post(server.url(&format!("/library?csrf={token}")))
        .header("cookie", &cookie)
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(form)
        .send()
        .await
        .expect("upload form");
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().expect("location").to_string();
    let job_id: i64 = location.strip_prefix("/library?job=").expect("the job's id").parse().expect("id");
    assert_eq!(server.wait_for_job(&teacher, job_id).await["state"], "succeeded");
    let page = server
        .client
        .get(server.url("/library"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("library")
        .text()
        .await
        .expect("html");
    assert!(page.contains("Graph theory"), "{page}");
    assert!(page.contains("graphs.html"), "staff see the jobs: {page}");
    assert!(page.contains("succeeded"), "staff see the jobs' states: {page}");
    assert!(page.contains("Statistics basics"), "{page}");
    let (_, found) = server.post_json(&learner, "/api/v1/search", &json!({"query": "tree without cycles"})).await;
    assert_eq!(found["passages"][0]["heading"], "1.1 Trees", "{found}");
    assert!(!found["passages"][0]["text"].as_str().expect("text").contains("alert"), "scripts are not book text");

    // The same file twice is refused; a deleted book leaves search.
    let response = server.upload(&teacher, "copy.md", book).await;
    assert_eq!(response.status(), 409);
    let error: Value = response.json().await.expect("json");
    assert!(error["message"].as_str().expect("message").contains("same content"), "{error}");
    let book_id = record["id"].as_i64().expect("id");
    let response = server
        .client
        .delete(server.url(&format!("/api/v1/books/{book_id}")))
        .bearer_auth(&learner)
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 403);
    let response = server
        .client
        .delete(server.url(&format!("/api/v1/books/{book_id}")))
        .bearer_auth(&teacher)
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 204);
    let (_, found) = server.post_json(&learner, "/api/v1/search", &json!({"query": "median of a sorted sample"})).await;
    assert!(
        found["passages"].as_array().expect("passages").iter().all(|p| p["book_title"] != "Statistics basics"),
        "{found}"
    );
    let response = server
        .client
        .delete(server.url(&format!("/api/v1/books/{book_id}")))
        .bearer_auth(&teacher)
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 404);

    let response = server.upload(&teacher, "notes.docx", "x").await;
    assert_eq!(response.status(), 415, "the gateway checks the file type");
    let error: Value = response.json().await.expect("json");
    assert!(error["message"].as_str().expect("message").contains(".md or .markdown"), "{error}");
}

#[tokio::test]
async fn instructors_edit_wiki_pages() {
    let server = Server::start().await;
    server.add_user("teacher@example.org", "instructors");
    server.add_user("learner@example.org", "students");
    let teacher = server.sign_in("teacher@example.org", PASSWORD).await;
    let learner = server.sign_in("learner@example.org", PASSWORD).await;

    let start = server.client.get(server.url("/wiki/WikiStart")).header("cookie", &learner).send().await.expect("page");
    assert_eq!(start.status(), 200);
    let text = "= R course =\nStart with '''vectors'''.\n\n[[LearningPath]]\n<script>x</script>";
    let saved = server.post_form(&teacher, "/wiki/WikiStart", &[("text", text)]).await;
    assert_eq!(saved.status(), 303);
    let page = server.client.get(server.url("/wiki/WikiStart")).header("cookie", &learner).send().await.expect("page");
    let html = page.text().await.expect("html");
    assert!(html.contains("<h1>R course</h1>"), "the edit shows at once: {html}");
    assert!(html.contains("<strong>vectors</strong>"));
    assert!(html.contains("action=\"/paths/preview\""));
    assert!(!html.contains("<script>x"), "wiki text is escaped");
    assert!(!html.contains("action=edit"), "learners get no edit link");

    let denied = server.post_form(&learner, "/wiki/WikiStart", &[("text", "defaced")]).await;
    assert_eq!(denied.status(), 403);
    let missing =
        server.client.get(server.url("/wiki/NoSuchPage")).header("cookie", &learner).send().await.expect("page");
    assert_eq!(missing.status(), 404);
    let invalid =
        server.client.get(server.url("/wiki/..%2f..%2fetc")).header("cookie", &learner).send().await.expect("page");
    assert_eq!(invalid.status(), 400);
}

#[tokio::test]
async fn model_installs_from_a_folder() {
    let Some(model) = crate::harness::minilm_dir() else {
        return;
    };
    let server = Server::new().await;
    let text = |output: &std::process::Output| String::from_utf8_lossy(&output.stdout).to_string();
    let errors = |output: &std::process::Output| String::from_utf8_lossy(&output.stderr).to_string();

    let show = server.cli(&["model", "show"], "");
    assert!(show.status.success());
    assert!(text(&show).contains("no model installed"), "{}", text(&show));

    let missing = server.cli(&["model", "install", "--from", "/no/such/folder"], "");
    assert!(!missing.status.success());
    assert!(errors(&missing).contains("/no/such/folder"), "{}", errors(&missing));
    let incomplete = server.data_dir.join("incomplete-model");
    std::fs::create_dir_all(&incomplete).expect("folder");
    std::fs::copy(std::path::Path::new(&model).join("config.json"), incomplete.join("config.json")).expect("copy");
    let partial = server.cli(&["model", "install", "--from", incomplete.to_str().expect("utf-8")], "");
    assert!(!partial.status.success());
    assert!(errors(&partial).contains("sentence_bert_config.json"), "{}", errors(&partial));

    let install = server.cli(&["model", "install", "--from", &model], "");
    assert!(install.status.success(), "{}", errors(&install));
    assert!(text(&install).contains("installed all-MiniLM-L6-v2:"), "{}", text(&install));
    let show = server.cli(&["model", "show"], "");
    assert!(text(&show).contains("384 dimensions, a window of 256 tokens"), "{}", text(&show));
    let leftovers: Vec<_> = std::fs::read_dir(server.data_dir.join("models"))
        .expect("models folder")
        .filter_map(|entry| entry.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no staging folder is left: {leftovers:?}");
}
