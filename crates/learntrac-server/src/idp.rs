//! The built-in identity provider: OpenID discovery, the key set, the
//! token endpoint and the browser sign-in pages.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use learntrac_store::User;
use serde::Deserialize;

use crate::AppState;
use crate::auth::{self, ACCESS_AUDIENCE, CLI_CLIENT_ID, PageUser, SESSION_COOKIE, TokenUse};
use crate::error::ApiError;
use crate::pages::{PageForm, PageQuery, escape, layout};
use crate::password;

/// Password checks allowed per client address and minute, on the token
/// endpoint, the sign-in form and the change-password form together.
pub const SIGN_IN_LIMIT: u32 = 30;

pub fn routes() -> Router<AppState> {
    let forms = Router::new()
        .route("/login", get(sign_in_page).post(sign_in))
        .route("/logout", get(sign_out_page).post(sign_out))
        .route("/account/password", get(password_page).post(change_password))
        .route_layer(axum::middleware::from_fn(crate::gateway::same_origin_forms));
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/oauth2/token", post(token))
        .merge(forms)
}

async fn discovery(State(state): State<AppState>) -> Json<serde_json::Value> {
    let issuer = &state.config.public_url;
    let grants: &[&str] = if state.config.password_grant { &["password", "refresh_token"] } else { &["refresh_token"] };
    Json(serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "end_session_endpoint": format!("{issuer}/logout"),
        "grant_types_supported": grants,
        // NOTE: there is no authorization endpoint yet, so no response type
        // is supported; scripts use the password grant.
        "response_types_supported": [],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "email", "name", "groups", "token_use", "password_change_required"],
    }))
}

async fn jwks(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(state.keys.jwks.clone())
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
}

/// An OAuth 2.0 error response (RFC 6749 section 5.2).
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    retry_after: Option<u64>,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError { status: StatusCode::BAD_REQUEST, error, description: description.into(), retry_after: None }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.error, "error_description": self.description }));
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(seconds) = self.retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, seconds);
        }
        response
    }
}

impl From<ApiError> for OAuthError {
    fn from(error: ApiError) -> OAuthError {
        let retry_after = match &error {
            ApiError::TooManyRequests { retry_after } => Some(*retry_after),
            _ => None,
        };
        // RFC 6749 section 5.2 names invalid_request for a bad request but
        // has no code for rate limits or server errors, which keep LearnTrac's.
        let code = match &error {
            ApiError::BadRequest { .. } => "invalid_request",
            other => other.code(),
        };
        OAuthError { status: error.status(), error: code, description: error.public_message(), retry_after }
    }
}

async fn token(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Result<Form<TokenRequest>, FormRejection>,
) -> Result<Response, OAuthError> {
    limit_sign_in(&state, peer)?;
    let Form(request) = request.map_err(|rejection| {
        OAuthError::new(
            "invalid_request",
            format!("send the parameters form-encoded (application/x-www-form-urlencoded): {}", rejection.body_text()),
        )
    })?;
    // RFC 6749 section 5.2 allows 400 for invalid_client when the client
    // did not authenticate with the Authorization header.
    if request.client_id.as_deref() != Some(CLI_CLIENT_ID) {
        return Err(OAuthError::new("invalid_client", format!("unknown client_id; use {CLI_CLIENT_ID}")));
    }

    let user = match request.grant_type.as_deref() {
        Some("password") if !state.config.password_grant => {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                "the password grant is switched off on this server (password_grant = false); sign in at /login",
            ));
        }
        Some("password") => {
            let (Some(username), Some(password)) = (request.username.as_deref(), request.password.as_deref()) else {
                return Err(OAuthError::new("invalid_request", "the password grant needs username and password"));
            };
            let user = check_credentials(&state, username, password, peer, "token").await?;
            let Some(user) = user else {
                return Err(OAuthError::new("invalid_grant", "invalid username or password"));
            };
            if user.must_change_password {
                return Err(OAuthError::new(
                    "invalid_grant",
                    "the one-time password must be changed first; sign in at /login to set a new one",
                ));
            }
            user
        }
        Some("refresh_token") => {
            let Some(refresh) = request.refresh_token.as_deref() else {
                return Err(OAuthError::new("invalid_request", "the refresh_token grant needs refresh_token"));
            };
            let user_id = state
                .store
                .consume_refresh_token(&crate::sha256_hex(refresh), state.now())
                .await
                .map_err(ApiError::from)?;
            let user = match user_id {
                Some(id) => state.store.user_by_id(id).await.map_err(ApiError::from)?,
                None => None,
            };
            match user {
                Some(user) if !user.disabled && !user.must_change_password => user,
                _ => {
                    tracing::warn!(
                        target: "learntrac::security",
                        client = state.masker.mask(peer.ip()),
                        "refresh token invalid, used, expired, or its user is disabled or must change the password"
                    );
                    return Err(OAuthError::new("invalid_grant", "the refresh token is invalid or expired"));
                }
            }
        }
        Some(other) => {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported; use password or refresh_token"),
            ));
        }
        None => return Err(OAuthError::new("invalid_request", "grant_type is missing")),
    };

    let body = token_response(&state, &user).await?;
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn token_response(state: &AppState, user: &User) -> Result<serde_json::Value, ApiError> {
    let now = state.now();
    let issuer = &state.config.public_url;
    let lifetime = state.config.access_token_seconds;
    let access = auth::issue(&state.keys, issuer, ACCESS_AUDIENCE, TokenUse::Access, user, lifetime, now)?;
    let id = auth::issue(&state.keys, issuer, CLI_CLIENT_ID, TokenUse::Id, user, lifetime, now)?;
    let refresh = crate::random_token(32);
    state
        .store
        .insert_refresh_token(
            &crate::sha256_hex(&refresh),
            user.id,
            user.token_version,
            now + state.config.refresh_token_seconds,
            now,
        )
        .await?;
    Ok(serde_json::json!({
        "access_token": access,
        "id_token": id,
        "refresh_token": refresh,
        "token_type": "Bearer",
        "expires_in": lifetime,
    }))
}

/// Counts a password check for `peer` against the sign-in limit, which the
/// token endpoint, the sign-in form and the change-password form share.
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

/// Verifies a password with the same work whether or not the account
/// exists, and reports a disabled account only after the password matched.
/// `purpose` names the check in the security log.
async fn check_credentials(
    state: &AppState,
    email: &str,
    password: &str,
    peer: SocketAddr,
    purpose: &'static str,
) -> Result<Option<User>, ApiError> {
    let user = state.store.user_by_email(email).await?;
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let candidate = password.to_string();
    let matched = tokio::task::spawn_blocking(move || password::verify(&candidate, stored.as_deref()))
        .await
        .map_err(|e| anyhow::anyhow!("password check task failed: {e}"))?;
    let reason = match (&user, matched) {
        (None, _) => Some("unknown_account"),
        (Some(_), false) => Some("wrong_password"),
        (Some(u), true) if u.disabled => Some("account_disabled"),
        _ => None,
    };
    let client = state.masker.mask(peer.ip());
    if let Some(reason) = reason {
        tracing::warn!(target: "learntrac::security", client, purpose, reason, "password check failed");
        state.metrics.observe_sign_in(reason);
        if let Some(user) = &user {
            state.alerts.observe_failed_sign_in(state, user.id, Instant::now());
        }
        state.alerts.observe_failed_password(state, &client, Instant::now());
        return Ok(None);
    }
    state.metrics.observe_sign_in("success");
    if let Some(user) = &user
        && let Err(error) = crate::alerts::check_admin_address(state, user, &client).await
    {
        tracing::error!(user_id = user.id, error = format!("{error:#}"), "cannot check the sign-in address");
    }
    Ok(user)
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
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

fn sign_in_form(next: &str, message: Option<&str>) -> Html<String> {
    let alert = message.map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(m))).unwrap_or_default();
    layout(
        "Sign in",
        None,
        &format!(
            "<h1>Sign in</h1>{alert}<form method=\"post\" action=\"/login\" class=\"narrow\">\
             <input type=\"hidden\" name=\"next\" value=\"{}\">\
             <label>Email <input type=\"email\" name=\"username\" autocomplete=\"username\" required autofocus></label>\
             <label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
             <button type=\"submit\">Sign in</button></form>",
            escape(next)
        ),
    )
}

async fn sign_in_page(PageQuery(query): PageQuery<NextQuery>) -> Html<String> {
    sign_in_form(&safe_next(query.next.as_deref()), None)
}

#[derive(Deserialize)]
struct SignInForm {
    username: String,
    password: String,
    next: Option<String>,
}

async fn sign_in(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageForm(form): PageForm<SignInForm>,
) -> Result<Response, ApiError> {
    let next = safe_next(form.next.as_deref());
    if let Err(error) = limit_sign_in(&state, peer) {
        let mut response = (error.status(), sign_in_form(&next, Some(&error.to_string()))).into_response();
        crate::error::add_challenge(&error, &mut response);
        return Ok(response);
    }
    let Some(user) = check_credentials(&state, &form.username, &form.password, peer, "sign-in").await? else {
        // The form is not HTTP authentication, so this is a 400 without a
        // WWW-Authenticate challenge.
        return Ok((StatusCode::BAD_REQUEST, sign_in_form(&next, Some("Invalid email or password."))).into_response());
    };
    let target = if user.must_change_password { "/account/password".to_string() } else { next };
    session_response(&state, &user, &target)
}

/// Sets the session cookie for `user` and redirects to `target`.
fn session_response(state: &AppState, user: &User, target: &str) -> Result<Response, ApiError> {
    let lifetime = state.config.session_seconds;
    let token = auth::issue(
        &state.keys,
        &state.config.public_url,
        ACCESS_AUDIENCE,
        TokenUse::Access,
        user,
        lifetime,
        state.now(),
    )?;
    let mut response = Redirect::to(target).into_response();
    response.headers_mut().insert(header::SET_COOKIE, session_cookie(&token, lifetime)?);
    Ok(response)
}

/// Builds the `Set-Cookie` value of a session; an empty value with age 0 deletes it.
fn session_cookie(value: &str, max_age: i64) -> Result<HeaderValue, ApiError> {
    let cookie = format!("{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict");
    HeaderValue::from_str(&cookie).map_err(|e| ApiError::Internal(anyhow::anyhow!("invalid session cookie: {e}")))
}

async fn sign_out_page() -> Html<String> {
    layout(
        "Sign out",
        None,
        "<h1>Sign out</h1><form method=\"post\" action=\"/logout\"><button type=\"submit\">Sign out</button></form>",
    )
}

/// Ends the browser session: its token is revoked, not only the cookie
/// cleared, so a copy of the cookie stops working too. This includes a
/// session that must still change its one-time password.
async fn sign_out(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Result<Response, ApiError> {
    if let Some(token) = auth::cookie(&headers, SESSION_COOKIE) {
        if let Some((principal, claims)) = auth::authenticate(&state, token, "session").await? {
            // The token stays usable until exp plus the clock leeway, so its
            // revocation must be kept that long.
            state.store.revoke_token(&claims.jti, claims.exp + auth::LEEWAY, state.now()).await?;
            state.revocations.clear();
            tracing::info!(target: "learntrac::security", user_id = principal.user_id, "signed out");
        }
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, session_cookie("", 0)?);
    Ok(response)
}

fn password_form(user: &auth::Principal, message: Option<&str>) -> Html<String> {
    let alert = message.map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(m))).unwrap_or_default();
    let reason = if user.password_change_required {
        "<p>Your password was set for one use only. Choose a new one to continue.</p>"
    } else {
        ""
    };
    layout(
        "Change password",
        Some(user),
        &format!(
            "<h1>Change password</h1>{reason}{alert}<form method=\"post\" action=\"/account/password\" class=\"narrow\">\
             <label>Current password <input type=\"password\" name=\"current\" autocomplete=\"current-password\" required></label>\
             <label>New password <input type=\"password\" name=\"new_password\" autocomplete=\"new-password\" required></label>\
             <p class=\"hint\">At least 8 characters with upper and lower case letters, a digit and a symbol.</p>\
             <button type=\"submit\">Change password</button></form>"
        ),
    )
}

async fn password_page(PageUser(user): PageUser) -> Html<String> {
    password_form(&user, None)
}

#[derive(Deserialize)]
struct PasswordForm {
    current: String,
    new_password: String,
}

async fn change_password(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(principal): PageUser,
    PageForm(form): PageForm<PasswordForm>,
) -> Result<Response, ApiError> {
    if let Err(error) = limit_sign_in(&state, peer) {
        return Ok((error.status(), password_form(&principal, Some(&error.to_string()))).into_response());
    }
    let Some(user) = check_credentials(&state, &principal.email, &form.current, peer, "password change").await? else {
        return Ok((StatusCode::BAD_REQUEST, password_form(&principal, Some("The current password is wrong.")))
            .into_response());
    };
    if let Err(problem) = password::check_policy(&form.new_password) {
        return Ok((StatusCode::BAD_REQUEST, password_form(&principal, Some(&format!("{problem}.")))).into_response());
    }
    if form.new_password == form.current {
        return Ok((
            StatusCode::BAD_REQUEST,
            password_form(&principal, Some("The new password must differ from the current one.")),
        )
            .into_response());
    }
    let new_password = form.new_password.clone();
    let hash = tokio::task::spawn_blocking(move || password::hash(&new_password))
        .await
        .map_err(|e| anyhow::anyhow!("password hashing task failed: {e}"))??;
    let token_version = state.store.set_password(user.id, &hash).await?;
    state.revocations.clear();
    tracing::info!(target: "learntrac::security", user_id = user.id, "password changed");
    let target = format!("user:{}", user.id);
    crate::audit::record(&state, crate::audit::Actor::User(user.id), "user.password_change", &target, "success", "")
        .await;
    let updated = User { must_change_password: false, token_version, ..user };
    session_response(&state, &updated, "/")
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
