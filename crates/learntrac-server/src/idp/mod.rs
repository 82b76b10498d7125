//! The built-in identity provider: the user pool (sign-up, sign-in with
//! lockout and TOTP, password reset, events) and the OpenID Connect
//! endpoints.

mod account;
pub mod admin;
mod cors;
pub mod mfa;
mod oauth;
pub mod pool;
pub mod settings;
mod signin;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};

use crate::AppState;
use crate::error::ApiError;
use crate::pages::escape;

/// Password checks allowed per client address and minute, on the token
/// endpoint and the sign-in, second-factor and change-password forms together.
pub const SIGN_IN_LIMIT: u32 = 30;

pub fn routes(state: &AppState) -> Router<AppState> {
    let forms = Router::new()
        .route("/login", get(signin::sign_in_page).post(signin::sign_in))
        .route("/login/mfa", get(signin::mfa_page).post(signin::mfa))
        .route("/logout", get(signin::sign_out_page).post(signin::sign_out))
        .route("/account", get(account::account_page))
        .route("/account/password", get(account::password_page).post(account::change_password))
        .route("/account/sign-out-everywhere", post(account::sign_out_everywhere))
        .route("/account/mfa", get(mfa::mfa_page).post(mfa::enable))
        .route("/account/mfa/disable", post(mfa::disable))
        .route("/account/reset", get(account::forgot_page).post(account::forgot))
        .route("/account/reset/confirm", get(account::reset_page).post(account::reset))
        .route("/signup", get(account::sign_up_page).post(account::sign_up))
        .route("/signup/confirm", get(account::confirm_page).post(account::confirm))
        .route_layer(middleware::from_fn_with_state(state.clone(), crate::sessions::protect_forms));
    // Browser applications on their own origin call these directly.
    let cross_origin = Router::new()
        .route("/.well-known/openid-configuration", get(oauth::discovery))
        .route("/.well-known/jwks.json", get(oauth::jwks))
        .route("/oauth2/token", post(oauth::token))
        .route("/oauth2/userInfo", get(oauth::user_info).post(oauth::user_info))
        // Many client libraries spell the path in lower case.
        .route("/oauth2/userinfo", get(oauth::user_info).post(oauth::user_info))
        .route("/oauth2/revoke", post(oauth::revoke))
        .layer(middleware::from_fn_with_state(state.clone(), cors::allow_client_origins));
    Router::new().route("/oauth2/authorize", get(oauth::authorize)).merge(cross_origin).merge(forms)
}

/// The client address and user agent of a request, for auth events and the security log.
pub struct Origin {
    pub peer: SocketAddr,
    /// The address as the log settings show it (hashed by default).
    pub client: String,
    pub user_agent: String,
}

impl FromRequestParts<AppState> for Origin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Origin, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |info| info.0);
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(200).collect())
            .unwrap_or_default();
        Ok(Origin { peer, client: state.masker.mask(peer.ip()), user_agent })
    }
}

/// Records an auth event for the user's history and the security log.
/// `failure` is the reason of a failure; `None` means success. Storage
/// errors are logged, never passed to the caller, whose action happened.
pub async fn record_event(
    state: &AppState,
    origin: &Origin,
    user_id: Option<i64>,
    event: &str,
    failure: Option<&str>,
    client_id: &str,
) {
    let outcome = if failure.is_some() { "failure" } else { "success" };
    let reason = failure.unwrap_or("");
    tracing::info!(
        target: "learntrac::security",
        event,
        outcome,
        reason,
        user_id,
        client = origin.client,
        client_id,
        "auth event"
    );
    let record = learntrac_store::AuthEvent {
        user_id,
        at: state.now(),
        event: event.to_string(),
        outcome: outcome.to_string(),
        reason: reason.to_string(),
        client_address: origin.client.clone(),
        user_agent: origin.user_agent.clone(),
        client_id: client_id.to_string(),
    };
    if let Err(error) = state.store.insert_auth_event(&record).await {
        tracing::error!(event, error = format!("{error:#}"), "cannot store an auth event");
    }
}

/// Counts a password or code check for `peer` against the sign-in limit.
fn limit_sign_in(state: &AppState, peer: SocketAddr) -> Result<(), ApiError> {
    let result =
        state.limiter.check(&format!("sign-in:{}", peer.ip()), SIGN_IN_LIMIT, Duration::from_secs(60), Instant::now());
    if result.is_err() {
        state.metrics.observe_rate_limited("sign-in");
        let client = state.masker.mask(peer.ip());
        tracing::warn!(target: "learntrac::security", client, limit = SIGN_IN_LIMIT, "sign-in rate limit exceeded");
    }
    result
}

/// Renders a page for a browser that may have no session: the form token
/// of its form cookie goes into every form, and the cookie is set if it
/// was missing.
fn anonymous_page(headers: &HeaderMap, status: StatusCode, title: &str, body: &str) -> Result<Response, ApiError> {
    let (token, set_cookie) = crate::sessions::anonymous_form_token(headers)?;
    let html = crate::pages::layout(title, None, body).0;
    let mut response = (status, Html(crate::sessions::with_form_tokens(&html, &token))).into_response();
    if let Some(value) = set_cookie {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// Formats an alert paragraph for a form, or nothing.
fn alert(message: Option<&str>) -> String {
    message.map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(m))).unwrap_or_default()
}

/// Formats a notice paragraph for a form, or nothing.
fn notice(message: Option<&str>) -> String {
    message.map(|m| format!("<p class=\"notice\" role=\"status\">{}</p>", escape(m))).unwrap_or_default()
}

/// Keeps a post-sign-in redirect on this site: an absolute path of
/// printable, non-space ASCII with no backslash that does not start with "//".
/// Browsers drop tabs and newlines from URLs, so "/\t/evil.example" would
/// otherwise leave the site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && path.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            path.to_string()
        }
        _ => "/".to_string(),
    }
}

/// Runs Argon2 hashing off the async workers.
async fn hash_password(password: &str) -> Result<String, ApiError> {
    let password = password.to_string();
    Ok(tokio::task::spawn_blocking(move || learntrac_identity::password::hash(&password))
        .await
        .map_err(|e| anyhow::anyhow!("password hashing task failed: {e}"))??)
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_stays_on_site() {
        assert_eq!(safe_next(Some("/wiki/WikiStart")), "/wiki/WikiStart");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil")), "/");
        assert_eq!(safe_next(Some("/\t/evil.example")), "/");
        assert_eq!(safe_next(Some("/\n/x")), "/");
        assert_eq!(safe_next(Some("/ /evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
