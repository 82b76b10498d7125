//! The trac role: server-rendered HTML pages for the wiki, learning paths,
//! tickets, the roadmap and the library. Every page needs a signed-in
//! user ([`PageUser`]); forms post back to the same site only.

use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use crate::AppState;
use crate::api::parse_id;
use crate::auth::{AdminPageUser, PageUser, Principal, StaffPageUser};
use crate::error::ApiError;
use crate::{audit, graph, library, service, wiki};

pub fn routes(max_upload_bytes: usize, state: &AppState) -> Router<AppState> {
    let upload_form = post(upload).layer(axum::extract::DefaultBodyLimit::max(max_upload_bytes));
    Router::new()
        .route("/", get(|| async { Redirect::to("/wiki/WikiStart") }))
        .route("/wiki/{name}", get(wiki_page).post(save_wiki_page))
        .route("/paths/preview", post(preview_path))
        .route("/paths", post(create_path))
        .route("/paths/{id}", get(path_page))
        .route("/ticket/{id}", get(ticket_page).post(answer_ticket))
        .route("/roadmap", get(roadmap))
        .route("/admin", get(admin))
        .route("/library", get(library).merge(upload_form))
        // Not under /library, whose POSTs the gateway takes for uploads.
        .route("/jobs/{id}/cancel", post(cancel_job))
        .merge(crate::idp::admin::page_routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), crate::sessions::protect_forms))
}

/// An [`ApiError`] shown as an HTML page.
pub struct PageError(pub ApiError);

impl<E: Into<ApiError>> From<E> for PageError {
    fn from(error: E) -> PageError {
        PageError(error.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let message = self.0.public_message();
        let body = layout(
            status.canonical_reason().unwrap_or("Error"),
            None,
            &format!(
                "<h1>{}</h1><p class=\"error\" role=\"alert\">{}</p><p>Request id: <code>{}</code></p><p><a href=\"/\">Start page</a></p>",
                status.as_u16(),
                escape(&message),
                escape(&crate::gateway::current_request_id())
            ),
        );
        let mut response = (status, body).into_response();
        crate::error::add_challenge(&self.0, &mut response);
        response
    }
}

type PageResult = Result<Response, PageError>;

/// A query string whose rejection is an HTML error page naming the problem.
pub struct PageQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for PageQuery<T> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, PageError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(PageQuery(value)),
            Err(rejection) => Err(ApiError::bad_request("invalid_query_string", rejection.body_text()).into()),
        }
    }
}

/// A form body whose rejection is an HTML error page naming the problem.
pub struct PageForm<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for PageForm<T> {
    type Rejection = PageError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, PageError> {
        match Form::<T>::from_request(request, state).await {
            Ok(Form(value)) => Ok(PageForm(value)),
            Err(rejection) => Err(ApiError::bad_request(
                "invalid_form",
                format!("the form could not be read: {}", rejection.body_text()),
            )
            .into()),
        }
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

/// Formats Unix seconds as "YYYY-MM-DD HH:MM UTC".
pub fn format_time(unix: i64) -> String {
    let (year, month, day) = crate::time::civil_from_days(unix.div_euclid(86_400));
    let seconds = unix.rem_euclid(86_400);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", seconds / 3600, seconds % 3600 / 60)
}

/// Percent-encodes everything but unreserved characters and '/'.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}\
header{background:#2d3e50;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;align-items:center;flex-wrap:wrap}\
header a{color:#fff;text-decoration:none}header .who{margin-left:auto;font-size:.9em}\
main{max-width:60em;margin:1.5em auto;padding:0 1.2em}\
form.narrow{max-width:26em}label{display:block;margin:.6em 0}input,textarea{width:100%;box-sizing:border-box;padding:.4em;font:inherit}\
textarea{min-height:8em}button{margin-top:.6em;padding:.45em 1.2em;font:inherit;cursor:pointer}\
.error{color:#a40000;font-weight:600}.notice{color:#1b5e20;font-weight:600}details.section-text{background:#fff;border:1px solid #ddd;padding:.4em .9em;margin:.8em 0}.hint{color:#666;font-size:.9em}\
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4em;text-align:left;vertical-align:top}\
.passage{background:#fff;border:1px solid #ddd;padding:.6em .9em;margin:.6em 0}\
.status{padding:.1em .5em;border-radius:.6em;font-size:.85em}.status-new{background:#c8c8c8}.status-studying{background:#f5a623}.status-mastered{background:#4caf50;color:#fff}\
.bar{background:#ddd;height:.8em;border-radius:.4em;overflow:hidden}.bar span{display:block;height:100%;background:#4caf50}\
.graph{overflow-x:auto;background:#fff;border:1px solid #ddd;padding:.5em}\
form.inline{display:inline}button.link{background:none;border:none;color:#fff;padding:0;margin:0;font-size:inherit;text-decoration:underline}";

/// Wraps `body` in the page layout with the navigation bar.
pub fn layout(title: &str, user: Option<&Principal>, body: &str) -> Html<String> {
    let account_links = match user {
        Some(u) => format!(
            "<span class=\"who\"><a href=\"/account\">{}</a> · \
             <form method=\"post\" action=\"/logout\" class=\"inline\"><button type=\"submit\" class=\"link\">Sign out</button></form></span>",
            escape(&u.email)
        ),
        None => String::new(),
    };
    let admin_link = if user.is_some_and(Principal::is_administrator) { "<a href=\"/admin\">Admin</a>" } else { "" };
    let page = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · LearnTrac</title><style>{STYLE}</style></head><body><header><strong><a href=\"/\">LearnTrac</a></strong>\
         <a href=\"/wiki/WikiStart\">Wiki</a><a href=\"/roadmap\">Roadmap</a><a href=\"/library\">Library</a>{admin_link}{account_links}</header><main>{body}</main></body></html>",
        escape(title)
    );
    // Every POST form of a signed-in page carries the session's form token.
    match user.and_then(|u| u.csrf.as_deref()) {
        Some(token) => Html(crate::sessions::with_form_tokens(&page, token)),
        None => Html(page),
    }
}

fn status_badge(status: learntrac_store::TicketStatus) -> String {
    format!("<span class=\"status status-{0}\">{0}</span>", status.as_str())
}

/// Returns the goal form that the `[[LearningPath]]` macro expands to.
fn learning_path_form() -> String {
    "<form method=\"post\" action=\"/paths/preview\" class=\"learning-path\">\
     <label>What do you want to learn? <textarea name=\"goal\" required maxlength=\"500\" \
     placeholder=\"For example: how R handles missing values\"></textarea></label>\
     <button type=\"submit\">Find passages</button></form>"
        .to_string()
}

fn valid_page_name(name: &str) -> Result<(), PageError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_page_name",
            format!("wiki page name {name:?} may use only letters, digits, '-' and '_'"),
        )
        .into())
    }
}

#[derive(Deserialize)]
struct WikiQuery {
    action: Option<String>,
}

/// How long a rendered wiki page is served from memory. Saving a page in
/// this process replaces it at once; another process's edit shows within
/// this time.
const WIKI_CACHE_SECONDS: u64 = 5;

/// A wiki page as read from the store and rendered.
pub struct RenderedPage {
    exists: bool,
    body: String,
    html: String,
}

/// Rendered wiki pages by name, so that reading a page needs neither a
/// query nor rendering.
#[derive(Default)]
pub struct WikiCache {
    pages: std::sync::RwLock<std::collections::HashMap<String, (std::time::Instant, std::sync::Arc<RenderedPage>)>>,
}

impl WikiCache {
    fn get(&self, name: &str) -> Option<std::sync::Arc<RenderedPage>> {
        let pages = self.pages.read().unwrap_or_else(|p| p.into_inner());
        let (loaded, page) = pages.get(name)?;
        (loaded.elapsed().as_secs() < WIKI_CACHE_SECONDS).then(|| page.clone())
    }

    fn put(&self, name: &str, page: std::sync::Arc<RenderedPage>) {
        let mut pages = self.pages.write().unwrap_or_else(|p| p.into_inner());
        // Page names are checked, but a crawler can still ask for many.
        if pages.len() >= 10_000 {
            pages.clear();
        }
        pages.insert(name.to_string(), (std::time::Instant::now(), page));
    }

    fn forget(&self, name: &str) {
        self.pages.write().unwrap_or_else(|p| p.into_inner()).remove(name);
    }
}

/// Loads and renders a page, or takes it from the cache. A missing
/// WikiStart shows the built-in start page.
async fn rendered_page(state: &AppState, name: &str) -> Result<std::sync::Arc<RenderedPage>, PageError> {
    if let Some(page) = state.wiki_cache.get(name) {
        return Ok(page);
    }
    let stored = state.store.wiki_page(name).await?;
    let (exists, body) = match stored {
        Some(page) => (true, page.body),
        None if name == "WikiStart" => (true, wiki::START_PAGE.to_string()),
        None => (false, String::new()),
    };
    let html = if exists {
        wiki::render(&body, &|macro_name| (macro_name == "LearningPath").then(learning_path_form))
    } else {
        format!("<p>The page {} does not exist yet.</p>", escape(name))
    };
    let page = std::sync::Arc::new(RenderedPage { exists, body, html });
    state.wiki_cache.put(name, page.clone());
    Ok(page)
}

async fn wiki_page(
    State(state): State<AppState>,
    PageUser(user): PageUser,
    Path(name): Path<String>,
    PageQuery(query): PageQuery<WikiQuery>,
) -> PageResult {
    valid_page_name(&name)?;
    let page = rendered_page(&state, &name).await?;
    let can_edit = user.is_staff();

    if query.action.as_deref() == Some("edit") {
        if !can_edit {
            return Err(ApiError::Forbidden("only instructors and admins may edit wiki pages".into()).into());
        }
        let form = format!(
            "<h1>Edit {0}</h1><form method=\"post\" action=\"/wiki/{0}\"><textarea name=\"text\" rows=\"20\">{1}</textarea>\
             <button type=\"submit\">Save</button></form>",
            escape(&name),
            escape(&page.body)
        );
        return Ok(layout(&name, Some(&user), &form).into_response());
    }

    let status = if page.exists { StatusCode::OK } else { StatusCode::NOT_FOUND };
    if can_edit {
        let html = format!("{}<p><a href=\"/wiki/{}?action=edit\">Edit this page</a></p>", page.html, escape(&name));
        return Ok((status, layout(&name, Some(&user), &html)).into_response());
    }
    Ok((status, layout(&name, Some(&user), &page.html)).into_response())
}

#[derive(Deserialize)]
struct WikiForm {
    text: String,
}

async fn save_wiki_page(
    State(state): State<AppState>,
    StaffPageUser(user): StaffPageUser,
    Path(name): Path<String>,
    PageForm(form): PageForm<WikiForm>,
) -> PageResult {
    valid_page_name(&name)?;
    state.store.save_wiki_page(&name, &form.text, Some(user.user_id), state.now()).await?;
    state.wiki_cache.forget(&name);
    let details = format!("{} bytes", form.text.len());
    let target = format!("wiki:{name}");
    crate::audit::record(&state, crate::audit::Actor::User(user.user_id), "wiki.update", &target, "success", &details)
        .await;
    Ok(Redirect::to(&format!("/wiki/{name}")).into_response())
}

#[derive(Deserialize)]
struct GoalForm {
    goal: String,
}

async fn preview_path(
    State(state): State<AppState>,
    PageUser(user): PageUser,
    PageForm(form): PageForm<GoalForm>,
) -> PageResult {
    let hits = library::search(&state, &form.goal, service::MAX_PASSAGES).await?.hits;
    let mut html = format!("<h1>Passages for your goal</h1><p><em>{}</em></p>", escape(form.goal.trim()));
    if hits.is_empty() {
        html.push_str("<p class=\"error\">The library has no passage about this goal. Rephrase it, or ask an instructor to add a book on the subject.</p>");
        html.push_str(&learning_path_form());
        return Ok(layout("Passages", Some(&user), &html).into_response());
    }
    html.push_str(&format!(
        "<p>{} passages found. Confirm to create a ticket for each concept they teach.</p>",
        hits.len()
    ));
    html.push_str(&format!(
        "<form method=\"post\" action=\"/paths\"><input type=\"hidden\" name=\"goal\" value=\"{}\"><button type=\"submit\" id=\"confirm-path\">Create learning path</button></form>",
        escape(form.goal.trim())
    ));
    for hit in &hits {
        html.push_str(&format!(
            "<div class=\"passage\"><strong>{}</strong> · {} · relevance {:.2}<p>{}</p></div>",
            escape(&hit.passage.heading),
            escape(&hit.passage.book_title),
            hit.relevance,
            escape(&learntrac_core::text::excerpt(&hit.passage.text, 400))
        ));
    }
    Ok(layout("Passages", Some(&user), &html).into_response())
}

async fn create_path(
    State(state): State<AppState>,
    PageUser(user): PageUser,
    PageForm(form): PageForm<GoalForm>,
) -> PageResult {
    let path = service::create_path(&state, &user, &form.goal, service::DEFAULT_CONCEPTS).await?;
    Ok(Redirect::to(&format!("/paths/{}", path.id)).into_response())
}

async fn path_page(State(state): State<AppState>, PageUser(user): PageUser, Path(id): Path<String>) -> PageResult {
    let path = service::visible_path(&state, &user, parse_id(&id, "path")?).await?;
    let mut html = format!(
        "<h1>{}</h1><p>Milestone <strong>{}</strong> · {} concept(s)</p><h2>Knowledge graph</h2><div class=\"graph\">{}</div>\
         <p class=\"hint\">Grey: not started · orange: studying · green: mastered. Each concept links to its ticket.</p>\
         <h2>Tickets</h2><table><tr><th>#</th><th>Concept</th><th>Difficulty</th><th>Prerequisites</th><th>Status</th></tr>",
        escape(&path.goal),
        escape(&path.milestone),
        path.tickets.len(),
        graph::svg(&path.tickets)
    );
    for ticket in &path.tickets {
        let prerequisites: Vec<String> =
            ticket.prerequisites.iter().map(|p| format!("<a href=\"/ticket/{p}\">#{p}</a>")).collect();
        html.push_str(&format!(
            "<tr><td><a href=\"/ticket/{0}\">#{0}</a></td><td><a href=\"/ticket/{0}\">{1}</a><br><span class=\"hint\">{2}</span></td><td>{3}</td><td>{4}</td><td>{5}</td></tr>",
            ticket.id,
            escape(&ticket.concept),
            escape(&ticket.heading),
            ticket.difficulty,
            prerequisites.join(", "),
            status_badge(ticket.status)
        ));
    }
    html.push_str("</table>");
    Ok(layout(&path.goal, Some(&user), &html).into_response())
}

async fn render_ticket(
    state: &AppState,
    user: &Principal,
    id: i64,
    message: Option<&str>,
) -> Result<Html<String>, PageError> {
    let ticket = service::visible_ticket(state, user, id).await?;
    let answers = state.store.answers(ticket.id).await?;
    let prerequisites: Vec<String> =
        ticket.prerequisites.iter().map(|p| format!("<a href=\"/ticket/{p}\">#{p}</a>")).collect();
    let mut html = format!(
        "<h1>#{} {}</h1><p>{} · milestone {} · difficulty {}/5 · prerequisites: {} · <a href=\"/paths/{}\">path</a></p>\
         <h2>Question</h2><p class=\"question\">{}</p>",
        ticket.id,
        escape(&ticket.concept),
        status_badge(ticket.status),
        escape(&ticket.milestone),
        ticket.difficulty,
        if prerequisites.is_empty() { "none".to_string() } else { prerequisites.join(", ") },
        ticket.path_id,
        escape(&ticket.question)
    );
    if let Some(section) = match ticket.section_id {
        Some(id) => state.store.section(id).await?,
        None => None,
    } {
        html.push_str(&format!(
            "<details class=\"section-text\"><summary>Read {} in the book</summary>{}</details>",
            escape(&section.heading),
            section.body.split("\n\n").map(|p| format!("<p>{}</p>", escape(p))).collect::<String>()
        ));
    }
    if user.is_staff() {
        html.push_str(&format!(
            "<h2>Expected answer</h2><p class=\"expected\">{}</p>",
            escape(&ticket.expected_answer)
        ));
    }
    if let Some(message) = message {
        html.push_str(&format!("<p class=\"error\" role=\"alert\">{}</p>", escape(message)));
    }
    if ticket.owner_id == user.user_id {
        html.push_str(&format!(
            "<form method=\"post\" action=\"/ticket/{}\" class=\"answer\"><label>Your answer <textarea name=\"answer\" required></textarea></label>\
             <button type=\"submit\">Submit answer</button></form>",
            ticket.id
        ));
    }
    if let Some(latest) = answers.last() {
        html.push_str(&format!(
            "<h2>Latest feedback</h2><p class=\"feedback\">Score <strong class=\"score\">{:.2}</strong>: {}</p>",
            latest.score,
            escape(&latest.feedback)
        ));
        if !latest.suggestions.is_empty() {
            html.push_str("<ul class=\"suggestions\">");
            for suggestion in &latest.suggestions {
                html.push_str(&format!("<li>{}</li>", escape(suggestion)));
            }
            html.push_str("</ul>");
        }
        html.push_str("<h2>Attempts</h2><table><tr><th>When</th><th>Score</th><th>Answer</th></tr>");
        for answer in answers.iter().rev() {
            html.push_str(&format!(
                "<tr><td>{}</td><td>{:.2}</td><td>{}</td></tr>",
                format_time(answer.created_at),
                answer.score,
                escape(&answer.answer)
            ));
        }
        html.push_str("</table>");
    }
    Ok(layout(&format!("#{} {}", ticket.id, ticket.concept), Some(user), &html))
}

async fn ticket_page(State(state): State<AppState>, PageUser(user): PageUser, Path(id): Path<String>) -> PageResult {
    Ok(render_ticket(&state, &user, parse_id(&id, "ticket")?, None).await?.into_response())
}

#[derive(Deserialize)]
struct AnswerForm {
    answer: String,
}

async fn answer_ticket(
    State(state): State<AppState>,
    PageUser(user): PageUser,
    Path(id): Path<String>,
    PageForm(form): PageForm<AnswerForm>,
) -> PageResult {
    let id = parse_id(&id, "ticket")?;
    match service::answer(&state, &user, id, &form.answer).await {
        Ok(_) => Ok(Redirect::to(&format!("/ticket/{id}")).into_response()),
        Err(ApiError::BadRequest { message, .. }) => {
            Ok((StatusCode::BAD_REQUEST, render_ticket(&state, &user, id, Some(&message)).await?).into_response())
        }
        Err(other) => Err(other.into()),
    }
}

/// Renders the administration screen: the user pool, for admins and operators.
async fn admin(State(state): State<AppState>, AdminPageUser(user): AdminPageUser) -> PageResult {
    let users = state.store.list_users().await?;
    let mut html = String::from(
        "<h1>Administration</h1><h2>Users</h2><table><tr><th>Email</th><th>Name</th><th>Groups</th><th>State</th>\
         <th>Email verified</th><th>Multi-factor</th></tr>",
    );
    for listed in &users {
        let groups: Vec<&str> = listed.groups.iter().map(|g| g.as_str()).collect();
        html.push_str(&format!(
            "<tr><td><a href=\"/admin/users/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            listed.id,
            escape(&listed.email),
            escape(&listed.name),
            escape(&groups.join(", ")),
            if listed.disabled { "disabled" } else { "active" },
            if listed.email_verified { "yes" } else { "no" },
            if listed.mfa_secret.is_some() { "on" } else { "off" }
        ));
    }
    html.push_str("</table><p><a href=\"/admin/clients\">OAuth clients</a></p>");
    Ok(layout("Administration", Some(&user), &html).into_response())
}

async fn roadmap(State(state): State<AppState>, PageUser(user): PageUser) -> PageResult {
    let owner = if user.is_staff() { None } else { Some(user.user_id) };
    let paths = state.store.path_summaries(owner).await?;
    let mut html = String::from("<h1>Roadmap</h1>");
    if paths.is_empty() {
        html.push_str("<p>No learning paths yet. Start one from the <a href=\"/wiki/WikiStart\">start page</a>.</p>");
    } else {
        html.push_str("<table><tr><th>Path</th><th>Milestone</th>");
        if user.is_staff() {
            html.push_str("<th>Learner</th>");
        }
        html.push_str("<th>Progress</th></tr>");
        for path in &paths {
            let percent = if path.total > 0 { path.mastered * 100 / path.total } else { 0 };
            let learner =
                if user.is_staff() { format!("<td>{}</td>", escape(&path.owner_email)) } else { String::new() };
            html.push_str(&format!(
                "<tr><td><a href=\"/paths/{}\">{}</a></td><td>{}</td>{learner}<td><div class=\"bar\"><span style=\"width:{percent}%\"></span></div>\
                 {} of {} mastered, {} studying</td></tr>",
                path.id,
                escape(&path.goal),
                escape(&path.milestone),
                path.mastered,
                path.total,
                path.studying
            ));
        }
        html.push_str("</table>");
    }
    Ok(layout("Roadmap", Some(&user), &html).into_response())
}

#[derive(Deserialize)]
struct LibraryQuery {
    /// The job of the book just uploaded.
    job: Option<i64>,
}

/// Jobs the library page lists for staff.
const LISTED_JOBS: i64 = 10;

async fn library(
    State(state): State<AppState>,
    PageUser(user): PageUser,
    PageQuery(query): PageQuery<LibraryQuery>,
) -> PageResult {
    let books = state.store.list_books().await?;
    let mut html = String::from("<h1>Library</h1>");
    if let Some(id) = query.job {
        html.push_str(&format!(
            "<p class=\"notice\" role=\"status\">The book is being added as job {id}; its progress is below.</p>"
        ));
    }
    if books.is_empty() {
        html.push_str("<p>The library is empty.</p>");
    } else {
        html.push_str("<table><tr><th>Book</th><th>Title</th><th>Format</th><th>Sections</th><th>Passages</th></tr>");
        for book in &books {
            html.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                book.id,
                escape(&book.title),
                escape(&book.format),
                book.sections,
                book.chunks
            ));
        }
        html.push_str("</table>");
    }
    if user.is_staff() {
        html.push_str(&jobs_table(&state.store.list_jobs(LISTED_JOBS).await?));
        html.push_str(
            "<h2>Add a book</h2><form method=\"post\" action=\"/library\" enctype=\"multipart/form-data\" class=\"narrow\">\
             <label>PDF, HTML or Markdown file <input type=\"file\" name=\"book\" accept=\".pdf,.html,.htm,.md,.markdown\" required></label>\
             <button type=\"submit\">Upload</button></form>",
        );
    }
    Ok(layout("Library", Some(&user), &html).into_response())
}

async fn upload(
    State(state): State<AppState>,
    StaffPageUser(user): StaffPageUser,
    mut multipart: Multipart,
) -> PageResult {
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request("invalid_upload", format!("the upload is not valid multipart data: {e}")))?
    {
        if field.name() != Some("book") {
            continue;
        }
        let name = field.file_name().unwrap_or("upload").to_string();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| ApiError::bad_request("invalid_upload", format!("the upload could not be read: {e}")))?;
        let job = library::submit_book(&state, bytes.to_vec(), &name, audit::Actor::User(user.user_id)).await?;
        return Ok(Redirect::to(&format!("/library?job={}", job.id)).into_response());
    }
    Err(ApiError::bad_request("invalid_upload", "the form has no file in the field \"book\"").into())
}

/// Renders the latest library jobs with their progress, a cancel button
/// for each unfinished one, and a refresh while any is unfinished.
fn jobs_table(jobs: &[learntrac_store::JobRecord]) -> String {
    if jobs.is_empty() {
        return String::new();
    }
    let mut html = String::from(
        "<h2>Jobs</h2><table><tr><th>Job</th><th>File</th><th>State</th><th>Pages</th><th>Passages</th><th></th></tr>",
    );
    for job in jobs {
        let what = match job.kind {
            learntrac_store::JobKind::Ingest => job.file_name.clone().unwrap_or_default(),
            learntrac_store::JobKind::Reembed => format!("library, by {}", job.model.as_deref().unwrap_or("?")),
        };
        let state = match (&job.error, job.cancel_requested && !job.state.is_finished()) {
            (Some(error), _) => format!("{}: {}", job.state.as_str(), escape(error)),
            (None, true) => "cancelling".to_string(),
            (None, false) => job.state.as_str().to_string(),
        };
        let action = if job.state.is_finished() {
            String::new()
        } else {
            format!(
                "<form method=\"post\" action=\"/jobs/{}/cancel\"><button type=\"submit\">Cancel</button></form>",
                job.id
            )
        };
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{state}</td><td>{}/{}</td><td>{}/{}</td><td>{action}</td></tr>",
            job.id,
            escape(&what),
            job.pages_done,
            job.pages_total,
            job.passages_done,
            job.passages_total
        ));
    }
    html.push_str("</table>");
    if jobs.iter().any(|j| !j.state.is_finished()) {
        html.push_str("<meta http-equiv=\"refresh\" content=\"3\">");
    }
    html
}

async fn cancel_job(
    State(state): State<AppState>,
    StaffPageUser(user): StaffPageUser,
    Path(id): Path<String>,
) -> PageResult {
    let id = parse_id(&id, "job")?;
    library::cancel_job(&state, id, audit::Actor::User(user.user_id)).await?;
    Ok(Redirect::to("/library").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_formatted_in_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(format_time(1_796_418_090), "2026-12-04 21:01 UTC");
    }

    #[test]
    fn escape_covers_attribute_quotes() {
        assert_eq!(escape("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
