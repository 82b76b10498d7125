//! The gateway: the only role that faces the network. It terminates TLS,
//! redirects plain HTTP to HTTPS and gives each request an id. It rejects
//! malformed paths and limits connections, sizes and request rates. It
//! applies the filtering rules and the administration address ranges, logs
//! the request, adds security headers and routes it to its upstream. A role
//! in the same process is called directly, with no socket of its own, and a
//! role in another process is reached over mutual TLS.

mod checks;
pub mod limits;
mod listen;
pub mod roles;
pub mod settings;
pub mod upstream;
pub mod waf;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;
use crate::error::ApiError;
use crate::pki::InternalTls;
use checks::{checked_forward, drain, drop_after_response};
pub use listen::{Listeners, serve};
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
    let request_id = new_request_id();
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

/// Renders an error as JSON for the API and the OAuth 2.0 endpoints, and
/// as a page elsewhere.
fn error_response(path: &str, error: ApiError) -> Response {
    let json = ["/api/", "/oauth2/", "/.well-known/"].iter().any(|prefix| path.starts_with(prefix));
    if json { error.into_response() } else { crate::pages::PageError(error).into_response() }
}

/// Returns a new request id: 12 characters from the URL-safe base64
/// alphabet that never starts with `-`, so that it can be given to a
/// command line as an argument.
pub(crate) fn new_request_id() -> String {
    let mut id = crate::random_token(9);
    if id.starts_with('-') {
        id.replace_range(..1, "0");
    }
    id
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
}
