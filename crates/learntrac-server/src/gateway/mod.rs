//! The gateway: the only role that faces the network. It terminates TLS,
//! redirects plain HTTP to HTTPS and gives each request an id. It rejects
//! malformed paths and limits connections, sizes and request rates. It
//! applies the filtering rules and the administration address ranges, logs
//! the request, adds security headers and routes it to its upstream. A role
//! in the same process is called directly, with no socket of its own, and a
//! role in another process is reached over mutual TLS.

pub mod limits;
pub mod roles;
pub mod settings;
pub mod upstream;
pub mod waf;

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum_server::Handle;

use crate::AppState;
use crate::error::ApiError;
use crate::pki::InternalTls;
use settings::GatewaySettings;

/// The access log's record of the request being handled.
struct RequestContext {
    id: String,
    /// The authenticated user's id, 0 until a token has been accepted.
    user_id: std::sync::atomic::AtomicI64,
    /// The log group of the request's events: the gateway's while it
    /// checks the request, then the role that serves it.
    role: std::sync::atomic::AtomicUsize,
    /// The client's address, unmasked, for the audit trail.
    client: Option<std::net::IpAddr>,
    /// The route template that matched, such as `/api/v1/tickets/{id}`.
    route: Mutex<Option<String>>,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// Returns the id of the request being handled, or "-" outside a request.
pub fn current_request_id() -> String {
    REQUEST.try_with(|r| r.id.clone()).unwrap_or_else(|_| "-".to_string())
}

/// Log groups a request's events can belong to; the context stores an index.
const LOG_ROLES: &[&str] = &["gateway", "trac", "api", "idp"];

fn role_index(role: &str) -> usize {
    LOG_ROLES.iter().position(|known| *known == role).unwrap_or(0)
}

impl RequestContext {
    fn new(id: String, role: &str, client: Option<std::net::IpAddr>) -> RequestContext {
        RequestContext {
            id,
            user_id: std::sync::atomic::AtomicI64::new(0),
            role: std::sync::atomic::AtomicUsize::new(role_index(role)),
            client,
            route: Mutex::new(None),
        }
    }
}

/// Returns the log group of the request being handled, if any.
pub fn current_role() -> Option<&'static str> {
    REQUEST.try_with(|r| LOG_ROLES[r.role.load(std::sync::atomic::Ordering::Relaxed)]).ok()
}

/// Files the rest of the request's events under `role`'s log group.
fn enter_role(role: &str) {
    let _ = REQUEST.try_with(|r| r.role.store(role_index(role), std::sync::atomic::Ordering::Relaxed));
}

/// Returns the id and client address of the request being handled, or
/// empty strings outside a request.
pub fn current_request_origin() -> (String, String) {
    REQUEST.try_with(|r| (r.id.clone(), r.client.map(|ip| ip.to_string()).unwrap_or_default())).unwrap_or_default()
}

/// Records the authenticated user of the request being handled, for the
/// access log.
pub fn record_user(user_id: i64) {
    let _ = REQUEST.try_with(|r| r.user_id.store(user_id, std::sync::atomic::Ordering::Relaxed));
}

/// The gateway: its settings, routing table, rules and counters.
pub struct Gateway {
    pub app: AppState,
    settings: Arc<GatewaySettings>,
    pub table: Arc<upstream::RoutingTable>,
    waf: waf::Waf,
    buckets: limits::TokenBuckets,
    /// The mutual-TLS client for roles in other processes.
    client: reqwest::Client,
}

impl Gateway {
    /// Builds the gateway in front of `local_roles` (the roles this process
    /// runs) and of the upstreams in the settings. `internal` is needed
    /// when any upstream is in another process.
    pub fn new(app: AppState, local_roles: &[&str], internal: Option<&InternalTls>) -> Result<Arc<Gateway>> {
        let settings = Arc::new(app.config.gateway.clone());
        let table = upstream::RoutingTable::new(&settings, |name| {
            local_roles.contains(&name).then(|| roles::router(app.clone(), name, false))
        })?;
        let client = match (table.remote_pools().is_empty(), internal) {
            (true, _) => reqwest::Client::new(),
            (false, Some(internal)) => internal.client().with_context(|| {
                format!(
                    "the gateway needs its client certificate {} for the upstreams in other processes; \
                     run `learntrac pki init`, or pass --ca, --cert and --key",
                    internal.cert.display()
                )
            })?,
            (false, None) => {
                anyhow::bail!("upstreams in other processes need the internal certificates; run `learntrac pki init`")
            }
        };
        let waf = waf::Waf::new(&settings.waf).map_err(anyhow::Error::msg)?;
        Ok(Arc::new(Gateway { app, settings, table: Arc::new(table), waf, buckets: Default::default(), client }))
    }

    /// Starts the health checks of the upstreams in other processes.
    pub fn spawn_health_checks(&self) {
        let interval = Duration::from_secs(self.settings.health_check_seconds);
        tokio::spawn(upstream::check_health(self.table.clone(), self.client.clone(), interval));
    }
}

/// Builds the gateway's routes: its own health check, and everything else
/// to the upstream the routing table names.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/healthz", get(health))
        .fallback(proxy)
        .layer(middleware::from_fn_with_state(gateway.clone(), gateway_layer))
        .with_state(gateway)
}

/// Notes the matched route template for the metrics; an inner router's
/// layer runs after the outer one's and names the more specific route.
pub(crate) async fn record_route(request: Request, next: Next) -> Response {
    if let Some(matched) = request.extensions().get::<axum::extract::MatchedPath>() {
        let route = matched.as_str().to_string();
        let _ = REQUEST.try_with(|r| *r.route.lock().unwrap_or_else(|p| p.into_inner()) = Some(route));
    }
    next.run(request).await
}

/// Serves load-balancer checks: 200 when every upstream has a healthy
/// instance and, with a role in this process, the database is reachable.
async fn health(State(gateway): State<Arc<Gateway>>) -> Response {
    let (healthy, report) = health_report(&gateway).await;
    let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, report).into_response()
}

async fn health_report(gateway: &Gateway) -> (bool, String) {
    let mut healthy = true;
    let mut report = String::new();
    let pools = gateway.table.remote_pools();
    if gateway.table.has_local() {
        match gateway.app.store.ping().await {
            Ok(()) => report.push_str("database: ok\n"),
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "health check: database unreachable");
                report.push_str("database: unreachable\n");
                healthy = false;
            }
        }
    }
    for (name, upstream) in pools {
        let upstream::Upstream::Remote(pool) = upstream.as_ref() else { continue };
        let up = pool.instances.iter().filter(|i| i.is_healthy()).count();
        report.push_str(&format!("{name}: {up} of {} instances healthy\n", pool.instances.len()));
        healthy &= up > 0;
    }
    report.insert_str(0, if healthy { "ok\n" } else { "unhealthy\n" });
    (healthy, report)
}

/// Returns the log group of an upstream: its role, or the gateway's.
fn log_role(name: &str) -> &'static str {
    settings::ROLES.iter().find(|role| **role == name).copied().unwrap_or("gateway")
}

/// Assigns the request id, rejects malformed paths, logs the request, adds
/// security headers and feeds the metrics and the alert rules.
async fn gateway_layer(State(gateway): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    observe(&gateway, request, next, true).await
}

/// Does the same for the plain HTTP listener, whose requests never reach a role.
async fn redirect_layer(State(gateway): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    observe(&gateway, request, next, false).await
}

/// Does the work of [`gateway_layer`]; `routed` is false on the plain HTTP
/// listener, which logs every request under the gateway's own group.
async fn observe(gateway: &Gateway, mut request: Request, next: Next, routed: bool) -> Response {
    let started = Instant::now();
    let state = &gateway.app;
    let request_id = crate::random_token(9);
    let method = request.method().clone();
    let raw_path = request.uri().path().to_string();
    let client =
        request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|connect| connect.0.ip());
    let normalised = limits::normalise_path(&raw_path);
    let role = match &normalised {
        Ok(path) if routed && path != "/health" && path != "/healthz" => {
            gateway.table.lookup(path).map_or("gateway", |route| log_role(&route.name))
        }
        _ => "gateway",
    };
    let head_limit = gateway.settings.max_header_bytes;
    let head_too_large = head_size(&request) > head_limit;

    let context = RequestContext::new(request_id.clone(), "gateway", client);
    let (mut response, user_id, route) = REQUEST
        .scope(context, async {
            let response = match normalised {
                _ if head_too_large => {
                    tracing::warn!(
                        target: "learntrac::security",
                        limit = head_limit,
                        request_id = %current_request_id(),
                        "request headers too large"
                    );
                    error_response(&raw_path, ApiError::HeadersTooLarge { limit: head_limit })
                }
                Ok(path) => {
                    if path != raw_path {
                        set_path(&mut request, &path);
                    }
                    next.run(request).await
                }
                Err(problem) => {
                    let message = match problem {
                        limits::PathProblem::Traversal => {
                            "the path contains '.' or '..' segments, in plain or encoded form"
                        }
                        limits::PathProblem::Malformed => "the path is malformed; percent-encode it correctly",
                    };
                    tracing::warn!(
                        target: "learntrac::security",
                        path = %raw_path,
                        reason = ?problem,
                        request_id = %current_request_id(),
                        "path rejected"
                    );
                    error_response(&raw_path, ApiError::bad_request("invalid_path", message))
                }
            };
            let user_id = REQUEST.with(|r| r.user_id.load(std::sync::atomic::Ordering::Relaxed));
            let route = REQUEST.with(|r| r.route.lock().unwrap_or_else(|p| p.into_inner()).take());
            (response, user_id, route)
        })
        .await;

    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", value);
    }
    for (name, value) in SECURITY_HEADERS {
        headers.entry(*name).or_insert(HeaderValue::from_static(value));
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    let latency_ms = elapsed * 1000.0;
    let user_id = (user_id != 0).then_some(user_id);
    let bytes = axum::body::HttpBody::size_hint(response.body()).exact();
    let client = client.map(|ip| state.masker.mask(ip)).unwrap_or_else(|| "-".to_string());
    tracing::info!(
        target: "learntrac::access",
        role,
        client,
        %method,
        path = raw_path,
        status,
        bytes,
        latency_ms,
        request_id,
        user_id,
        "request"
    );
    let route = route.unwrap_or_else(|| "unmatched".to_string());
    state.metrics.observe_request(&route, crate::metrics::method_label(&method), status, elapsed);
    state.alerts.observe_response(state, &client, status, started);
    response
}

/// Returns the size of the request head as HTTP/1.1 would send it: the
/// request line and every header line.
fn head_size(request: &Request) -> usize {
    let uri = request.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len()) + uri.authority().map_or(0, |a| a.as_str().len());
    let headers: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    request.method().as_str().len() + target + 12 + headers
}

/// Replaces the path of the request's URI, keeping the query.
fn set_path(request: &mut Request, path: &str) {
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let mut parts = request.uri().clone().into_parts();
    if let Ok(value) = path_and_query.parse() {
        parts.path_and_query = Some(value);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
}

/// Renders an error as JSON under `/api/` and as a page elsewhere.
fn error_response(path: &str, error: ApiError) -> Response {
    if path.starts_with("/api/") { error.into_response() } else { crate::pages::PageError(error).into_response() }
}

/// Applies the address rules, rate limits, size limits and filtering rules
/// to a request and sends it to its upstream.
async fn proxy(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let (parts, body) = request.into_parts();
    let mut body = Some(body);
    match checked_forward(&gateway, parts, &mut body).await {
        Ok(response) => response,
        Err(error) => {
            let response = error_response(&path, error);
            match body {
                Some(unread) => match drain(unread).await {
                    Some(rest) => drop_after_response(response, rest),
                    None => response,
                },
                None => response,
            }
        }
    }
}

/// Most bytes of a rejected request's body that the gateway reads and
/// discards, and the time it spends on them.
const DRAIN_BYTES: usize = 8 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads and discards a rejected request's body, so that the client, which
/// may still be sending it, receives the error response. Returns the body
/// when it is longer than [`DRAIN_BYTES`] or slower than [`DRAIN_TIME`].
async fn drain(mut body: Body) -> Option<Body> {
    use http_body_util::BodyExt;
    let mut read = 0usize;
    let reading = async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    read += frame.data_ref().map_or(0, |data| data.len());
                    if read > DRAIN_BYTES {
                        return false;
                    }
                }
                Err(_) => return true,
            }
        }
        true
    };
    match tokio::time::timeout(DRAIN_TIME, reading).await {
        Ok(true) => None,
        _ => Some(body),
    }
}

/// Keeps an unread request body until the error response has been sent.
/// Over HTTP/2, dropping it first would reset the stream (CANCEL) and the
/// client would lose the response; dropped after, the reset says NO_ERROR,
/// which most clients accept.
fn drop_after_response(response: Response, request_body: Body) -> Response {
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Body::new(AfterResponse { response: body, _request: request_body }))
}

struct AfterResponse {
    response: Body,
    _request: Body,
}

impl http_body::Body for AfterResponse {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.response).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.response.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.response.size_hint()
    }
}

async fn checked_forward(
    gateway: &Gateway,
    mut parts: axum::http::request::Parts,
    unread: &mut Option<Body>,
) -> Result<Response, ApiError> {
    let settings = &gateway.settings;
    let state = &gateway.app;
    let path = parts.uri.path().to_string();
    let client = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|connect| connect.0.ip())
        .ok_or_else(|| anyhow::anyhow!("the request has no client address"))?;

    if settings.is_admin_path(&path) && !settings.admin_allowed(client) {
        let masked = state.masker.mask(client);
        tracing::warn!(
            target: "learntrac::security",
            client = masked,
            path,
            request_id = %current_request_id(),
            "administration request rejected: client address outside admin_networks"
        );
        let actor = match signed_in_user(state, &parts.headers) {
            Some(user_id) => crate::audit::Actor::User(user_id),
            None => crate::audit::Actor::Anonymous,
        };
        let details = "client address outside admin_networks";
        crate::audit::record(state, actor, "admin.access", &path, "denied", details).await;
        return Err(ApiError::Forbidden("administration is not allowed from this address".into()));
    }

    check_rate_limits(gateway, &parts, client, &path)?;

    let body = if settings.is_upload_path(&path) && parts.method == axum::http::Method::POST {
        inspect(gateway, &parts, &[])?;
        check_upload(gateway, &parts)?;
        let body = unread.take().unwrap_or_default();
        upstream::ForwardBody::Streamed(Body::new(http_body_util::Limited::new(body, state.config.max_upload_bytes)))
    } else {
        let limit = settings.max_body_bytes;
        if declared_length(&parts).is_some_and(|length| length > limit as u64) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        let bytes = read_body(settings, unread.take().unwrap_or_default()).await?;
        inspect(gateway, &parts, &bytes)?;
        upstream::ForwardBody::Buffered(bytes)
    };

    let Some(route) = gateway.table.lookup(&path) else {
        return Err(ApiError::NotFound("page".into()));
    };
    enter_role(log_role(&route.name));
    set_forwarded_headers(&mut parts, client);
    let timeout = Duration::from_secs(settings.request_seconds);
    let result = upstream::forward(
        &route.upstream,
        &route.name,
        &gateway.client,
        &state.metrics,
        axum::http::Request::from_parts(parts, body),
        timeout,
    )
    .await;
    let mut response = match result {
        Ok(response) => response,
        Err(upstream::ForwardError::Unavailable) => {
            tracing::error!(upstream = %route.name, request_id = %current_request_id(), "no healthy instance for the request");
            return Err(ApiError::ServiceUnavailable);
        }
        Err(upstream::ForwardError::Timeout) => return Err(ApiError::GatewayTimeout(settings.request_seconds)),
        Err(upstream::ForwardError::Failed(cause)) => {
            tracing::error!(
                upstream = %route.name,
                request_id = %current_request_id(),
                cause,
                "the upstream returned no valid response"
            );
            return Err(ApiError::BadGateway);
        }
    };
    take_role_report(&mut response);
    Ok(response)
}

/// Takes one token from each bucket the request counts against.
fn check_rate_limits(
    gateway: &Gateway,
    request: &axum::http::request::Parts,
    client: std::net::IpAddr,
    path: &str,
) -> Result<(), ApiError> {
    let limits = &gateway.settings.rate_limits;
    let now = Instant::now();
    let mut checks = vec![("address", limits::BucketKey::Address(client), limits.address)];
    if request.method == axum::http::Method::POST && gateway.settings.is_auth_path(path) {
        checks.push(("auth", limits::BucketKey::Auth(client), limits.auth));
    }
    if let Some(user_id) = signed_in_user(&gateway.app, &request.headers) {
        checks.push(("user", limits::BucketKey::User(user_id), limits.user));
    }
    for (scope, key, bucket) in checks {
        if let Err(retry_after) = gateway.buckets.take(key, bucket, now) {
            let state = &gateway.app;
            state.metrics.observe_rate_limited(scope);
            let masked = state.masker.mask(client);
            tracing::warn!(
                target: "learntrac::security",
                client = masked,
                scope,
                path,
                retry_after,
                request_id = %current_request_id(),
                "rate limit exceeded"
            );
            return Err(ApiError::TooManyRequests { retry_after });
        }
    }
    Ok(())
}

/// Returns the user id of the request's bearer token or session cookie
/// when its signature and claims are valid, so that one user's sessions
/// share a bucket and nobody can spend another user's. Revocation is left
/// to the role, which rejects the request.
fn signed_in_user(state: &AppState, headers: &axum::http::HeaderMap) -> Option<i64> {
    let token =
        crate::auth::bearer_token(headers).or_else(|| crate::auth::cookie(headers, crate::auth::SESSION_COOKIE))?;
    state.verified_tokens.user_id(&state.keys, &state.config.public_url, token, state.now())
}

/// Content types a raw upload may declare: the file formats the library
/// reads, or none in particular.
const RAW_UPLOAD_TYPES: &[&str] = &[
    "application/pdf",
    "text/html",
    "application/xhtml+xml",
    "text/markdown",
    "text/x-markdown",
    "text/plain",
    "application/octet-stream",
];

/// File name endings the library reads.
const UPLOAD_ENDINGS: &[&str] = &[".pdf", ".html", ".htm", ".xhtml", ".md", ".markdown"];

/// Checks an upload's declared content type, its file name and its
/// declared size; the body is then streamed to the role with the size
/// limit enforced as it goes. The JSON API takes the raw file (with
/// `?name=`), and the pages take a `multipart/form-data` form.
fn check_upload(gateway: &Gateway, parts: &axum::http::request::Parts) -> Result<(), ApiError> {
    let limit = gateway.app.config.max_upload_bytes;
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if parts.uri.path().starts_with("/api/") {
        if !essence.is_empty() && !RAW_UPLOAD_TYPES.contains(&essence.as_str()) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "an upload of type {content_type:?} is not accepted; send the PDF, HTML or Markdown file itself \
                 as the request body, with ?name=FILE"
            )));
        }
        let named =
            parts.uri.query().into_iter().flat_map(|q| q.split('&')).find_map(|pair| pair.strip_prefix("name="));
        if let Some(name) = named {
            let name = waf::percent_decode(&name.replace('+', " ")).unwrap_or_default().to_ascii_lowercase();
            if !UPLOAD_ENDINGS.iter().any(|ending| name.ends_with(ending)) {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "{name:?} is not a PDF, HTML or Markdown file name; name it .pdf, .html, .htm, .xhtml, .md or .markdown"
                )));
            }
        }
    } else if essence != "multipart/form-data" {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the upload form must be sent as multipart/form-data, not {content_type:?}"
        )));
    }
    if declared_length(parts).is_some_and(|length| length > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    Ok(())
}

fn declared_length(parts: &axum::http::request::Parts) -> Option<u64> {
    parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// Reads a whole request body within the size and time limits.
async fn read_body(settings: &GatewaySettings, body: Body) -> Result<bytes::Bytes, ApiError> {
    let limit = settings.max_body_bytes;
    if axum::body::HttpBody::is_end_stream(&body) {
        return Ok(bytes::Bytes::new());
    }
    let read = axum::body::to_bytes(body, limit);
    match tokio::time::timeout(Duration::from_secs(settings.request_seconds), read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => {
            let too_large =
                std::error::Error::source(&error).is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(ApiError::PayloadTooLarge { limit })
            } else {
                Err(ApiError::bad_request("unreadable_body", "the request body could not be read; send it again"))
            }
        }
        Err(_) => Err(ApiError::RequestTimeout(settings.request_seconds)),
    }
}

/// Runs the filtering rules; logs every match and refuses the request when
/// a rule in block mode matched.
fn inspect(gateway: &Gateway, parts: &axum::http::request::Parts, body: &[u8]) -> Result<(), ApiError> {
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let content_type = content_type.to_ascii_lowercase();
    let kind = if body.is_empty() {
        waf::BodyKind::None
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        waf::BodyKind::Form(body)
    } else if content_type.starts_with("application/json") || content_type.contains("+json") {
        waf::BodyKind::Json(body)
    } else {
        waf::BodyKind::Other(body)
    };
    let matches = gateway.waf.inspect(parts.uri.query(), &parts.headers, kind);
    let mut blocked = false;
    for found in &matches {
        let mode = found.mode.as_str();
        gateway.app.metrics.observe_filter_match(found.rule, mode);
        tracing::warn!(
            target: "learntrac::security",
            rule = found.rule,
            location = %found.location,
            mode,
            path = parts.uri.path(),
            request_id = %current_request_id(),
            "filtering rule matched"
        );
        blocked |= found.mode == settings::RuleMode::Block;
    }
    if blocked {
        return Err(ApiError::Forbidden(format!(
            "the request was rejected by a filtering rule; if it was legitimate, give the administrator request id {}",
            current_request_id()
        )));
    }
    Ok(())
}

/// Sets the headers the roles rely on, replacing any a client sent: the
/// client's address and scheme, the host, and the request id. Headers the
/// roles use to report back are removed.
fn set_forwarded_headers(parts: &mut axum::http::request::Parts, client: std::net::IpAddr) {
    const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    let headers = &mut parts.headers;
    // `insert` replaces every value a client sent under the same name.
    for name in ["forwarded", "x-real-ip", upstream::USER_HEADER, upstream::ROUTE_HEADER] {
        headers.remove(name);
    }
    if let Ok(value) = HeaderValue::from_str(&client.to_string()) {
        headers.insert(X_FORWARDED_FOR, value);
    } else {
        headers.remove(X_FORWARDED_FOR);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    if !headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, value);
    }
    match headers.get(header::HOST).cloned() {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
    match HeaderValue::from_str(&current_request_id()) {
        Ok(value) => headers.insert(X_REQUEST_ID, value),
        Err(_) => headers.remove(X_REQUEST_ID),
    };
}

/// Moves what a role in another process reported about the request (its
/// user and route) from the response headers into the access log.
fn take_role_report(response: &mut Response) {
    let headers = response.headers_mut();
    if let Some(user) = headers.remove(upstream::USER_HEADER)
        && let Some(id) = user.to_str().ok().and_then(|v| v.parse::<i64>().ok())
    {
        record_user(id);
    }
    if let Some(route) = headers.remove(upstream::ROUTE_HEADER)
        && let Ok(route) = route.to_str()
    {
        let route = route.to_string();
        let _ = REQUEST.try_with(|r| *r.route.lock().unwrap_or_else(|p| p.into_inner()) = Some(route));
    }
}

const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("strict-transport-security", "max-age=31536000; includeSubDomains"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    // Turns off the old XSS auditors of some browsers, which could be used
    // to blank parts of a page; the Content-Security-Policy does the work.
    ("x-xss-protection", "0"),
    // "no-referrer" would make browsers send `Origin: null` on same-site form
    // posts, which the cross-site check must then reject.
    ("referrer-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
    (
        "content-security-policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
];

/// Rejects a form post whose `Origin` is not this site, on top of the
/// SameSite=Strict session cookie, against cross-site request forgery.
/// The site is the request's authority: the `:authority` pseudo-header in
/// HTTP/2, the `Host` header in HTTP/1.1. A post without `Origin` (from a
/// script rather than a browser) passes.
pub async fn same_origin_forms(request: Request, next: Next) -> Response {
    if request.method() == axum::http::Method::POST {
        if let Some(origin) = request.headers().get(header::ORIGIN) {
            let authority = request
                .uri()
                .authority()
                .map(|a| a.as_str().to_string())
                .or_else(|| request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string));
            let expected = authority.map(|a| format!("https://{a}"));
            let origin = origin.to_str().unwrap_or("");
            if expected.as_deref() != Some(origin) {
                tracing::warn!(target: "learntrac::security", origin, expected = expected.as_deref().unwrap_or("-"), "cross-site form post rejected");
                return crate::pages::PageError(ApiError::Forbidden("cross-site form posts are not accepted".into()))
                    .into_response();
            }
        }
    }
    next.run(request).await
}

/// A fixed-window request limit per key (an address and a route).
#[derive(Default)]
pub struct RateLimiter {
    counter: crate::window::WindowCounter<String>,
}

impl RateLimiter {
    pub fn new() -> RateLimiter {
        RateLimiter::default()
    }

    /// Counts one request for `key` at `now`; fails with the seconds to wait
    /// when it is over `limit` requests in the current `window`.
    pub fn check(&self, key: &str, limit: u32, window: Duration, now: Instant) -> Result<(), ApiError> {
        let (count, started) = self.counter.hit(key.to_string(), window, now);
        if count > limit {
            let retry_after = window.saturating_sub(now.duration_since(started)).as_secs().max(1);
            return Err(ApiError::TooManyRequests { retry_after });
        }
        Ok(())
    }
}

/// The bound addresses of a running gateway.
pub struct Listeners {
    pub https: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    pub fn bind(https: SocketAddr, http: SocketAddr) -> Result<Listeners> {
        let https = TcpListener::bind(https)
            .with_context(|| format!("cannot listen on {https} for HTTPS; is another server using it?"))?;
        let http = TcpListener::bind(http)
            .with_context(|| format!("cannot listen on {http} for HTTP; is another server using it?"))?;
        https.set_nonblocking(true)?;
        http.set_nonblocking(true)?;
        Ok(Listeners { https, http })
    }
}

/// Wraps each accepted connection: refuses it when its address has too
/// many open, and closes it when it stays idle too long.
#[derive(Clone)]
struct LimitAcceptor {
    counter: limits::ConnectionCounter,
    per_client: usize,
    idle: Duration,
}

impl<S: Send + 'static> axum_server::accept::Accept<tokio::net::TcpStream, S> for LimitAcceptor {
    type Stream = limits::IdleStream<tokio::net::TcpStream>;
    type Service = S;
    type Future = std::future::Ready<std::io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let result = stream.peer_addr().and_then(|peer| {
            let permit = self.counter.acquire(peer.ip(), self.per_client).ok_or_else(|| {
                tracing::warn!(target: "learntrac::security", limit = self.per_client, "connection refused: too many open from one address");
                std::io::Error::other("too many connections from one address")
            })?;
            let _ = stream.set_nodelay(true);
            Ok((limits::IdleStream::new(stream, self.idle, permit), service))
        });
        std::future::ready(result)
    }
}

/// Applies the header time limit to a server, and a hard limit on the
/// request head at four times `max_header_bytes`. Heads between the two
/// limits reach the gateway, which answers 431 with its headers and a log
/// line; larger ones get hyper's bare 431 and a closed connection.
fn limit_http<A: axum_server::Address, Acc>(server: &mut axum_server::Server<A, Acc>, settings: &GatewaySettings) {
    let hard_limit = settings.max_header_bytes.saturating_mul(4);
    let builder = server.http_builder();
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(settings.header_read_seconds))
        .max_buf_size(hard_limit.max(8192));
    builder.http2().timer(hyper_util::rt::TokioTimer::new()).max_header_list_size(hard_limit as u32);
}

/// Serves HTTPS and the HTTP redirect until `shutdown` completes.
pub async fn serve(
    gateway: Arc<Gateway>,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let state = gateway.app.clone();
    let settings = gateway.settings.clone();
    let https_addr = listeners.https.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    let certificate = crate::tls::CertificateFiles::resolve(
        &state.config.data_dir,
        state.config.tls_cert.as_deref(),
        state.config.tls_key.as_deref(),
        &public_hostnames(&state.config.public_url),
    )?;
    let tls = crate::tls::rustls_config(certificate.server_config()?);
    tokio::spawn(crate::tls::watch(certificate, tls.clone()));
    gateway.spawn_health_checks();

    let acceptor = LimitAcceptor {
        counter: limits::ConnectionCounter::default(),
        per_client: settings.connections_per_client,
        idle: Duration::from_secs(settings.idle_seconds),
    };
    let handle: Handle<SocketAddr> = Handle::new();
    let app = router(gateway.clone());
    let mut https = axum_server::from_tcp(listeners.https)?
        .acceptor(axum_server::tls_rustls::RustlsAcceptor::new(tls).acceptor(acceptor.clone()))
        .handle(handle.clone());
    limit_http(&mut https, &settings);
    let https = https.serve(app.into_make_service_with_connect_info::<SocketAddr>());

    let public_url = state.config.public_url.clone();
    let redirect = Router::new()
        .route("/health", get(health))
        .fallback(move |request: Request<Body>| {
            let target = redirect_target(&public_url, request.uri());
            async move { Redirect::permanent(&target).into_response() }
        })
        .layer(middleware::from_fn_with_state(gateway.clone(), redirect_layer))
        .with_state(gateway.clone());
    let mut http = axum_server::from_tcp(listeners.http)?.acceptor(acceptor).handle(handle.clone());
    limit_http(&mut http, &settings);
    let http = http.serve(redirect.into_make_service());

    tracing::info!(https = %https_addr, http = %http_addr, public_url = %state.config.public_url, "gateway listening");
    let shutdown_handle = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        shutdown_handle.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    tokio::try_join!(https, http).context("the gateway stopped with an error")?;
    state.store.close().await;
    Ok(())
}

fn public_hostnames(public_url: &str) -> Vec<String> {
    public_url
        .parse::<Uri>()
        .ok()
        .and_then(|uri| uri.host().map(|h| h.trim_matches(['[', ']']).to_string()))
        .into_iter()
        .collect()
}

/// Returns the HTTPS address for a plain HTTP request: the same path and
/// query on the public URL. The client's `Host` header is not trusted.
fn redirect_target(public_url: &str, uri: &Uri) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{}{path}", public_url.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_per_window() {
        let limiter = RateLimiter::new();
        let start = Instant::now();
        let window = Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.check("a", 3, window, start).is_ok());
        }
        assert!(matches!(limiter.check("a", 3, window, start), Err(ApiError::TooManyRequests { .. })));
        assert!(limiter.check("b", 3, window, start).is_ok());
        assert!(limiter.check("a", 3, window, start + window).is_ok());
    }

    #[test]
    fn redirect_keeps_path_on_public_url() {
        let uri: Uri = "/wiki/WikiStart?x=1".parse().expect("uri");
        assert_eq!(
            redirect_target("https://learn.example:8443", &uri),
            "https://learn.example:8443/wiki/WikiStart?x=1"
        );
        assert_eq!(redirect_target("https://learn.example/", &"/".parse().expect("uri")), "https://learn.example/");
    }
}
