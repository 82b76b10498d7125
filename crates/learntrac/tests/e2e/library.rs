//! The library's background jobs through the API: progress, cancelling,
//! failures with their reason, duplicates, deletion, and embedding the
//! library again when the model changes.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::harness::{Server, corpus_dir};

/// Builds a PDF with one empty page whose trailer names an encryption
/// dictionary, with a correct cross-reference table.
fn encrypted_pdf() -> Vec<u8> {
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
        "<< /Filter /Standard /V 2 /R 3 /Length 128 /P -1028 \
         /O <0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef> \
         /U <0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef> >>",
    ];
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", i + 1).as_bytes());
    }
    let xref = pdf.len();
    pdf.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for offset in offsets {
        pdf.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    pdf.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R /Encrypt 4 0 R /ID [<00112233445566778899aabbccddeeff> \
             <00112233445566778899aabbccddeeff>] >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    pdf
}

async fn upload_bytes(server: &Server, token: &str, name: &str, body: Vec<u8>) -> reqwest::Response {
    let url = server.url(&format!("/api/v1/books?name={name}"));
    server.client.post(url).bearer_auth(token).body(body).send().await.expect("upload")
}

#[tokio::test]
async fn upload_job_lifecycle() {
    let (server, teacher, learner) = Server::with_teacher_and_learner().await;
    let corpus = corpus_dir();

    // A real PDF: the job reports its pages and passages and makes the book.
    let r_intro = std::fs::read(corpus.join("R-intro.pdf")).expect("R-intro.pdf");
    let response = upload_bytes(&server, &teacher, "R-intro.pdf", r_intro.clone()).await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.expect("job");
    assert_eq!(accepted["kind"], "ingest");
    assert!(["queued", "running"].contains(&accepted["state"].as_str().expect("state")), "{accepted}");
    let id = accepted["id"].as_i64().expect("id");
    assert_eq!(accepted["href"], format!("/api/v1/jobs/{id}"));
    // The same file while its job runs, and after it has ended.
    let again = upload_bytes(&server, &teacher, "copy.pdf", r_intro.clone()).await;
    assert_eq!(again.status(), 409);
    let message = again.json::<Value>().await.expect("error")["message"].as_str().expect("message").to_string();
    assert!(message.contains(&format!("job {id}")) || message.contains("same content"), "{message}");
    let job = server.wait_for_job(&teacher, id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(job["pages_total"].as_i64().expect("pages") > 90, "R-intro has about 100 pages: {job}");
    assert_eq!(job["pages_done"], job["pages_total"]);
    assert!(job["passages_total"].as_i64().expect("passages") > 100, "{job}");
    assert_eq!(job["passages_done"], job["passages_total"]);
    let book_id = job["book_id"].as_i64().expect("the job names its book");
    let again = upload_bytes(&server, &teacher, "copy.pdf", r_intro).await;
    assert_eq!(again.status(), 409);
    let message = again.json::<Value>().await.expect("error")["message"].as_str().expect("message").to_string();
    assert!(message.contains(&format!("book {book_id}")), "{message}");
    let (_, found) =
        server.post_json(&learner, "/api/v1/search", &json!({"query": "how does R handle missing values"})).await;
    let first = &found["passages"][0];
    assert_eq!(first["heading"], "2.5 Missing values", "{found}");
    assert!(first["page"].as_i64().is_some_and(|p| p > 1), "a PDF passage has its page: {first}");
    assert!(first["context"].as_str().expect("context").contains("Simple manipulations"), "{first}");

    // Learners neither see nor cancel jobs.
    assert_eq!(server.get_json(&learner, "/api/v1/jobs").await.0, 403);
    assert_eq!(server.post_json(&learner, &format!("/api/v1/jobs/{id}/cancel"), &json!({})).await.0, 403);
    let (status, error) = server.post_json(&teacher, &format!("/api/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 409, "an ended job: {error}");
    assert_eq!(server.get_json(&teacher, "/api/v1/jobs/987654").await.0, 404);

    // A long book cancelled at once stores nothing.
    let derivations = std::fs::read(corpus.join("derivations.pdf")).expect("derivations.pdf");
    let response = upload_bytes(&server, &teacher, "derivations.pdf", derivations).await;
    let id = response.json::<Value>().await.expect("job")["id"].as_i64().expect("id");
    // Pages are reported while the parser reads them.
    let mut reading = Value::Null;
    for _ in 0..300 {
        let (_, job) = server.get_json(&teacher, &format!("/api/v1/jobs/{id}")).await;
        let (done, total) = (job["pages_done"].as_i64().unwrap_or(0), job["pages_total"].as_i64().unwrap_or(0));
        if done > 0 && done < total {
            reading = job;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(reading["state"], "running", "a job part-way through the pages: {reading}");
    let (status, asked) = server.post_json(&teacher, &format!("/api/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 202, "{asked}");
    assert_eq!(asked["cancel_requested"], true);
    let job = server.wait_for_job(&teacher, id).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(job["book_id"].is_null());
    assert!(job["pages_done"].as_i64() < job["pages_total"].as_i64(), "stopped while reading pages: {job}");
    let (_, books) = server.get_json(&teacher, "/api/v1/books").await;
    assert_eq!(books["books"].as_array().expect("books").len(), 1, "{books}");

    // The Library page lists the job with a Cancel button that works.
    let derivations = std::fs::read(corpus.join("derivations.pdf")).expect("derivations.pdf");
    let response = upload_bytes(&server, &teacher, "derivations.pdf", derivations).await;
    let id = response.json::<Value>().await.expect("job")["id"].as_i64().expect("id");
    server.add_user("staff@example.org", "instructors");
    let session = server.sign_in("staff@example.org", crate::harness::PASSWORD).await;
    let page = server.client.get(server.url("/library")).header("cookie", &session).send().await.expect("page");
    let page = page.text().await.expect("html");
    let action = format!("action=\"/jobs/{id}/cancel\"");
    assert!(page.contains(&action), "a Cancel button for job {id}: {page}");
    let response = server.post_form(&session, &format!("/jobs/{id}/cancel"), &[]).await;
    assert_eq!(response.status(), 303, "{}", response.text().await.unwrap_or_default());
    assert_eq!(server.wait_for_job(&teacher, id).await["state"], "cancelled");

    // Broken files fail with a reason, and the server goes on.
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("encrypted.pdf", encrypted_pdf(), "encrypted"),
        ("truncated.pdf", std::fs::read(corpus.join("R-intro.pdf")).expect("pdf")[..20_000].to_vec(), "PDF"),
        ("garbage.pdf", b"%PDF-1.7\n\x00\x01 this is not a PDF body".to_vec(), "PDF"),
        ("empty.md", b"   \n\n".to_vec(), "no text"),
    ];
    for (name, bytes, reason) in cases {
        let job = server.finished_job(&teacher, upload_bytes(&server, &teacher, name, bytes).await).await;
        assert_eq!(job["state"], "failed", "{name}: {job}");
        let error = job["error"].as_str().expect("a failed job says why");
        assert!(error.contains(reason), "{name}: {error}");
    }
    let (status, jobs) = server.get_json(&teacher, "/api/v1/jobs").await;
    assert_eq!(status, 200);
    let states: Vec<&str> = jobs["jobs"].as_array().expect("jobs").iter().filter_map(|j| j["state"].as_str()).collect();
    assert_eq!(states, ["failed", "failed", "failed", "failed", "cancelled", "cancelled", "succeeded"], "newest first");
    let stderr = server.stderr_text();
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Deleting the book removes its passages from search.
    let response =
        server.client.delete(server.url(&format!("/api/v1/books/{book_id}"))).bearer_auth(&teacher).send().await;
    assert_eq!(response.expect("delete").status(), 204);
    let (_, found) = server.post_json(&learner, "/api/v1/search", &json!({"query": "missing values"})).await;
    assert_eq!(found["passages"], json!([]), "{found}");
}

#[tokio::test]
async fn model_change_reembeds_library() {
    let Some(model) = crate::harness::minilm_dir() else {
        return;
    };
    let mut server = Server::new().await;
    server.add_user("teacher@example.org", "instructors");
    let output = server.ingest(&corpus_dir().join("python-tutorial/appetite.html"));
    assert!(output.contains("embedded by learntrac-hash-384:1"), "{output}");
    server.serve().await;
    let teacher = server.token("teacher@example.org").await;
    let query = json!({"query": "why would I choose Python over shell scripts or C?"});
    let (_, before) = server.post_json(&teacher, "/api/v1/search", &query).await;
    assert_eq!(before["model"], "learntrac-hash-384:1", "{before}");
    server.stop();

    let install = server.cli(&["model", "install", "--from", &model], "");
    assert!(install.status.success(), "{}", String::from_utf8_lossy(&install.stderr));
    server.serve().await;
    let teacher = server.token("teacher@example.org").await;
    // Until the job has embedded every passage, search keeps the built-in
    // embedder's vectors; afterwards it uses the model's alone.
    let (_, during) = server.post_json(&teacher, "/api/v1/search", &query).await;
    assert!(
        during["model"] == "learntrac-hash-384:1"
            || during["model"].as_str().is_some_and(|m| m.starts_with("all-MiniLM-L6-v2:")),
        "{during}"
    );
    let mut reembed = Value::Null;
    for _ in 0..100 {
        let (_, jobs) = server.get_json(&teacher, "/api/v1/jobs").await;
        if let Some(job) = jobs["jobs"].as_array().expect("jobs").iter().find(|j| j["kind"] == "reembed") {
            reembed = job.clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let job = server.wait_for_job(&teacher, reembed["id"].as_i64().expect("a re-embedding job")).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(job["model"].as_str().expect("model").starts_with("all-MiniLM-L6-v2:"), "{job}");
    assert_eq!(job["passages_done"], job["passages_total"]);
    let (_, after) = server.post_json(&teacher, "/api/v1/search", &query).await;
    assert_eq!(after["model"], job["model"], "{after}");
    let passages = after["passages"].as_array().expect("passages");
    assert!(!passages.is_empty(), "{after}");
    assert!(passages[0]["heading"].as_str().expect("heading").contains("Whetting Your Appetite"), "{after}");

    // A book added now is embedded by both and found by the model at once.
    let book = "# Orbital mechanics\n\n## Kepler's laws\n\nPlanets move on ellipses with the Sun at one focus, \
                sweeping equal areas in equal times.\n";
    let job = server.finished_job(&teacher, server.upload(&teacher, "orbits.md", book).await).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, found) = server
        .post_json(&teacher, "/api/v1/search", &json!({"query": "what shape is a planet's path around the sun"}))
        .await;
    assert_eq!(found["model"], after["model"]);
    assert_eq!(found["passages"][0]["heading"], "Kepler's laws", "{found}");
    server.stop();

    // Back to the built-in embedder: its vectors are kept, so no job is needed.
    server.write_settings("[embeddings]\nprovider = \"builtin\"\n");
    server.serve().await;
    let teacher = server.token("teacher@example.org").await;
    let (_, found) = server.post_json(&teacher, "/api/v1/search", &query).await;
    assert_eq!(found["model"], "learntrac-hash-384:1", "{found}");
    let (_, jobs) = server.get_json(&teacher, "/api/v1/jobs").await;
    assert_eq!(jobs["jobs"].as_array().expect("jobs").iter().filter(|j| j["kind"] == "reembed").count(), 1);
}

/// What the stand-in embeddings service saw.
#[derive(Default)]
struct Seen {
    requests: usize,
    authorization: Vec<String>,
    inputs: usize,
}

/// Starts a stand-in for a remote OpenAI-compatible embeddings service,
/// which cannot run on this machine. `/v1/embeddings` returns the built-in
/// embedder's vectors after failing its first request with 503, and
/// `/slow/v1/embeddings` does not respond within the timeout.
async fn embeddings_stand_in(
    dir: &std::path::Path,
) -> (String, std::path::PathBuf, Arc<Mutex<Seen>>, axum_server::Handle<std::net::SocketAddr>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    let embeddings = move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| {
        let seen = shared.clone();
        async move {
            let mut seen = seen.lock().expect("seen");
            seen.requests += 1;
            let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
            seen.authorization.push(bearer.to_string());
            if seen.requests == 1 {
                return (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": "warming up"})));
            }
            let inputs: Vec<String> = body["input"]
                .as_array()
                .expect("input")
                .iter()
                .map(|t| t.as_str().expect("text").to_string())
                .collect();
            seen.inputs += inputs.len();
            let data: Vec<Value> = inputs
                .iter()
                .enumerate()
                .map(|(index, text)| json!({"index": index, "embedding": learntrac_core::embed::embed(text)}))
                .collect();
            (axum::http::StatusCode::OK, axum::Json(json!({"object": "list", "model": body["model"], "data": data})))
        }
    };
    let slow = || async {
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        axum::Json(json!({"data": []}))
    };
    let app = axum::Router::new()
        .route("/v1/embeddings", axum::routing::post(embeddings))
        .route("/slow/v1/embeddings", axum::routing::post(slow));
    let (base, ca_file, handle) = crate::harness::serve_https(dir, "embeddings", app).await;
    (base, ca_file, seen, handle)
}

// Two worker threads, because the stand-in must respond while the test
// waits for `learntrac ingest`, a blocking call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_embeddings_key_and_retries() {
    let mut server = Server::new().await;
    let (base, ca_file, seen, _handle) = embeddings_stand_in(&server.data_dir).await;
    let put = server.cli(&["secret", "put", "embeddings-key"], "sk-test-1234\n");
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let settings = |path: &str, retries: u32| {
        format!(
            "egress_ca_file = {ca:?}\n[secret_policy]\napi = [\"embeddings-key\"]\n[embeddings]\nprovider = \"openai\"\n[embeddings.openai]\n\
             url = \"{base}{path}/v1\"\nmodel = \"stand-in\"\napi_key = \"secret:embeddings-key\"\n\
             timeout_seconds = 1\nretries = {retries}\n",
            ca = ca_file.display().to_string()
        )
    };

    // A service that does not respond in time fails the ingestion with a
    // reason naming it, and nothing is stored.
    server.write_settings(&settings("/slow", 0));
    let book = server.data_dir.join("orbits.md");
    std::fs::write(&book, "# Orbits\n\n## Kepler's laws\n\nPlanets move on ellipses with the Sun at one focus.\n")
        .expect("book");
    let output = server.cli(&["ingest", book.to_str().expect("utf-8")], "");
    assert!(!output.status.success());
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(errors.contains("failed"), "{errors}");
    assert!(errors.contains(&format!("{base}/slow/v1/embeddings")), "{errors}");

    // The first answer is 503; the retry succeeds, with the key from the secrets store.
    server.write_settings(&settings("", 2));
    let output = server.cli(&["ingest", book.to_str().expect("utf-8")], "");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let model = format!("openai:stand-in:{base}/v1");
    assert!(text.contains(&model), "{text}");
    {
        let seen = seen.lock().expect("seen");
        assert_eq!(seen.requests, 2, "one retry");
        assert!(seen.authorization.iter().all(|a| a == "Bearer sk-test-1234"), "{:?}", seen.authorization);
        assert_eq!(seen.inputs, 1, "one passage");
    }

    // Search embeds the query with the same service and ranks by its vectors.
    server.add_user("learner@example.org", "students");
    server.serve().await;
    let learner = server.token("learner@example.org").await;
    let (status, found) =
        server.post_json(&learner, "/api/v1/search", &json!({"query": "Kepler's laws of planets"})).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["model"], model);
    assert_eq!(found["passages"][0]["heading"], "Kepler's laws", "{found}");
    assert_eq!(seen.lock().expect("seen").inputs, 2, "the query was embedded remotely");
}

#[tokio::test]
async fn cross_references_become_prerequisites() {
    let (server, teacher, learner) = Server::with_teacher_and_learner().await;
    // Section 1.1 names Section 1.3, which the book teaches later.
    let book = "# Kitchen basics\n\n\
        ## 1.1 Sauces\n\nA velvety sauce thickens with a roux whisked into hot stock; see Section 1.3 for making the roux.\n\n\
        ## 1.2 Knife skills\n\nHold the knife with a pinch grip and curl the fingers of the guiding hand.\n\n\
        ## 1.3 Roux\n\nA roux is equal weights of flour and butter cooked together until it smells nutty.\n";
    let job = server.finished_job(&teacher, server.upload(&teacher, "kitchen.md", book).await).await;
    assert_eq!(job["state"], "succeeded", "{job}");

    let (status, path) =
        server.post_json(&learner, "/api/v1/paths", &json!({"query": "thicken a sauce with a roux"})).await;
    assert_eq!(status, 201, "{path}");
    let tickets = path["tickets"].as_array().expect("tickets");
    let position = |concept: &str| tickets.iter().position(|t| t["concept"] == concept);
    let (Some(roux), Some(sauces)) = (position("Roux"), position("Sauces")) else {
        panic!("both sections are in the path: {path}");
    };
    assert!(roux < sauces, "the referenced section comes first: {path}");
    let prerequisites = tickets[sauces]["prerequisites"].as_array().expect("prerequisites");
    assert!(prerequisites.contains(&tickets[roux]["id"]), "{path}");
}
