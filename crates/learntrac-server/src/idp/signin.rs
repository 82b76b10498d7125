//! Signing in and out in the browser: password, then the second factor
//! when the account has one.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use learntrac_store::{SessionStage, User};
use serde::Deserialize;

use super::pool::{self, Rejection};
use super::{Origin, alert, anonymous_page, limit_sign_in, notice, record_event, safe_next};
use crate::AppState;
use crate::error::ApiError;
use crate::pages::{PageForm, PageQuery, escape};
use crate::sessions;

/// The client id that browser sign-ins are recorded under.
pub const BROWSER: &str = "browser";

#[derive(Deserialize)]
pub struct SignInQuery {
    next: Option<String>,
    notice: Option<String>,
}

fn sign_in_body(next: &str, message: Option<&str>, info: Option<&str>, sign_up: bool) -> String {
    let sign_up = if sign_up { " · <a href=\"/signup\">Create an account</a>" } else { "" };
    format!(
        "<h1>Sign in</h1>{}{}<form method=\"post\" action=\"/login\" class=\"narrow\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label>Email <input type=\"email\" name=\"username\" autocomplete=\"username\" required autofocus></label>\
         <label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\">Sign in</button></form>\
         <p><a href=\"/account/reset\">Forgot your password?</a>{sign_up}</p>",
        notice(info),
        alert(message),
        escape(next)
    )
}

/// Notices other pages may ask the sign-in page to show, by name, so that
/// no link can make it show arbitrary text.
fn known_notice(name: Option<&str>) -> Option<&'static str> {
    match name? {
        "verified" => Some("Your email address is verified. Sign in to continue."),
        "reset" => Some("Your password was changed. Sign in with the new one."),
        "signed-out" => Some("You are signed out."),
        "everywhere" => Some("You are signed out on every device."),
        _ => None,
    }
}

pub async fn sign_in_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageQuery(query): PageQuery<SignInQuery>,
) -> Result<Response, ApiError> {
    let next = safe_next(query.next.as_deref());
    let info = known_notice(query.notice.as_deref());
    let body = sign_in_body(&next, None, info, state.config.identity.self_sign_up);
    anonymous_page(&headers, StatusCode::OK, "Sign in", &body)
}

#[derive(Deserialize)]
pub struct SignInForm {
    username: String,
    password: String,
    next: Option<String>,
}

pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    origin: Origin,
    PageForm(form): PageForm<SignInForm>,
) -> Result<Response, ApiError> {
    let next = safe_next(form.next.as_deref());
    let sign_up = state.config.identity.self_sign_up;
    if let Err(error) = limit_sign_in(&state, origin.peer) {
        let body = sign_in_body(&next, Some(&error.to_string()), None, sign_up);
        let mut response = anonymous_page(&headers, error.status(), "Sign in", &body)?;
        crate::error::add_challenge(&error, &mut response);
        return Ok(response);
    }
    let user = match pool::check_password(&state, &form.username, &form.password, &origin, BROWSER).await? {
        Ok(user) => user,
        Err(Rejection::Unverified) => {
            let target = format!("/signup/confirm?email={}", crate::pages::url_encode(&form.username));
            return Ok(Redirect::to(&target).into_response());
        }
        Err(_) => {
            // The form is not HTTP authentication, so this is a 400 without
            // a WWW-Authenticate challenge.
            let message = "Invalid email or password, or too many attempts; wait a few minutes and try again.";
            let body = sign_in_body(&next, Some(message), None, sign_up);
            return anonymous_page(&headers, StatusCode::BAD_REQUEST, "Sign in", &body);
        }
    };
    if user.mfa_secret.is_some() {
        let (id, _) = sessions::start(&state, &user, SessionStage::Mfa, state.now()).await?;
        let target = format!("/login/mfa?next={}", crate::pages::url_encode(&next));
        return with_session(&id, 300, &target);
    }
    record_event(&state, &origin, Some(user.id), "sign_in", None, BROWSER).await;
    let target = if user.must_change_password { "/account/password".to_string() } else { next };
    signed_in(&state, &user, state.now(), &target).await
}

/// Starts an active session for `user` and redirects to `target`.
pub async fn signed_in(state: &AppState, user: &User, auth_time: i64, target: &str) -> Result<Response, ApiError> {
    let (id, _) = sessions::start(state, user, SessionStage::Active, auth_time).await?;
    with_session(&id, state.config.session_seconds, target)
}

fn with_session(id: &str, max_age: i64, target: &str) -> Result<Response, ApiError> {
    let mut response = Redirect::to(target).into_response();
    response.headers_mut().insert(header::SET_COOKIE, sessions::session_cookie(id, max_age)?);
    Ok(response)
}

fn mfa_body(next: &str, message: Option<&str>) -> String {
    format!(
        "<h1>Second factor</h1>{}<form method=\"post\" action=\"/login/mfa\" class=\"narrow\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label>Code from your authenticator app, or a recovery code \
         <input type=\"text\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required autofocus></label>\
         <button type=\"submit\">Verify</button></form>",
        alert(message),
        escape(next)
    )
}

/// Renders the page of a session between the password and the second factor.
async fn mfa_session_page(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    body: &str,
) -> Result<Response, ApiError> {
    match sessions::current(state, headers, SessionStage::Mfa).await? {
        Some((record, _)) => {
            let html = crate::pages::layout("Second factor", None, body).0;
            Ok((status, axum::response::Html(sessions::with_form_tokens(&html, &record.csrf))).into_response())
        }
        None => Ok(Redirect::to("/login").into_response()),
    }
}

pub async fn mfa_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageQuery(query): PageQuery<SignInQuery>,
) -> Result<Response, ApiError> {
    let next = safe_next(query.next.as_deref());
    mfa_session_page(&state, &headers, StatusCode::OK, &mfa_body(&next, None)).await
}

#[derive(Deserialize)]
pub struct MfaForm {
    code: String,
    next: Option<String>,
}

pub async fn mfa(
    State(state): State<AppState>,
    headers: HeaderMap,
    origin: Origin,
    PageForm(form): PageForm<MfaForm>,
) -> Result<Response, ApiError> {
    let next = safe_next(form.next.as_deref());
    let Some((record, user)) = sessions::current(&state, &headers, SessionStage::Mfa).await? else {
        return Ok(Redirect::to("/login").into_response());
    };
    if let Err(error) = limit_sign_in(&state, origin.peer) {
        return mfa_session_page(&state, &headers, error.status(), &mfa_body(&next, Some(&error.to_string()))).await;
    }
    let locked = state.store.sign_in_failures(&user.email).await?.locked_until > state.now();
    if locked || !super::mfa::check_second_factor(&state, &user, &form.code).await? {
        let reason = if locked { "locked" } else { "wrong_mfa_code" };
        pool::count_failure(&state, &user.email, Some(user.id), &origin, "sign_in", reason, BROWSER).await?;
        let body = mfa_body(&next, Some("The code is wrong or was used already; try the next one."));
        return mfa_session_page(&state, &headers, StatusCode::BAD_REQUEST, &body).await;
    }
    state.store.clear_sign_in_failures(&user.email, state.now()).await?;
    sessions::end(&state, &headers).await?;
    record_event(&state, &origin, Some(user.id), "sign_in", None, BROWSER).await;
    let target = if user.must_change_password { "/account/password".to_string() } else { next };
    signed_in(&state, &user, record.auth_time, &target).await
}

#[derive(Deserialize)]
pub struct SignOutQuery {
    client_id: Option<String>,
    logout_uri: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
}

/// Returns the browser's destination after signing out: `/login`, or an
/// address the named client registered for it.
async fn sign_out_target(state: &AppState, query: &SignOutQuery) -> Result<Result<String, String>, ApiError> {
    let uri = query.logout_uri.as_deref().or(query.post_logout_redirect_uri.as_deref());
    let Some(uri) = uri else {
        return Ok(Ok("/login?notice=signed-out".into()));
    };
    let Some(client_id) = query.client_id.as_deref() else {
        return Ok(Err("a logout address needs client_id, the client that registered it".into()));
    };
    let client = state.store.client(client_id).await?;
    match client {
        Some(client) if client.logout_uris.iter().any(|allowed| allowed == uri) => {
            let target = match query.state.as_deref() {
                Some(value) => format!(
                    "{uri}{}state={}",
                    if uri.contains('?') { '&' } else { '?' },
                    crate::pages::url_encode(value)
                ),
                None => uri.to_string(),
            };
            Ok(Ok(target))
        }
        _ => Ok(Err(format!(
            "{uri:?} is not a registered logout address of client {client_id:?}; an administrator can add it"
        ))),
    }
}

fn hidden(name: &str, value: Option<&str>) -> String {
    value.map(|v| format!("<input type=\"hidden\" name=\"{name}\" value=\"{}\">", escape(v))).unwrap_or_default()
}

/// Asks to confirm signing out, so that a link on another site cannot sign
/// the user out; the form keeps the client's return address.
pub async fn sign_out_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageQuery(query): PageQuery<SignOutQuery>,
) -> Result<Response, ApiError> {
    if let Err(problem) = sign_out_target(&state, &query).await? {
        let body = format!("<h1>Sign out</h1>{}", alert(Some(&problem)));
        return anonymous_page(&headers, StatusCode::BAD_REQUEST, "Sign out", &body);
    }
    let body = format!(
        "<h1>Sign out</h1><form method=\"post\" action=\"/logout\">{}{}{}{}\
         <button type=\"submit\">Sign out</button></form>",
        hidden("client_id", query.client_id.as_deref()),
        hidden("logout_uri", query.logout_uri.as_deref()),
        hidden("post_logout_redirect_uri", query.post_logout_redirect_uri.as_deref()),
        hidden("state", query.state.as_deref()),
    );
    let token = match sessions::current(&state, &headers, SessionStage::Active).await? {
        Some((record, _)) => record.csrf,
        None => return anonymous_page(&headers, StatusCode::OK, "Sign out", &body),
    };
    let html = crate::pages::layout("Sign out", None, &body).0;
    Ok(axum::response::Html(sessions::with_form_tokens(&html, &token)).into_response())
}

/// Ends the browser session at once: it is deleted on the server, so a
/// copy of the cookie stops working too.
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    origin: Origin,
    PageForm(query): PageForm<SignOutQuery>,
) -> Result<Response, ApiError> {
    let target = match sign_out_target(&state, &query).await? {
        Ok(target) => target,
        Err(problem) => {
            let body = format!("<h1>Sign out</h1>{}", alert(Some(&problem)));
            return anonymous_page(&headers, StatusCode::BAD_REQUEST, "Sign out", &body);
        }
    };
    if let Some(user_id) = sessions::end(&state, &headers).await? {
        record_event(&state, &origin, Some(user_id), "sign_out", None, query.client_id.as_deref().unwrap_or(BROWSER))
            .await;
    }
    let mut response = Redirect::to(&target).into_response();
    response.headers_mut().insert(header::SET_COOKIE, sessions::session_cookie("", 0)?);
    Ok(response)
}
