//! The gateway: the only role that faces the network. It terminates TLS,
//! redirects plain HTTP to HTTPS, gives each request an id, logs it, adds
//! security headers, limits request rates and routes to the roles behind it.
//! In one process those roles are in-process services with no socket of
//! their own.

use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum_server::Handle;

use crate::error::ApiError;
use crate::{AppState, api, idp, pages};

/// The access log's record of the request being handled.
struct RequestContext {
    id: String,
    /// The authenticated user's id, 0 until a token has been accepted.
    user_id: std::sync::atomic::AtomicI64,
    /// The role that serves the request, which is also its log group.
    role: &'static str,
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

/// Returns the role serving the request being handled, if any.
pub fn current_role() -> Option<&'static str> {
    REQUEST.try_with(|r| r.role).ok()
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

/// Builds the routes of all roles behind the gateway's middleware.
pub fn router(state: AppState) -> Router {
    let max_upload = state.config.max_upload_bytes;
    Router::new()
        .merge(idp::routes())
        .nest(
            "/api/v1",
            api::upload_routes(max_upload).merge(api::routes()).route_layer(middleware::from_fn(record_route)),
        )
        .merge(pages::routes(max_upload))
        .route("/healthz", get(health))
        .route_layer(middleware::from_fn(record_route))
        .fallback(page_not_found)
        .layer(axum::extract::DefaultBodyLimit::max(api::MAX_JSON_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), gateway_layer))
        .with_state(state)
}

/// Notes the matched route template for the metrics; an inner router's
/// layer runs after the outer one's and names the more specific route.
async fn record_route(request: Request, next: Next) -> Response {
    if let Some(matched) = request.extensions().get::<axum::extract::MatchedPath>() {
        let route = matched.as_str().to_string();
        let _ = REQUEST.try_with(|r| *r.route.lock().unwrap_or_else(|p| p.into_inner()) = Some(route));
    }
    next.run(request).await
}

async fn page_not_found() -> crate::pages::PageError {
    crate::pages::PageError(ApiError::NotFound("page".into()))
}

async fn health(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "health check: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
        }
    }
}

/// Assigns the request id, logs the request, adds security headers and
/// feeds the metrics and the alert rules.
async fn gateway_layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = crate::random_token(9);
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let role = role_of(&path);
    let client =
        request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|connect| connect.0.ip());

    let context = RequestContext {
        id: request_id.clone(),
        user_id: std::sync::atomic::AtomicI64::new(0),
        role,
        client,
        route: Mutex::new(None),
    };
    let (mut response, user_id, route) = REQUEST
        .scope(context, async {
            let response = next.run(request).await;
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
        path,
        status,
        bytes,
        latency_ms,
        request_id,
        user_id,
        "request"
    );
    let route = route.unwrap_or_else(|| "unmatched".to_string());
    state.metrics.observe_request(&route, crate::metrics::method_label(&method), status, elapsed);
    state.alerts.observe_response(&state, &client, status, started);
    response
}

const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("strict-transport-security", "max-age=31536000; includeSubDomains"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    // "no-referrer" would make browsers send `Origin: null` on same-site form
    // posts, which the cross-site check must then reject.
    ("referrer-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
    (
        "content-security-policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
];

/// Returns the role that serves a path, for the access log.
fn role_of(path: &str) -> &'static str {
    if path.starts_with("/api/") {
        "api"
    } else if path.starts_with("/oauth2/")
        || path.starts_with("/.well-known/")
        || path.starts_with("/login")
        || path.starts_with("/logout")
        || path.starts_with("/account")
    {
        "idp"
    } else if path == "/healthz" {
        "gateway"
    } else {
        "trac"
    }
}

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

/// Serves HTTPS and the HTTP redirect until `shutdown` completes.
pub async fn serve(
    state: AppState,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let https_addr = listeners.https.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    let hostnames = public_hostnames(&state.config.public_url);
    let tls = crate::tls::server_config(
        &state.config.data_dir,
        state.config.tls_cert.as_deref(),
        state.config.tls_key.as_deref(),
        &hostnames,
    )?;

    let handle: Handle<SocketAddr> = Handle::new();
    let app = router(state.clone());
    let https = axum_server::from_tcp_rustls(listeners.https, crate::tls::rustls_config(tls))?
        .handle(handle.clone())
        .serve(app.into_make_service_with_connect_info::<SocketAddr>());

    let public_url = state.config.public_url.clone();
    let redirect = Router::new().fallback(move |request: Request<Body>| {
        let target = redirect_target(&public_url, request.uri());
        async move { Redirect::permanent(&target).into_response() }
    });
    let http = axum_server::from_tcp(listeners.http)?.handle(handle.clone()).serve(redirect.into_make_service());

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
