//! Browser sessions and forms: a `__Host-` cookie naming a session stored
//! on the server (so that signing out ends it at once), idle and absolute
//! timeouts, and a token in every form against cross-site request forgery.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use learntrac_store::{SessionRecord, SessionStage, User};

use crate::AppState;
use crate::auth::{Principal, cookie};
use crate::error::ApiError;

/// The session cookie. The `__Host-` prefix makes browsers refuse it
/// unless it is Secure, has Path=/ and no Domain, so no other host can set it.
pub const SESSION_COOKIE: &str = "__Host-lt_session";
/// The cookie that carries the form token of a browser with no session yet
/// (sign-in, sign-up and reset forms).
pub const FORM_COOKIE: &str = "__Host-lt_form";
/// The form field, or for multipart forms the query parameter, that
/// carries the form token.
pub const FORM_FIELD: &str = "csrf";

/// How long a looked-up session is reused before the database is asked
/// again. Signing out in this process removes it at once.
const CACHE_SECONDS: u64 = 5;
/// A session's last activity is written at most this often.
const TOUCH_SECONDS: i64 = 60;

struct Cached {
    checked: Instant,
    record: SessionRecord,
    user: User,
}

/// Sessions looked up recently, by the hash of their id.
#[derive(Default)]
pub struct SessionCache {
    entries: Mutex<HashMap<String, Cached>>,
}

impl SessionCache {
    fn get(&self, id_hash: &str) -> Option<(SessionRecord, User)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let cached = entries.get(id_hash)?;
        (cached.checked.elapsed().as_secs() < CACHE_SECONDS).then(|| (cached.record.clone(), cached.user.clone()))
    }

    fn put(&self, record: SessionRecord, user: User) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= 100_000 {
            entries.clear();
        }
        entries.insert(record.id_hash.clone(), Cached { checked: Instant::now(), record, user });
    }

    pub fn forget(&self, id_hash: &str) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(id_hash);
    }

    /// Forgets every session, after a user was signed out everywhere,
    /// disabled or changed.
    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Returns the user of a session looked up recently, without querying
    /// the database; the gateway's per-user limits use it.
    pub fn cached_user(&self, headers: &HeaderMap) -> Option<i64> {
        let id = cookie(headers, SESSION_COOKIE)?;
        self.get(&crate::sha256_hex(id)).map(|(_, user)| user.id)
    }
}

/// A signed-in browser session with its user.
pub struct Session {
    pub principal: Principal,
    pub record: SessionRecord,
    pub user: User,
}

/// Returns the session named by the request's cookie at `stage`, if it is
/// valid: known, not past its absolute end or idle timeout, and its user
/// enabled and verified.
pub async fn current(
    state: &AppState,
    headers: &HeaderMap,
    stage: SessionStage,
) -> Result<Option<(SessionRecord, User)>, ApiError> {
    let Some(id) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let id_hash = crate::sha256_hex(id);
    let found = match state.sessions.get(&id_hash) {
        Some(found) => Some(found),
        None => match state.store.session(&id_hash).await? {
            Some(record) => state.store.user_by_id(record.user_id).await?.map(|user| (record, user)),
            None => None,
        },
    };
    let Some((mut record, user)) = found else {
        return Ok(None);
    };
    let now = state.now();
    let idle = state.config.identity.session_idle_seconds;
    let reason = if record.expires_at <= now {
        Some("past its absolute timeout")
    } else if record.last_seen_at + idle <= now {
        Some("idle for too long")
    } else if user.disabled {
        Some("its user is disabled")
    } else {
        None
    };
    if let Some(reason) = reason {
        tracing::info!(target: "learntrac::security", user_id = user.id, reason, "session ended");
        state.sessions.forget(&id_hash);
        state.store.delete_session(&id_hash).await?;
        return Ok(None);
    }
    // Activity is written often enough that an active session never looks idle.
    if now - record.last_seen_at >= (idle / 2).clamp(1, TOUCH_SECONDS) {
        state.store.touch_session(&id_hash, now).await?;
        record.last_seen_at = now;
    }
    state.sessions.put(record.clone(), user.clone());
    Ok((record.stage == stage).then_some((record, user)))
}

/// Whether `user` must set up TOTP before anything else.
pub fn mfa_setup_required(state: &AppState, user: &User) -> bool {
    user.mfa_secret.is_none() && state.config.identity.mfa_required_groups.iter().any(|g| user.in_group(*g))
}

/// Paths a session may use while it must still change its password or
/// set up TOTP.
const SETUP_PATHS: &[&str] = &["/account/password", "/account/mfa", "/logout"];

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Session, Response> {
        let next = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let to_sign_in = || Redirect::to(&format!("/login?next={}", crate::pages::url_encode(next))).into_response();
        let found = current(state, &parts.headers, SessionStage::Active)
            .await
            .map_err(|error| crate::pages::PageError(error).into_response())?;
        let Some((record, user)) = found else {
            return Err(to_sign_in());
        };
        let mut principal = Principal::from_user(&user);
        principal.mfa_setup_required = mfa_setup_required(state, &user);
        principal.csrf = Some(record.csrf.clone());
        crate::gateway::record_user(user.id);
        let path = parts.uri.path();
        if !SETUP_PATHS.contains(&path) {
            if principal.password_change_required {
                return Err(Redirect::to("/account/password").into_response());
            }
            if principal.mfa_setup_required {
                return Err(Redirect::to("/account/mfa").into_response());
            }
        }
        Ok(Session { principal, record, user })
    }
}

/// Starts a session for `user` at `stage` and returns the cookie's value.
/// A new id is made at each stage, so an id seen before sign-in is useless after.
pub async fn start(
    state: &AppState,
    user: &User,
    stage: SessionStage,
    auth_time: i64,
) -> Result<(String, SessionRecord), ApiError> {
    let id = crate::random_token(32);
    let now = state.now();
    let lifetime = match stage {
        // The second factor must follow the password soon.
        SessionStage::Mfa => 300,
        SessionStage::Active => state.config.session_seconds,
    };
    let record = SessionRecord {
        id_hash: crate::sha256_hex(&id),
        user_id: user.id,
        csrf: crate::random_token(24),
        stage,
        auth_time,
        created_at: now,
        last_seen_at: now,
        expires_at: now + lifetime,
    };
    state.store.create_session(&record).await?;
    Ok((id, record))
}

/// Ends the request's session, if any; returns its user.
pub async fn end(state: &AppState, headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(id) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let id_hash = crate::sha256_hex(id);
    let record = state.store.session(&id_hash).await?;
    state.sessions.forget(&id_hash);
    state.store.delete_session(&id_hash).await?;
    Ok(record.map(|r| r.user_id))
}

/// Builds the `Set-Cookie` value of a session; an empty value with age 0 deletes it.
pub fn session_cookie(value: &str, max_age: i64) -> Result<HeaderValue, ApiError> {
    set_cookie(SESSION_COOKIE, value, max_age, "Lax")
}

fn set_cookie(name: &str, value: &str, max_age: i64, same_site: &str) -> Result<HeaderValue, ApiError> {
    let cookie = format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite={same_site}");
    HeaderValue::from_str(&cookie).map_err(|e| ApiError::Internal(anyhow::anyhow!("invalid cookie: {e}")))
}

/// Returns the form token of a browser without a session: the one in its
/// form cookie, or a new one with the `Set-Cookie` value that stores it.
pub fn anonymous_form_token(headers: &HeaderMap) -> Result<(String, Option<HeaderValue>), ApiError> {
    if let Some(token) = cookie(headers, FORM_COOKIE)
        .filter(|t| t.len() >= 32 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Ok((token.to_string(), None));
    }
    let token = crate::random_token(24);
    let header = set_cookie(FORM_COOKIE, &token, 86_400, "Strict")?;
    Ok((token, Some(header)))
}

/// Adds the form token to every POST form in `html`: a hidden field, or
/// for a multipart form a query parameter of its action, so that the
/// check need not parse file uploads.
pub fn with_form_tokens(html: &str, token: &str) -> String {
    let mut out = String::with_capacity(html.len() + 128);
    let mut rest = html;
    while let Some(start) = rest.find("<form method=\"post\"") {
        let Some(end) = rest[start..].find('>').map(|e| start + e) else {
            break;
        };
        let tag = &rest[start..end];
        out.push_str(&rest[..start]);
        if tag.contains("multipart/form-data") {
            let with_query = match tag.find("action=\"") {
                Some(at) => {
                    let value_start = at + "action=\"".len();
                    let value_end = tag[value_start..].find('"').map_or(tag.len(), |e| value_start + e);
                    let separator = if tag[value_start..value_end].contains('?') { "&amp;" } else { "?" };
                    format!("{}{separator}{FORM_FIELD}={token}{}", &tag[..value_end], &tag[value_end..])
                }
                None => tag.to_string(),
            };
            out.push_str(&with_query);
            out.push('>');
        } else {
            out.push_str(tag);
            out.push('>');
            out.push_str(&format!("<input type=\"hidden\" name=\"{FORM_FIELD}\" value=\"{token}\">"));
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Most bytes of a form body read to find the token.
const FORM_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Refuses a POST form that does not come from this site: the Origin, when
/// sent, must be this site, and the form must carry the token of the
/// browser's session or form cookie.
pub async fn protect_forms(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    if !same_origin(request.headers(), request.uri()) {
        let error = ApiError::Forbidden("cross-site form posts are not accepted".into());
        return crate::pages::PageError(error).into_response();
    }
    let (parts, body) = request.into_parts();
    let multipart = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/"));
    let (supplied, body) = if multipart {
        let query = parts.uri.query().unwrap_or("");
        (form_value(query.as_bytes(), FORM_FIELD), axum::body::Body::new(body))
    } else {
        let bytes = match axum::body::to_bytes(body, FORM_BODY_LIMIT).await {
            Ok(bytes) => bytes,
            Err(_) => {
                return crate::pages::PageError(ApiError::PayloadTooLarge { limit: FORM_BODY_LIMIT }).into_response();
            }
        };
        (form_value(&bytes, FORM_FIELD), axum::body::Body::from(bytes))
    };
    let mut expected = Vec::new();
    if let Some(token) = cookie(&parts.headers, FORM_COOKIE) {
        expected.push(token.to_string());
    }
    for stage in [SessionStage::Active, SessionStage::Mfa] {
        match current(&state, &parts.headers, stage).await {
            Ok(Some((record, _))) => expected.push(record.csrf),
            Ok(None) => {}
            Err(error) => return crate::pages::PageError(error).into_response(),
        }
    }
    let matched = supplied
        .as_deref()
        .is_some_and(|s| !s.is_empty() && expected.iter().any(|e| constant_time_eq(e.as_bytes(), s.as_bytes())));
    if !matched {
        tracing::warn!(
            target: "learntrac::security",
            path = parts.uri.path(),
            token = if supplied.is_some() { "wrong" } else { "missing" },
            "form rejected: its token does not match the browser's session"
        );
        return crate::pages::PageError(ApiError::Forbidden(
            "this form has expired or was not sent from LearnTrac; reload the page and submit it again".into(),
        ))
        .into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Returns whether the Origin header, when sent, names this site; a mismatch is logged.
fn same_origin(headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string));
    let expected = authority.map(|a| format!("https://{a}"));
    let origin = origin.to_str().unwrap_or("");
    if expected.as_deref() == Some(origin) {
        return true;
    }
    tracing::warn!(target: "learntrac::security", origin, expected = expected.as_deref().unwrap_or("-"), "cross-site form post rejected");
    false
}

/// Returns the first value of `name` in a URL-encoded form.
fn form_value(encoded: &[u8], name: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(encoded).ok()?;
    pairs.into_iter().find(|(key, _)| key == name).map(|(_, value)| value)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_post_form_gets_the_token() {
        let html = "<form method=\"post\" action=\"/a\"><input name=\"x\"></form>\
                    <form method=\"get\" action=\"/s\"></form>\
                    <form method=\"post\" action=\"/library\" enctype=\"multipart/form-data\"></form>";
        let out = with_form_tokens(html, "TOK");
        assert!(
            out.starts_with("<form method=\"post\" action=\"/a\"><input type=\"hidden\" name=\"csrf\" value=\"TOK\">")
        );
        assert!(out.contains("<form method=\"get\" action=\"/s\"></form>"));
        assert!(out.contains("action=\"/library?csrf=TOK\" enctype=\"multipart/form-data\">"));
    }

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(form_value(b"a=1&csrf=x%2By", "csrf").as_deref(), Some("x+y"));
        assert_eq!(form_value(b"a=1", "csrf"), None);
    }
}
