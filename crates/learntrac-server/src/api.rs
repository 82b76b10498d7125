//! The JSON API under `/api/v1`. Every handler but the OpenAPI document
//! takes an [`ApiUser`] or an [`ApiCaller`], so every other call needs a
//! valid bearer token.

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use learntrac_core::search::Hit;
use learntrac_store::{JobRecord, PathRecord, Ticket};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{AdminApiUser, ApiCaller, ApiUser, LibraryWriter, SCOPE_READ, StaffApiUser};
use crate::error::{ApiError, ApiResult};
use crate::{graph, library, service};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/me", get(me))
        .route("/admin/users", get(admin_users))
        .merge(crate::idp::admin::api_routes())
        .route("/books", get(list_books))
        .route("/books/{id}", axum::routing::delete(delete_book))
        .route("/jobs", get(list_jobs))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .route("/search", post(search))
        .route("/paths", get(list_paths).post(create_path))
        .route("/paths/{id}", get(get_path))
        .route("/paths/{id}/graph.svg", get(path_graph))
        .route("/tickets/{id}", get(get_ticket))
        .route("/tickets/{id}/answers", get(list_answers).post(post_answer))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
}

/// Largest JSON request body; book uploads have their own, larger limit.
pub const MAX_JSON_BYTES: usize = 1024 * 1024;

/// A JSON body whose rejection is an [`ApiError`] naming the problem.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError::bad_request("invalid_json", "send the body as JSON with Content-Type: application/json"))
            }
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge { limit: MAX_JSON_BYTES })
            }
            Err(rejection) => Err(ApiError::bad_request("invalid_json", rejection.body_text())),
        }
    }
}

/// Parses a numeric id from a path segment.
pub fn parse_id(raw: &str, what: &str) -> ApiResult<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_request("invalid_id", format!("{what} id {raw:?} is not a positive whole number")))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("API route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

async fn me(ApiUser(user): ApiUser) -> Json<Value> {
    Json(json!({ "id": user.user_id, "email": user.email, "name": user.name, "groups": user.groups }))
}

async fn list_books(State(state): State<AppState>, caller: ApiCaller) -> ApiResult<Json<Value>> {
    caller.require_scope(SCOPE_READ)?;
    Ok(Json(json!({ "books": state.store.list_books().await? })))
}

#[derive(Deserialize)]
struct UploadQuery {
    name: Option<String>,
}

/// Accepts the request body as a book to ingest in the background, with
/// `?name=FILE.pdf` giving its format, and responds 202 with the job.
async fn upload_book(
    State(state): State<AppState>,
    LibraryWriter(actor): LibraryWriter,
    query: Result<Query<UploadQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Query(query) =
        query.map_err(|rejection| ApiError::bad_request("invalid_query_string", rejection.body_text()))?;
    let Some(name) = query.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request("missing_name", "name the file with ?name=FILE.pdf (or .html, .md)"));
    };
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit: state.config.max_upload_bytes }
        } else {
            ApiError::bad_request("invalid_upload", rejection.body_text())
        }
    })?;
    if body.is_empty() {
        return Err(ApiError::bad_request("empty_body", "the request body is empty; send the file's bytes"));
    }
    let job = library::submit_book(&state, body.to_vec(), name, actor).await?;
    Ok((StatusCode::ACCEPTED, Json(job_json(&job))))
}

/// Returns a job as the API shows it, with the address to follow it at.
pub fn job_json(job: &JobRecord) -> Value {
    json!({
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "file_name": job.file_name,
        "model": job.model,
        "pages_done": job.pages_done,
        "pages_total": job.pages_total,
        "passages_done": job.passages_done,
        "passages_total": job.passages_total,
        "book_id": job.book_id,
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "href": format!("/api/v1/jobs/{}", job.id),
    })
}

/// Most jobs `GET /api/v1/jobs` lists.
const LISTED_JOBS: i64 = 100;

async fn list_jobs(State(state): State<AppState>, _writer: LibraryWriter) -> ApiResult<Json<Value>> {
    let jobs = state.store.list_jobs(LISTED_JOBS).await?;
    Ok(Json(json!({ "jobs": jobs.iter().map(job_json).collect::<Vec<_>>() })))
}

async fn get_job(
    State(state): State<AppState>,
    _writer: LibraryWriter,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&id, "job")?;
    let job = state.store.job(id).await?.ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    Ok(Json(job_json(&job)))
}

async fn cancel_job(
    State(state): State<AppState>,
    LibraryWriter(actor): LibraryWriter,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let job = library::cancel_job(&state, parse_id(&id, "job")?, actor).await?;
    Ok((StatusCode::ACCEPTED, Json(job_json(&job))))
}

/// Lists the user pool for admins and operators.
async fn admin_users(State(state): State<AppState>, AdminApiUser(_): AdminApiUser) -> ApiResult<Json<Value>> {
    let users = state.store.list_users().await?;
    let users: Vec<Value> = users.iter().map(crate::idp::admin::user_json).collect();
    Ok(Json(json!({ "users": users })))
}

async fn delete_book(
    State(state): State<AppState>,
    StaffApiUser(user): StaffApiUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    library::delete_book(&state, parse_id(&id, "book")?, user.user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Builds the upload route, with the configured upload size limit in place
/// of the JSON limit.
pub fn upload_routes(max_upload_bytes: usize) -> Router<AppState> {
    Router::new().route("/books", post(upload_book)).layer(DefaultBodyLimit::max(max_upload_bytes))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    query: String,
    limit: Option<usize>,
}

pub fn passage_json(hit: &Hit) -> Value {
    json!({
        "chunk_id": hit.passage.chunk_id,
        "book_id": hit.passage.book_id,
        "section_id": hit.passage.section_id,
        "book_title": hit.passage.book_title,
        "heading": hit.passage.heading,
        "context": hit.passage.context,
        "page": hit.passage.page,
        "text": hit.passage.text,
        "relevance": (f64::from(hit.relevance) * 1000.0).round() / 1000.0,
    })
}

async fn search(
    State(state): State<AppState>,
    caller: ApiCaller,
    JsonBody(request): JsonBody<SearchRequest>,
) -> ApiResult<Json<Value>> {
    caller.require_scope(SCOPE_READ)?;
    let limit = request.limit.unwrap_or(10);
    if !(1..=service::MAX_PASSAGES).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be from 1 to {}", service::MAX_PASSAGES),
        ));
    }
    let found = library::search(&state, &request.query, limit).await?;
    Ok(Json(json!({
        "query": request.query.trim(),
        "model": found.model,
        "passages": found.hits.iter().map(passage_json).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathRequest {
    query: String,
    max_concepts: Option<usize>,
}

fn ticket_summary(ticket: &Ticket) -> Value {
    json!({
        "id": ticket.id,
        "concept": ticket.concept,
        "section": ticket.heading,
        "question": ticket.question,
        "difficulty": ticket.difficulty,
        "prerequisites": ticket.prerequisites,
        "status": ticket.status,
    })
}

fn path_json(path: &PathRecord) -> Value {
    json!({
        "path_id": path.id,
        "goal": path.goal,
        "milestone": path.milestone,
        "owner_id": path.owner_id,
        "created_at": path.created_at,
        "tickets": path.tickets.iter().map(ticket_summary).collect::<Vec<_>>(),
    })
}

async fn create_path(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    JsonBody(request): JsonBody<PathRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let max = request.max_concepts.unwrap_or(service::DEFAULT_CONCEPTS);
    let path = service::create_path(&state, &user, &request.query, max).await?;
    Ok((StatusCode::CREATED, Json(path_json(&path))))
}

async fn list_paths(State(state): State<AppState>, ApiUser(user): ApiUser) -> ApiResult<Json<Value>> {
    let owner = if user.is_staff() { None } else { Some(user.user_id) };
    Ok(Json(json!({ "paths": state.store.path_summaries(owner).await? })))
}

async fn get_path(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let path = service::visible_path(&state, &user, parse_id(&id, "path")?).await?;
    Ok(Json(path_json(&path)))
}

async fn path_graph(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let path = service::visible_path(&state, &user, parse_id(&id, "path")?).await?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], graph::svg(&path.tickets)).into_response())
}

async fn get_ticket(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let ticket = service::visible_ticket(&state, &user, parse_id(&id, "ticket")?).await?;
    let mut body = ticket_summary(&ticket);
    body["path_id"] = json!(ticket.path_id);
    body["milestone"] = json!(ticket.milestone);
    body["owner_id"] = json!(ticket.owner_id);
    body["updated_at"] = json!(ticket.updated_at);
    // Learners never see the expected answer.
    if user.is_staff() {
        body["expected_answer"] = json!(ticket.expected_answer);
        body["key_terms"] = json!(ticket.key_terms);
    }
    Ok(Json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerRequest {
    answer: String,
}

async fn post_answer(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<AnswerRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (answer, mastered, status) = service::answer(&state, &user, parse_id(&id, "ticket")?, &request.answer).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "answer_id": answer.id,
            "score": answer.score,
            "feedback": answer.feedback,
            "suggestions": answer.suggestions,
            "mastered": mastered,
            "status": status,
        })),
    ))
}

async fn list_answers(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let ticket = service::visible_ticket(&state, &user, parse_id(&id, "ticket")?).await?;
    Ok(Json(json!({ "ticket_id": ticket.id, "answers": state.store.answers(ticket.id).await? })))
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_documents_every_route() {
        let document: serde_json::Value =
            serde_json::from_str(include_str!("openapi.json")).expect("openapi.json is JSON");
        assert!(document["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        for (path, method) in [
            ("/api/v1/openapi.json", "get"),
            ("/api/v1/me", "get"),
            ("/api/v1/books", "get"),
            ("/api/v1/books", "post"),
            ("/api/v1/books/{id}", "delete"),
            ("/api/v1/jobs", "get"),
            ("/api/v1/jobs/{id}", "get"),
            ("/api/v1/jobs/{id}/cancel", "post"),
            ("/api/v1/search", "post"),
            ("/api/v1/paths", "get"),
            ("/api/v1/paths", "post"),
            ("/api/v1/paths/{id}", "get"),
            ("/api/v1/paths/{id}/graph.svg", "get"),
            ("/api/v1/tickets/{id}", "get"),
            ("/api/v1/tickets/{id}/answers", "get"),
            ("/api/v1/tickets/{id}/answers", "post"),
            ("/api/v1/admin/users", "get"),
            ("/api/v1/admin/users/{id}", "get"),
            ("/api/v1/admin/users/{id}", "patch"),
            ("/api/v1/admin/users/{id}", "delete"),
            ("/api/v1/admin/users/{id}/events", "get"),
            ("/api/v1/admin/users/{id}/{action}", "post"),
            ("/api/v1/admin/clients", "get"),
            ("/api/v1/admin/clients", "post"),
            ("/api/v1/admin/clients/{id}", "delete"),
            ("/oauth2/authorize", "get"),
            ("/oauth2/token", "post"),
            ("/oauth2/userInfo", "get"),
            ("/oauth2/userInfo", "post"),
            ("/oauth2/userinfo", "get"),
            ("/oauth2/userinfo", "post"),
            ("/oauth2/revoke", "post"),
        ] {
            assert!(document["paths"][path][method].is_object(), "{method} {path} is not documented");
        }
    }
}
