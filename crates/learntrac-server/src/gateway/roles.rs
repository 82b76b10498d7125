//! The roles behind the gateway (trac pages, the JSON API and the identity
//! provider) as routers, and a role served alone in its own process. Such a
//! role requires the gateway's client certificate, and so it trusts the
//! request id and client address that the gateway sends.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{REQUEST, RequestContext, record_route, upstream};
use crate::error::ApiError;
use crate::pki::InternalTls;
use crate::{AppState, api, idp, pages};

/// Returns the routes of `role`. `standalone` adds the role's own health
/// check and reads the gateway's headers, for a role in its own process.
pub fn router(state: AppState, role: &str, standalone: bool) -> Router {
    let max_upload = state.config.max_upload_bytes;
    let routes: Router<AppState> = match role {
        "api" => Router::new()
            .nest(
                "/api/v1",
                api::upload_routes(max_upload).merge(api::routes()).route_layer(middleware::from_fn(record_route)),
            )
            .fallback(api_not_found),
        "idp" => idp::routes(&state).fallback(page_not_found),
        _ => pages::routes(max_upload, &state).fallback(page_not_found),
    };
    let mut routes = routes
        .route_layer(middleware::from_fn(record_route))
        .layer(axum::extract::DefaultBodyLimit::max(api::MAX_JSON_BYTES));
    if standalone {
        let role = super::log_role(role);
        routes = routes
            .route("/healthz", get(health))
            .layer(middleware::from_fn(move |request: Request, next: Next| role_layer(role, request, next)));
    }
    routes.with_state(state)
}

async fn page_not_found() -> pages::PageError {
    pages::PageError(ApiError::NotFound("page".into()))
}

async fn api_not_found() -> ApiError {
    ApiError::NotFound("API route".into())
}

/// Serves the gateway's health checks: 200 while the database is reachable.
async fn health(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "health check: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
        }
    }
}

/// Takes the request id and client address from the gateway's headers
/// (only the gateway can connect, by its certificate) and reports the
/// user and route back in response headers for the gateway's access log.
async fn role_layer(role: &'static str, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .map(str::to_string)
        .unwrap_or_else(super::new_request_id);
    let client = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<std::net::IpAddr>().ok());
    if let Some(ip) = client {
        request.extensions_mut().insert(axum::extract::ConnectInfo(SocketAddr::new(ip, 0)));
    }
    let context = RequestContext::new(id, role, client);
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    REQUEST
        .scope(context, async move {
            let mut response = next.run(request).await;
            // One line per request in the role's own log, with the
            // gateway's request id, to follow a request across processes.
            tracing::info!(
                request_id = %super::current_request_id(),
                %method,
                path,
                status = response.status().as_u16(),
                "request served for the gateway"
            );
            let user = REQUEST.with(|r| r.user_id.load(std::sync::atomic::Ordering::Relaxed));
            let route = REQUEST.with(|r| r.route.lock().unwrap_or_else(|p| p.into_inner()).take());
            let headers = response.headers_mut();
            if user != 0 {
                headers.insert(upstream::USER_HEADER, HeaderValue::from(user));
            }
            if let Some(value) = route.and_then(|route| HeaderValue::from_str(&route).ok()) {
                headers.insert(upstream::ROUTE_HEADER, value);
            }
            response
        })
        .await
}

/// Serves one role on `listener` until `shutdown` completes. Connections
/// without a client certificate issued to the gateway by the internal
/// certificate authority fail the TLS handshake.
pub async fn serve(
    state: AppState,
    role: &str,
    listener: std::net::TcpListener,
    internal: &InternalTls,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let tls = crate::tls::rustls_config(internal.server_config()?);
    let handle: axum_server::Handle<SocketAddr> = axum_server::Handle::new();
    let app = router(state.clone(), role, true);
    let server = axum_server::from_tcp_rustls(listener, tls)?
        .handle(handle.clone())
        .serve(app.into_make_service_with_connect_info::<SocketAddr>());
    tracing::info!(
        role,
        address = %address,
        issuer = %state.config.public_url,
        "role listening for the gateway (mutual TLS)"
    );
    let shutdown_handle = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        shutdown_handle.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    server.await.with_context(|| format!("the {role} role stopped with an error"))?;
    state.store.close().await;
    Ok(())
}
