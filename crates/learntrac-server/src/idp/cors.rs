//! Cross-origin access to the provider's JSON endpoints for browser
//! applications: discovery and the key set for every origin, and the token,
//! user-info and revocation endpoints for the origins of registered
//! clients' redirect addresses only.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// How long a browser may reuse a preflight response, in seconds.
const PREFLIGHT_SECONDS: &str = "600";

/// Responds to CORS preflight requests and adds `Access-Control-Allow-Origin`
/// to responses for an allowed origin. Requests from other origins get no
/// CORS headers, so browsers keep the responses from the calling page.
pub async fn allow_client_origins(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_string);
    let public = request.uri().path().starts_with("/.well-known/");
    let allowed = match &origin {
        Some(_) if public => Some(HeaderValue::from_static("*")),
        Some(origin) => match client_origin_registered(&state, origin).await {
            Ok(true) => HeaderValue::from_str(origin).ok(),
            Ok(false) => None,
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "cannot read the clients for a CORS check");
                None
            }
        },
        None => None,
    };
    if request.method() == Method::OPTIONS && origin.is_some() {
        let mut response = StatusCode::NO_CONTENT.into_response();
        match allowed {
            Some(value) => {
                let headers = response.headers_mut();
                add_headers(headers, value);
                headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST"));
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static("authorization, content-type"),
                );
                headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(PREFLIGHT_SECONDS));
            }
            None => {
                tracing::info!(target: "learntrac::security", origin, "cross-origin request from an origin no client registered");
            }
        }
        return response;
    }
    let mut response = next.run(request).await;
    if let Some(value) = allowed {
        add_headers(response.headers_mut(), value);
    }
    response
}

fn add_headers(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// Returns whether `origin` is the scheme, host and port of a redirect
/// address that some client registered.
async fn client_origin_registered(state: &AppState, origin: &str) -> anyhow::Result<bool> {
    let clients = state.store.list_clients().await?;
    Ok(clients.iter().flat_map(|c| c.redirect_uris.iter()).any(|uri| origin_of(uri) == Some(origin)))
}

/// Returns the origin of an absolute `http(s)://` address.
fn origin_of(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("https://").or_else(|| uri.strip_prefix("http://"))?;
    let end = rest.find(['/', '?', '#']).map_or(uri.len(), |i| uri.len() - rest.len() + i);
    Some(&uri[..end])
}

#[cfg(test)]
mod tests {
    use super::origin_of;

    #[test]
    fn origins_of_redirect_addresses() {
        assert_eq!(origin_of("https://app.example/callback?x=1"), Some("https://app.example"));
        assert_eq!(origin_of("http://127.0.0.1:8400/cb"), Some("http://127.0.0.1:8400"));
        assert_eq!(origin_of("https://app.example"), Some("https://app.example"));
        assert_eq!(origin_of("javascript:alert(1)"), None);
    }
}
