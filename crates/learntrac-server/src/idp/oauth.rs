//! The OpenID Connect endpoints: discovery, the key set, the authorization
//! code flow with PKCE, the token endpoint (authorization code, refresh
//! token with rotation, client credentials, and the password grant of the
//! first-party command-line client), user info and revocation.

use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use learntrac_store::{ClientRecord, CodeRecord, CodeUse, NewRefreshToken, RefreshOutcome, SessionStage, User};
use serde::Deserialize;

use super::pool::{self, Rejection};
use super::{Origin, limit_sign_in, record_event};
use crate::AppState;
use crate::auth::{self, CLI_CLIENT_ID, Caller, Grant};
use crate::error::ApiError;
use crate::pages::PageQuery;

/// How long an authorization code may wait to be exchanged.
const CODE_SECONDS: i64 = 300;

pub async fn discovery(State(state): State<AppState>) -> Json<serde_json::Value> {
    let issuer = &state.config.public_url;
    let mut grants = vec!["authorization_code", "refresh_token", "client_credentials"];
    if state.config.password_grant {
        grants.push("password");
    }
    Json(serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/oauth2/authorize"),
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "userinfo_endpoint": format!("{issuer}/oauth2/userInfo"),
        "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
        "end_session_endpoint": format!("{issuer}/logout"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "grant_types_supported": grants,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "scopes_supported": ["openid", "email", "profile", auth::SCOPE_API, auth::SCOPE_ADMIN, auth::SCOPE_READ, auth::SCOPE_WRITE],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "auth_time", "nonce", "email",
            "email_verified", "name", "groups", "token_use", "client_id", "scope"],
    }))
}

pub async fn jwks(State(state): State<AppState>) -> Response {
    let mut response = Json(state.keys().jwks.clone()).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    response
}

/// An OAuth 2.0 error response (RFC 6749 section 5.2).
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    retry_after: Option<u64>,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> OAuthError {
        let status = if error == "invalid_client" { StatusCode::UNAUTHORIZED } else { StatusCode::BAD_REQUEST };
        OAuthError { status, error, description: description.into(), retry_after: None }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.error, "error_description": self.description }));
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.error == "invalid_client" {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"learntrac\""));
        }
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

impl From<learntrac_store::StoreError> for OAuthError {
    fn from(error: learntrac_store::StoreError) -> OAuthError {
        ApiError::from(error).into()
    }
}

#[derive(Deserialize)]
pub struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    nonce: Option<String>,
    prompt: Option<String>,
    max_age: Option<i64>,
}

/// Shows a problem with the client or its redirect address on a page,
/// because sending the browser to an unchecked address would make
/// LearnTrac an open redirector.
fn authorize_page_error(message: String) -> Response {
    crate::pages::PageError(ApiError::bad_request("invalid_authorization_request", message)).into_response()
}

/// Sends the browser back to the client with an error (RFC 6749 4.1.2.1).
fn redirect_error(redirect_uri: &str, error: &str, description: &str, state: Option<&str>) -> Response {
    let mut target = format!(
        "{redirect_uri}{}error={error}&error_description={}",
        if redirect_uri.contains('?') { '&' } else { '?' },
        crate::pages::url_encode(description)
    );
    if let Some(state) = state {
        target.push_str(&format!("&state={}", crate::pages::url_encode(state)));
    }
    Redirect::to(&target).into_response()
}

/// Removes the `prompt` parameter from an authorization request's path and
/// query, so that the request repeated after a fresh sign-in goes through.
fn without_prompt(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_string();
    };
    let kept: Vec<&str> = query.split('&').filter(|pair| !pair.starts_with("prompt=")).collect();
    format!("{path}?{}", kept.join("&"))
}

/// Checks that every requested scope is allowed to the client. A request
/// without a scope gets all of the client's scopes.
fn granted_scope(client: &ClientRecord, asked: Option<&str>) -> Result<String, String> {
    let asked: Vec<&str> = asked.unwrap_or("").split(' ').filter(|s| !s.is_empty()).collect();
    if asked.is_empty() {
        return Ok(client.scopes.join(" "));
    }
    match asked.iter().find(|s| !client.scopes.iter().any(|allowed| allowed == *s)) {
        Some(scope) => {
            Err(format!("scope {scope:?} is not allowed for this client; it may ask for {}", client.scopes.join(" ")))
        }
        None => Ok(asked.join(" ")),
    }
}

/// The authorization endpoint: checks the client, its redirect address and
/// PKCE, sends a browser without a session to sign in first, and returns
/// a single-use code to the client.
pub async fn authorize(
    State(state): State<AppState>,
    headers: HeaderMap,
    original: axum::extract::OriginalUri,
    PageQuery(query): PageQuery<AuthorizeQuery>,
) -> Result<Response, ApiError> {
    let Some(client_id) = query.client_id.as_deref() else {
        return Ok(authorize_page_error("client_id is missing".into()));
    };
    let Some(client) = state.store.client(client_id).await? else {
        return Ok(authorize_page_error(format!("unknown client_id {client_id:?}; register the client first")));
    };
    let Some(redirect_uri) = query.redirect_uri.as_deref() else {
        return Ok(authorize_page_error("redirect_uri is missing".into()));
    };
    if !client.redirect_uris.iter().any(|allowed| allowed == redirect_uri) {
        return Ok(authorize_page_error(format!(
            "redirect_uri {redirect_uri:?} is not registered for client {client_id:?}"
        )));
    }
    let client_state = query.state.as_deref();
    if query.response_type.as_deref() != Some("code") {
        return Ok(redirect_error(
            redirect_uri,
            "unsupported_response_type",
            "only response_type=code is supported",
            client_state,
        ));
    }
    if !client.grants.iter().any(|g| g == "authorization_code") {
        return Ok(redirect_error(
            redirect_uri,
            "unauthorized_client",
            "this client may not use the code flow",
            client_state,
        ));
    }
    let challenge = query.code_challenge.as_deref().unwrap_or("");
    match query.code_challenge_method.as_deref() {
        _ if challenge.is_empty() => {
            return Ok(redirect_error(
                redirect_uri,
                "invalid_request",
                "PKCE is required: send code_challenge with code_challenge_method=S256",
                client_state,
            ));
        }
        Some("S256") => {}
        Some("plain") | None => {
            return Ok(redirect_error(
                redirect_uri,
                "invalid_request",
                "code_challenge_method plain is not accepted; use S256",
                client_state,
            ));
        }
        Some(_) => {
            return Ok(redirect_error(
                redirect_uri,
                "invalid_request",
                "unknown code_challenge_method; use S256",
                client_state,
            ));
        }
    }
    if challenge.len() != 43 || URL_SAFE_NO_PAD.decode(challenge).is_err() {
        return Ok(redirect_error(
            redirect_uri,
            "invalid_request",
            "code_challenge must be the base64url SHA-256 of the verifier (43 characters)",
            client_state,
        ));
    }
    let scope = match granted_scope(&client, query.scope.as_deref()) {
        Ok(scope) => scope,
        Err(problem) => return Ok(redirect_error(redirect_uri, "invalid_scope", &problem, client_state)),
    };

    let session = crate::sessions::current(&state, &headers, SessionStage::Active).await?;
    let prompts: Vec<&str> = query.prompt.as_deref().unwrap_or("").split(' ').collect();
    if session.is_none() && prompts.contains(&"none") {
        return Ok(redirect_error(redirect_uri, "login_required", "the user is not signed in", client_state));
    }
    // prompt=login and an exceeded max_age ask for a fresh sign-in (OpenID
    // Connect Core 1.0, section 3.1.2.1). The browser signs in again and
    // returns without prompt=login, and its new session meets max_age.
    let stale = session.as_ref().is_some_and(|(record, _)| {
        prompts.contains(&"login") || query.max_age.is_some_and(|age| state.now() - record.auth_time > age)
    });
    if stale {
        if prompts.contains(&"none") {
            return Ok(redirect_error(redirect_uri, "login_required", "a fresh sign-in is needed", client_state));
        }
        let back = without_prompt(original.0.path_and_query().map_or("/oauth2/authorize", |p| p.as_str()));
        return Ok(Redirect::to(&format!("/login?next={}", crate::pages::url_encode(&back))).into_response());
    }
    let Some((record, user)) = session else {
        let back = original.0.path_and_query().map_or("/oauth2/authorize", |p| p.as_str());
        return Ok(Redirect::to(&format!("/login?next={}", crate::pages::url_encode(back))).into_response());
    };
    if user.must_change_password || crate::sessions::mfa_setup_required(&state, &user) {
        return Ok(Redirect::to("/account").into_response());
    }
    let code = crate::random_token(32);
    state
        .store
        .insert_code(&CodeRecord {
            code_hash: crate::sha256_hex(&code),
            client_id: client.client_id.clone(),
            user_id: user.id,
            redirect_uri: redirect_uri.to_string(),
            scope,
            code_challenge: challenge.to_string(),
            nonce: query.nonce.clone().unwrap_or_default(),
            auth_time: record.auth_time,
            expires_at: state.now() + CODE_SECONDS,
            family: crate::random_token(12),
        })
        .await?;
    let mut target = format!("{redirect_uri}{}code={code}", if redirect_uri.contains('?') { '&' } else { '?' });
    if let Some(value) = client_state {
        target.push_str(&format!("&state={}", crate::pages::url_encode(value)));
    }
    Ok(Redirect::to(&target).into_response())
}

#[derive(Deserialize)]
pub struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    username: Option<String>,
    password: Option<String>,
    mfa_code: Option<String>,
    refresh_token: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    scope: Option<String>,
    token: Option<String>,
}

/// Identifies the client of a token request: HTTP Basic or form fields for
/// a confidential client (whose secret must match), the client id alone
/// for a public one.
async fn authenticate_client(
    state: &AppState,
    headers: &HeaderMap,
    request: &TokenRequest,
) -> Result<ClientRecord, OAuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        .and_then(|encoded| STANDARD.decode(encoded.trim()).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|pair| pair.split_once(':').map(|(id, secret)| (url_decode(id), Some(url_decode(secret)))));
    let (client_id, secret) = match basic {
        Some(pair) => pair,
        None => (request.client_id.clone().unwrap_or_default(), request.client_secret.clone()),
    };
    if client_id.is_empty() {
        return Err(OAuthError::new("invalid_client", "client_id is missing"));
    }
    let Some(client) = state.store.client(&client_id).await? else {
        tracing::warn!(target: "learntrac::security", client_id, "token request from an unknown client");
        return Err(OAuthError::new("invalid_client", "unknown client or wrong secret"));
    };
    match (&client.secret_hash, secret) {
        (None, None) => Ok(client),
        (None, Some(_)) => {
            Err(OAuthError::new("invalid_client", "this public client has no secret; send client_id only"))
        }
        (Some(_), None) => Err(OAuthError::new("invalid_client", "this confidential client must send its secret")),
        (Some(hash), Some(secret)) => {
            let hash = hash.clone();
            let matched =
                tokio::task::spawn_blocking(move || learntrac_identity::password::verify(&secret, Some(&hash)))
                    .await
                    .map_err(|e| ApiError::Internal(anyhow::anyhow!("secret check task failed: {e}")))?;
            if matched {
                Ok(client)
            } else {
                tracing::warn!(target: "learntrac::security", client_id, "token request with a wrong client secret");
                Err(OAuthError::new("invalid_client", "unknown client or wrong secret"))
            }
        }
    }
}

fn url_decode(value: &str) -> String {
    serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={value}"))
        .ok()
        .and_then(|mut pairs| pairs.pop())
        .map_or_else(|| value.to_string(), |(_, v)| v)
}

/// Returns the parameters of a token or revocation request, or the error
/// that names the expected encoding.
fn form_parameters(request: Result<Form<TokenRequest>, FormRejection>) -> Result<TokenRequest, OAuthError> {
    request.map(|Form(request)| request).map_err(|rejection| {
        OAuthError::new(
            "invalid_request",
            format!("send the parameters form-encoded (application/x-www-form-urlencoded): {}", rejection.body_text()),
        )
    })
}

fn no_store(body: serde_json::Value) -> Response {
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    origin: Origin,
    request: Result<Form<TokenRequest>, FormRejection>,
) -> Result<Response, OAuthError> {
    let request = form_parameters(request)?;
    let client = authenticate_client(&state, &headers, &request).await?;
    let Some(grant_type) = request.grant_type.as_deref() else {
        return Err(OAuthError::new("invalid_request", "grant_type is missing"));
    };
    if !GRANT_TYPES.contains(&grant_type) {
        return Err(OAuthError::new(
            "unsupported_grant_type",
            format!("grant_type {grant_type:?} is not supported; use one of {}", GRANT_TYPES.join(", ")),
        ));
    }
    if !client.grants.iter().any(|g| g == grant_type) {
        return Err(OAuthError::new(
            "unauthorized_client",
            format!(
                "client {} may not use grant_type {grant_type:?}; it may use {}",
                client.client_id,
                client.grants.join(", ")
            ),
        ));
    }
    match grant_type {
        "password" => password_grant(&state, &origin, &client, &request).await,
        "authorization_code" => code_grant(&state, &origin, &client, &request).await,
        "refresh_token" => refresh_grant(&state, &origin, &client, &request).await,
        _ => service_grant(&state, &origin, &client, &request).await,
    }
}

/// The grants the token endpoint supports.
const GRANT_TYPES: &[&str] = &["authorization_code", "refresh_token", "client_credentials", "password"];

async fn password_grant(
    state: &AppState,
    origin: &Origin,
    client: &ClientRecord,
    request: &TokenRequest,
) -> Result<Response, OAuthError> {
    if !state.config.password_grant || client.client_id != CLI_CLIENT_ID {
        return Err(OAuthError::new(
            "unsupported_grant_type",
            "the password grant is switched off on this server (password_grant = false); use the code flow",
        ));
    }
    let (Some(username), Some(password)) = (request.username.as_deref(), request.password.as_deref()) else {
        return Err(OAuthError::new("invalid_request", "the password grant needs username and password"));
    };
    // Only grants that check a password count against the sign-in limit.
    limit_sign_in(state, origin.peer)?;
    let user = match pool::check_password(state, username, password, origin, &client.client_id).await? {
        Ok(user) => user,
        Err(Rejection::Unverified) => {
            return Err(OAuthError::new(
                "invalid_grant",
                "verify the email address first with the mailed code at /signup/confirm",
            ));
        }
        Err(_) => return Err(OAuthError::new("invalid_grant", "invalid username or password, or too many attempts")),
    };
    if user.must_change_password {
        return Err(OAuthError::new(
            "invalid_grant",
            "the one-time password must be changed first; sign in at /login to set a new one",
        ));
    }
    if crate::sessions::mfa_setup_required(state, &user) {
        return Err(OAuthError::new(
            "invalid_grant",
            "this account must set up multi-factor sign-in first, at /account/mfa",
        ));
    }
    if user.mfa_secret.is_some() {
        let Some(code) = request.mfa_code.as_deref() else {
            return Err(OAuthError::new(
                "invalid_grant",
                "this account uses multi-factor sign-in; send mfa_code as well",
            ));
        };
        if !super::mfa::check_second_factor(state, &user, code).await? {
            pool::count_failure(
                state,
                &user.email,
                Some(user.id),
                origin,
                "sign_in",
                "wrong_mfa_code",
                &client.client_id,
            )
            .await?;
            return Err(OAuthError::new("invalid_grant", "the multi-factor code is wrong or was used already"));
        }
    }
    record_event(state, origin, Some(user.id), "sign_in", None, &client.client_id).await;
    let scope = granted_scope(client, request.scope.as_deref()).map_err(|p| OAuthError::new("invalid_scope", p))?;
    let family = crate::random_token(12);
    let grant =
        Grant { client_id: &client.client_id, scope: &scope, auth_time: state.now(), family: &family, nonce: None };
    Ok(no_store(issue_tokens(state, client, &user, &grant).await?))
}

/// Checks a PKCE verifier against the S256 challenge (RFC 7636 4.6).
fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let valid = (43..=128).contains(&verifier.len())
        && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    valid && URL_SAFE_NO_PAD.encode(digest.as_ref()) == challenge
}

async fn code_grant(
    state: &AppState,
    origin: &Origin,
    client: &ClientRecord,
    request: &TokenRequest,
) -> Result<Response, OAuthError> {
    let (Some(code), Some(redirect_uri), Some(verifier)) =
        (request.code.as_deref(), request.redirect_uri.as_deref(), request.code_verifier.as_deref())
    else {
        return Err(OAuthError::new("invalid_request", "the code grant needs code, redirect_uri and code_verifier"));
    };
    let now = state.now();
    let family_expiry = now + state.config.access_token_seconds + state.config.identity.clock_skew_seconds;
    let record = match state.store.use_code(&crate::sha256_hex(code), now, family_expiry).await? {
        CodeUse::Valid(record) => record,
        CodeUse::Reused { user_id, client_id } => {
            state.revocations.clear();
            tracing::warn!(target: "learntrac::security", user_id, client_id, "an authorization code was presented again; the tokens issued for it are revoked");
            record_event(state, origin, Some(user_id), "token", Some("reused_authorization_code"), &client.client_id)
                .await;
            return Err(OAuthError::new("invalid_grant", "the code is invalid, used or expired"));
        }
        CodeUse::Invalid => {
            tracing::warn!(target: "learntrac::security", client_id = client.client_id, "unknown or expired authorization code");
            return Err(OAuthError::new("invalid_grant", "the code is invalid, used or expired"));
        }
    };
    if record.client_id != client.client_id || record.redirect_uri != redirect_uri {
        tracing::warn!(target: "learntrac::security", client_id = client.client_id, "authorization code of another client or redirect address");
        return Err(OAuthError::new("invalid_grant", "the code was issued to another client or redirect_uri"));
    }
    if !pkce_matches(verifier, &record.code_challenge) {
        record_event(state, origin, Some(record.user_id), "token", Some("pkce_mismatch"), &client.client_id).await;
        return Err(OAuthError::new("invalid_grant", "code_verifier does not match the code_challenge"));
    }
    let user = usable_user(state, record.user_id).await?;
    let grant = Grant {
        client_id: &client.client_id,
        scope: &record.scope,
        auth_time: record.auth_time,
        family: &record.family,
        nonce: Some(&record.nonce),
    };
    record_event(state, origin, Some(user.id), "token", None, &client.client_id).await;
    Ok(no_store(issue_tokens(state, client, &user, &grant).await?))
}

/// Returns the user of a grant, if they may still have tokens.
async fn usable_user(state: &AppState, user_id: i64) -> Result<User, OAuthError> {
    match state.store.user_by_id(user_id).await? {
        Some(user) if !user.disabled && !user.must_change_password && user.email_verified => Ok(user),
        _ => Err(OAuthError::new("invalid_grant", "the user is disabled or must sign in again")),
    }
}

async fn refresh_grant(
    state: &AppState,
    origin: &Origin,
    client: &ClientRecord,
    request: &TokenRequest,
) -> Result<Response, OAuthError> {
    let Some(refresh) = request.refresh_token.as_deref() else {
        return Err(OAuthError::new("invalid_request", "the refresh_token grant needs refresh_token"));
    };
    let now = state.now();
    let family_expiry = now + state.config.access_token_seconds + state.config.identity.clock_skew_seconds;
    let outcome =
        state.store.use_refresh_token(&crate::sha256_hex(refresh), &client.client_id, now, family_expiry).await?;
    let grant = match outcome {
        RefreshOutcome::Valid(grant) => grant,
        RefreshOutcome::Reused { user_id, .. } => {
            state.revocations.clear();
            tracing::warn!(target: "learntrac::security", user_id, client_id = client.client_id, "a used refresh token was presented again; its family is revoked");
            record_event(
                state,
                origin,
                Some(user_id),
                "token_refresh",
                Some("reused_refresh_token"),
                &client.client_id,
            )
            .await;
            return Err(OAuthError::new("invalid_grant", "the refresh token is invalid or expired"));
        }
        RefreshOutcome::Invalid => {
            tracing::warn!(target: "learntrac::security", client = origin.client, "refresh token unknown, revoked, expired or issued before a sign-out");
            return Err(OAuthError::new("invalid_grant", "the refresh token is invalid or expired"));
        }
    };
    let user = usable_user(state, grant.user_id).await?;
    record_event(state, origin, Some(user.id), "token_refresh", None, &client.client_id).await;
    let issue = Grant {
        client_id: &client.client_id,
        scope: &grant.scope,
        auth_time: grant.auth_time,
        family: &grant.family,
        nonce: None,
    };
    Ok(no_store(issue_tokens(state, client, &user, &issue).await?))
}

async fn service_grant(
    state: &AppState,
    origin: &Origin,
    client: &ClientRecord,
    request: &TokenRequest,
) -> Result<Response, OAuthError> {
    if client.secret_hash.is_none() {
        return Err(OAuthError::new("unauthorized_client", "only confidential clients may use client_credentials"));
    }
    let scope = granted_scope(client, request.scope.as_deref()).map_err(|p| OAuthError::new("invalid_scope", p))?;
    let lifetime = state.config.access_token_seconds;
    let token =
        auth::issue_service(&state.keys(), &state.config.public_url, &client.client_id, &scope, lifetime, state.now())
            .map_err(ApiError::from)?;
    record_event(state, origin, None, "client_credentials", None, &client.client_id).await;
    Ok(no_store(serde_json::json!({
        "access_token": token, "token_type": "Bearer", "expires_in": lifetime, "scope": scope,
    })))
}

/// Issues an access token, an ID token when `openid` was granted, and the
/// next refresh token of the grant's family when the client may refresh.
async fn issue_tokens(
    state: &AppState,
    client: &ClientRecord,
    user: &User,
    grant: &Grant<'_>,
) -> Result<serde_json::Value, ApiError> {
    let now = state.now();
    let issuer = &state.config.public_url;
    let keys = state.keys();
    let lifetime = state.config.access_token_seconds;
    let access = auth::issue_access(&keys, issuer, user, grant, lifetime, now)?;
    let mut body = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": grant.scope,
    });
    if client.grants.iter().any(|g| g == "refresh_token") {
        let refresh = crate::random_token(32);
        let record = NewRefreshToken {
            token_hash: &crate::sha256_hex(&refresh),
            user_id: user.id,
            token_version: user.token_version,
            family: grant.family,
            client_id: grant.client_id,
            scope: grant.scope,
            auth_time: grant.auth_time,
            expires_at: now + state.config.refresh_token_seconds,
        };
        state.store.insert_refresh_token(&record, now).await?;
        body["refresh_token"] = refresh.into();
    }
    if grant.scope.split(' ').any(|s| s == "openid") {
        let id_lifetime = state.config.identity.id_token_seconds;
        body["id_token"] = auth::issue_id(&keys, issuer, user, grant, id_lifetime, now)?.into();
    }
    Ok(body)
}

/// Returns the profile of the user of a bearer access token granted
/// `openid`: the address with the `email` scope, the name with `profile`.
pub async fn user_info(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let Some(token) = auth::bearer_token(&headers) else {
        return Err(ApiError::Unauthorized);
    };
    let caller = auth::authenticate(&state, token, "userinfo").await?.ok_or(ApiError::InvalidToken)?;
    let Caller::User(principal) = caller else {
        return Err(ApiError::Forbidden("a service account has no user profile".into()));
    };
    let skew = state.config.identity.clock_skew_seconds;
    let scopes = state.verified_tokens.cached_scopes(token, skew, state.now()).unwrap_or_default();
    if !scopes.iter().any(|s| s == "openid") {
        return Err(ApiError::Forbidden("user info needs a token granted the openid scope".into()));
    }
    let user = state.store.user_by_id(principal.user_id).await?.ok_or(ApiError::InvalidToken)?;
    let mut body = serde_json::json!({ "sub": user.id.to_string(), "groups": principal.groups });
    if scopes.iter().any(|s| s == "email") {
        body["email"] = user.email.into();
        body["email_verified"] = user.email_verified.into();
    }
    if scopes.iter().any(|s| s == "profile") {
        body["name"] = user.name.into();
    }
    Ok(no_store(body))
}

/// Revokes a refresh token (with its family and the access tokens issued
/// from it) or an access token of the calling client (RFC 7009). Unknown
/// tokens get 200 as well, as the RFC requires.
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    origin: Origin,
    request: Result<Form<TokenRequest>, FormRejection>,
) -> Result<Response, OAuthError> {
    let request = form_parameters(request)?;
    let client = authenticate_client(&state, &headers, &request).await?;
    let Some(token) = request.token.as_deref() else {
        return Err(OAuthError::new("invalid_request", "token is missing"));
    };
    let now = state.now();
    let family_expiry = now + state.config.access_token_seconds + state.config.identity.clock_skew_seconds;
    if let Some((user_id, family)) = state.store.refresh_family(&crate::sha256_hex(token), &client.client_id).await? {
        state.store.revoke_family(&family, family_expiry, now).await?;
        state.revocations.clear();
        record_event(&state, &origin, Some(user_id), "revoke", None, &client.client_id).await;
    } else if token.split('.').count() == 3 {
        let keys = state.keys();
        let clients = [client.client_id.clone()];
        let expect = auth::Expectations {
            issuer: &state.config.public_url,
            clients: &clients,
            groups_claim: "groups",
            group_map: None,
        };
        if let Ok(claims) = auth::validate_builtin(&keys, &expect, token, state.config.identity.clock_skew_seconds, now)
        {
            state.store.revoke_token(&claims.jti, claims.exp + state.config.identity.clock_skew_seconds, now).await?;
            state.revocations.clear();
            record_event(&state, &origin, claims.sub.parse().ok(), "revoke", None, &client.client_id).await;
        }
    }
    Ok(no_store(serde_json::json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_uses_s256() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(pkce_matches(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
        assert!(!pkce_matches(verifier, verifier), "plain is refused");
        assert!(!pkce_matches("short", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
    }

    #[test]
    fn scopes_are_limited_to_the_client() {
        let client = ClientRecord {
            client_id: "c".into(),
            name: "C".into(),
            secret_hash: None,
            redirect_uris: vec![],
            logout_uris: vec![],
            grants: vec![],
            scopes: vec!["openid".into(), "email".into()],
            created_at: 0,
        };
        assert_eq!(granted_scope(&client, None).as_deref(), Ok("openid email"));
        assert_eq!(granted_scope(&client, Some("openid")).as_deref(), Ok("openid"));
        assert!(granted_scope(&client, Some("openid admin")).is_err());
    }
}
