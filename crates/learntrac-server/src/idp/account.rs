//! The user's own account: sign-up with a mailed code, the account page,
//! changing and resetting the password, and signing out everywhere.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use learntrac_store::CodeCheck;
use serde::Deserialize;

use super::pool::{self, CodePurpose};
use super::signin::BROWSER;
use super::{Origin, alert, anonymous_page, hash_password, limit_sign_in, notice, record_event};
use crate::AppState;
use crate::auth::{PageUser, Principal};
use crate::error::ApiError;
use crate::pages::{PageForm, PageQuery, escape, format_time, layout, url_encode};

/// Shows the user's profile, second-factor state and recent sign-ins.
pub async fn account_page(State(state): State<AppState>, PageUser(user): PageUser) -> Result<Html<String>, ApiError> {
    let stored = state.store.user_by_id(user.user_id).await?.ok_or_else(|| ApiError::NotFound("user".into()))?;
    let mfa = if stored.mfa_secret.is_some() {
        let left = state.store.unused_recovery_codes(user.user_id).await?;
        format!("on, {left} recovery codes left · <a href=\"/account/mfa\">Manage</a>")
    } else {
        "off · <a href=\"/account/mfa\">Set up</a>".to_string()
    };
    let events = state.store.auth_events(user.user_id, 20).await?;
    let body = format!(
        "<h1>Your account</h1><dl><dt>Name</dt><dd>{}</dd><dt>Email</dt><dd>{}</dd><dt>Groups</dt><dd>{}</dd>\
         <dt>Multi-factor sign-in</dt><dd id=\"mfa-state\">{mfa}</dd></dl>\
         <p><a href=\"/account/password\">Change password</a></p>\
         <form method=\"post\" action=\"/account/sign-out-everywhere\"><button type=\"submit\" id=\"sign-out-everywhere\">\
         Sign out everywhere</button></form><h2>Recent activity</h2>{}",
        escape(&user.name),
        escape(&user.email),
        escape(&user.groups.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(", ")),
        events_table(&events)
    );
    Ok(layout("Your account", Some(&user), &body))
}

/// Formats a table of auth events, for the account page and the administration screens.
pub fn events_table(events: &[learntrac_store::AuthEvent]) -> String {
    if events.is_empty() {
        return "<p>No sign-in activity yet.</p>".into();
    }
    let rows: String = events
        .iter()
        .map(|e| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                format_time(e.at),
                escape(&e.event),
                escape(&e.outcome),
                escape(&e.reason),
                escape(&e.client_address),
                escape(&e.user_agent)
            )
        })
        .collect();
    format!(
        "<table class=\"events\"><tr><th>Time</th><th>Event</th><th>Outcome</th><th>Reason</th><th>Address</th>\
         <th>Browser</th></tr>{rows}</table>"
    )
}

fn password_form(state: &AppState, user: &Principal, message: Option<&str>) -> Html<String> {
    let reason = if user.password_change_required {
        "<p>Your password was set for one use only. Choose a new one to continue.</p>"
    } else {
        ""
    };
    layout(
        "Change password",
        Some(user),
        &format!(
            "<h1>Change password</h1>{reason}{}<form method=\"post\" action=\"/account/password\" class=\"narrow\">\
             <label>Current password <input type=\"password\" name=\"current\" autocomplete=\"current-password\" required></label>\
             <label>New password <input type=\"password\" name=\"new_password\" autocomplete=\"new-password\" required></label>\
             <p class=\"hint\">{}</p><button type=\"submit\">Change password</button></form>",
            alert(message),
            escape(&state.config.identity.password_policy.describe())
        ),
    )
}

pub async fn password_page(State(state): State<AppState>, PageUser(user): PageUser) -> Html<String> {
    password_form(&state, &user, None)
}

#[derive(Deserialize)]
pub struct PasswordForm {
    current: String,
    new_password: String,
}

pub async fn change_password(
    State(state): State<AppState>,
    origin: Origin,
    PageUser(principal): PageUser,
    PageForm(form): PageForm<PasswordForm>,
) -> Result<Response, ApiError> {
    let fail =
        |message: &str| (StatusCode::BAD_REQUEST, password_form(&state, &principal, Some(message))).into_response();
    if let Err(error) = limit_sign_in(&state, origin.peer) {
        return Ok((error.status(), password_form(&state, &principal, Some(&error.to_string()))).into_response());
    }
    let user = match pool::check_password(&state, &principal.email, &form.current, &origin, BROWSER).await? {
        Ok(user) => user,
        Err(_) => return Ok(fail("The current password is wrong.")),
    };
    if let Err(problem) = state.config.identity.password_policy.check(&form.new_password, Some(&user.email)) {
        return Ok(fail(&format!("{}.", capitalise(&problem))));
    }
    if form.new_password == form.current {
        return Ok(fail("The new password must differ from the current one."));
    }
    let hash = hash_password(&form.new_password).await?;
    state.store.set_password(user.id, &hash).await?;
    // Every other session and token of the user ends with the old password.
    state.store.sign_out_everywhere(user.id).await?;
    pool::forget_cached(&state);
    record_event(&state, &origin, Some(user.id), "password_change", None, BROWSER).await;
    let target = format!("user:{}", user.id);
    crate::audit::record(&state, crate::audit::Actor::User(user.id), "user.password_change", &target, "success", "")
        .await;
    let updated = learntrac_store::User { must_change_password: false, ..user };
    super::signin::signed_in(&state, &updated, state.now(), "/account").await
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// Ends every session and token of the signed-in user, this one included.
pub async fn sign_out_everywhere(
    State(state): State<AppState>,
    origin: Origin,
    PageUser(user): PageUser,
) -> Result<Response, ApiError> {
    state.store.sign_out_everywhere(user.user_id).await?;
    pool::forget_cached(&state);
    record_event(&state, &origin, Some(user.user_id), "sign_out_everywhere", None, BROWSER).await;
    let mut response = Redirect::to("/login?notice=everywhere").into_response();
    response.headers_mut().insert(axum::http::header::SET_COOKIE, crate::sessions::session_cookie("", 0)?);
    Ok(response)
}

fn sign_up_body(state: &AppState, message: Option<&str>, email: &str, name: &str) -> String {
    format!(
        "<h1>Create an account</h1>{}<form method=\"post\" action=\"/signup\" class=\"narrow\">\
         <label>Name <input type=\"text\" name=\"name\" autocomplete=\"name\" value=\"{}\" required maxlength=\"100\"></label>\
         <label>Email <input type=\"email\" name=\"email\" autocomplete=\"email\" value=\"{}\" required></label>\
         <label>Password <input type=\"password\" name=\"password\" autocomplete=\"new-password\" required></label>\
         <p class=\"hint\">{}</p><button type=\"submit\">Create account</button></form>\
         <p>Already have an account? <a href=\"/login\">Sign in</a></p>",
        alert(message),
        escape(name),
        escape(email),
        escape(&state.config.identity.password_policy.describe())
    )
}

fn sign_up_closed() -> ApiError {
    ApiError::Forbidden("this server does not take sign-ups; ask an administrator for an account".into())
}

pub async fn sign_up_page(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if !state.config.identity.self_sign_up {
        return Ok(crate::pages::PageError(sign_up_closed()).into_response());
    }
    anonymous_page(&headers, StatusCode::OK, "Create an account", &sign_up_body(&state, None, "", ""))
}

#[derive(Deserialize)]
pub struct SignUpForm {
    name: String,
    email: String,
    password: String,
}

/// Creates an unverified account and mails a code. An address that has an
/// account already gets the same response, so that sign-up does not reveal
/// who has an account. An unverified account takes the new name and
/// password and gets a new code, so that a person who signed up first with
/// somebody else's address keeps no access once its owner verifies it.
pub async fn sign_up(
    State(state): State<AppState>,
    headers: HeaderMap,
    origin: Origin,
    PageForm(form): PageForm<SignUpForm>,
) -> Result<Response, ApiError> {
    if !state.config.identity.self_sign_up {
        return Ok(crate::pages::PageError(sign_up_closed()).into_response());
    }
    let email = form.email.trim().to_lowercase();
    let name = form.name.trim();
    let problem = if let Err(problem) = crate::validate_email(&email) {
        Some(format!("{}.", capitalise(&problem)))
    } else if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        Some("Give a name of 1 to 100 characters.".to_string())
    } else {
        state
            .config
            .identity
            .password_policy
            .check(&form.password, Some(&email))
            .err()
            .map(|p| format!("{}.", capitalise(&p)))
    };
    if let Some(problem) = problem {
        let body = sign_up_body(&state, Some(&problem), &email, name);
        return anonymous_page(&headers, StatusCode::BAD_REQUEST, "Create an account", &body);
    }
    let now = state.now();
    let hash = hash_password(&form.password).await?;
    match state.store.create_unverified_user(&email, name, &hash, now).await {
        Ok(user) => {
            record_event(&state, &origin, Some(user.id), "sign_up", None, BROWSER).await;
            pool::mail_code_in_background(&state, user, CodePurpose::VerifyEmail);
        }
        Err(learntrac_store::StoreError::Conflict(_)) => {
            if let Some(existing) = state.store.user_by_email(&email).await? {
                record_event(&state, &origin, Some(existing.id), "sign_up", Some("address_taken"), BROWSER).await;
                if !existing.email_verified {
                    state.store.replace_unverified_user(existing.id, name, &hash).await?;
                    let renamed = learntrac_store::User { name: name.to_string(), password_hash: hash, ..existing };
                    pool::mail_code_in_background(&state, renamed, CodePurpose::VerifyEmail);
                } else {
                    let body = "Someone tried to create a LearnTrac account with this address, which already has \
                                one. If it was you, sign in, or reset your password from the sign-in page.\n";
                    let mailer = state.mailer.clone();
                    pool::mail_in_background(existing.id, "address taken", async move {
                        mailer.send(&existing.email, "Your LearnTrac account", body).await
                    });
                }
            }
        }
        Err(error) => return Err(error.into()),
    }
    Ok(Redirect::to(&format!("/signup/confirm?email={}", url_encode(&email))).into_response())
}

#[derive(Deserialize)]
pub struct EmailQuery {
    email: Option<String>,
}

fn confirm_body(email: &str, message: Option<&str>) -> String {
    format!(
        "<h1>Verify your email address</h1>{}<p>We sent a code to the address below. Enter it with the password \
         you chose to finish.</p><form method=\"post\" action=\"/signup/confirm\" class=\"narrow\">\
         <label>Email <input type=\"email\" name=\"email\" value=\"{}\" required></label>\
         <label>Code <input type=\"text\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required></label>\
         <label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\">Verify</button></form>",
        alert(message),
        escape(email)
    )
}

pub async fn confirm_page(headers: HeaderMap, PageQuery(query): PageQuery<EmailQuery>) -> Result<Response, ApiError> {
    let email = query.email.unwrap_or_default();
    anonymous_page(&headers, StatusCode::OK, "Verify your email address", &confirm_body(&email, None))
}

#[derive(Deserialize)]
pub struct ConfirmForm {
    email: String,
    code: String,
    password: String,
}

/// Verifies an address with the mailed code and the password chosen at
/// sign-up. The password binds the code to the person who signed up last
/// and can read the mail.
pub async fn confirm(
    State(state): State<AppState>,
    headers: HeaderMap,
    origin: Origin,
    PageForm(form): PageForm<ConfirmForm>,
) -> Result<Response, ApiError> {
    let page = |status: StatusCode, message: &str| {
        anonymous_page(&headers, status, "Verify your email address", &confirm_body(&form.email, Some(message)))
    };
    if let Err(error) = limit_sign_in(&state, origin.peer) {
        return page(error.status(), &error.to_string());
    }
    let user = state.store.user_by_email(&form.email).await?.filter(|u| !u.email_verified);
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let candidate = form.password.clone();
    let password_matches =
        tokio::task::spawn_blocking(move || learntrac_identity::password::verify(&candidate, stored.as_deref()))
            .await
            .map_err(|e| anyhow::anyhow!("password check task failed: {e}"))?;
    let check = match &user {
        Some(user) if password_matches => {
            pool::check_code(&state.store, user.id, CodePurpose::VerifyEmail, &form.code, state.now()).await?
        }
        _ => CodeCheck::Missing,
    };
    let Some(user) = user.filter(|_| check == CodeCheck::Accepted) else {
        if let Some(user) = state.store.user_by_email(&form.email).await? {
            let reason = if password_matches { "wrong_code" } else { "wrong_password" };
            record_event(&state, &origin, Some(user.id), "email_verification", Some(reason), BROWSER).await;
        }
        let message = "The code or the password is wrong, or the code expired. Sign up again with the same address \
                       and password to get a new code.";
        return page(StatusCode::BAD_REQUEST, message);
    };
    // A sign-up landing since the password check replaced the password;
    // the address is verified only for the password that was checked.
    if !state.store.verify_email_with_password(user.id, &user.password_hash).await? {
        return page(StatusCode::BAD_REQUEST, "The account changed meanwhile; sign up again to get a new code.");
    }
    record_event(&state, &origin, Some(user.id), "email_verification", None, BROWSER).await;
    Ok(Redirect::to("/login?notice=verified").into_response())
}

fn forgot_body(message: Option<&str>) -> String {
    format!(
        "<h1>Forgot your password?</h1>{}<form method=\"post\" action=\"/account/reset\" class=\"narrow\">\
         <label>Email <input type=\"email\" name=\"email\" autocomplete=\"username\" required autofocus></label>\
         <button type=\"submit\">Send a code</button></form>",
        alert(message)
    )
}

pub async fn forgot_page(headers: HeaderMap) -> Result<Response, ApiError> {
    anonymous_page(&headers, StatusCode::OK, "Forgot your password?", &forgot_body(None))
}

#[derive(Deserialize)]
pub struct ForgotForm {
    email: String,
}

/// Mails a reset code if the address has an enabled account, and responds
/// the same either way.
pub async fn forgot(
    State(state): State<AppState>,
    headers: HeaderMap,
    origin: Origin,
    PageForm(form): PageForm<ForgotForm>,
) -> Result<Response, ApiError> {
    if let Err(error) = limit_sign_in(&state, origin.peer) {
        return anonymous_page(
            &headers,
            error.status(),
            "Forgot your password?",
            &forgot_body(Some(&error.to_string())),
        );
    }
    if let Some(user) =
        state.store.user_by_email(&form.email).await?.filter(|u| !u.disabled && u.external_subject.is_none())
    {
        record_event(&state, &origin, Some(user.id), "password_reset_requested", None, BROWSER).await;
        pool::mail_code_in_background(&state, user, CodePurpose::ResetPassword);
    }
    Ok(Redirect::to(&format!("/account/reset/confirm?email={}", url_encode(form.email.trim()))).into_response())
}

fn reset_body(state: &AppState, email: &str, message: Option<&str>) -> String {
    format!(
        "<h1>Choose a new password</h1>{}{}<form method=\"post\" action=\"/account/reset/confirm\" class=\"narrow\">\
         <label>Email <input type=\"email\" name=\"email\" value=\"{}\" required></label>\
         <label>Code <input type=\"text\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required></label>\
         <label>New password <input type=\"password\" name=\"new_password\" autocomplete=\"new-password\" required></label>\
         <p class=\"hint\">{}</p><button type=\"submit\">Set password</button></form>",
        notice(Some("If the address has an account, we mailed it a code.")),
        alert(message),
        escape(email),
        escape(&state.config.identity.password_policy.describe())
    )
}

pub async fn reset_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageQuery(query): PageQuery<EmailQuery>,
) -> Result<Response, ApiError> {
    let email = query.email.unwrap_or_default();
    anonymous_page(&headers, StatusCode::OK, "Choose a new password", &reset_body(&state, &email, None))
}

#[derive(Deserialize)]
pub struct ResetForm {
    email: String,
    code: String,
    new_password: String,
}

/// Sets a new password with a mailed code. The code proves the address, so
/// it also verifies it and lifts a lockout; every session and token of the
/// user ends.
pub async fn reset(
    State(state): State<AppState>,
    headers: HeaderMap,
    origin: Origin,
    PageForm(form): PageForm<ResetForm>,
) -> Result<Response, ApiError> {
    let page = |status: StatusCode, message: &str| {
        anonymous_page(&headers, status, "Choose a new password", &reset_body(&state, &form.email, Some(message)))
    };
    if let Err(error) = limit_sign_in(&state, origin.peer) {
        return page(error.status(), &error.to_string());
    }
    // The policy is checked before the account is looked up, so the response
    // to a weak password does not reveal whether the address has an account.
    if let Err(problem) = state.config.identity.password_policy.check(&form.new_password, Some(form.email.trim())) {
        return page(StatusCode::BAD_REQUEST, &format!("{}.", capitalise(&problem)));
    }
    let user = state.store.user_by_email(&form.email).await?;
    let Some(user) = user else {
        return page(StatusCode::BAD_REQUEST, "The code is wrong or expired; ask for a new one.");
    };
    let check = pool::check_code(&state.store, user.id, CodePurpose::ResetPassword, &form.code, state.now()).await?;
    if check != CodeCheck::Accepted || user.disabled {
        record_event(&state, &origin, Some(user.id), "password_reset", Some("wrong_code"), BROWSER).await;
        return page(StatusCode::BAD_REQUEST, "The code is wrong or expired; ask for a new one.");
    }
    let hash = hash_password(&form.new_password).await?;
    state.store.set_password(user.id, &hash).await?;
    state.store.set_email_verified(user.id).await?;
    state.store.sign_out_everywhere(user.id).await?;
    state.store.clear_sign_in_failures(&user.email, state.now()).await?;
    pool::forget_cached(&state);
    record_event(&state, &origin, Some(user.id), "password_reset", None, BROWSER).await;
    Ok(Redirect::to("/login?notice=reset").into_response())
}
