//! Administration of the user pool and the OAuth clients, as pages under
//! `/admin` and as API routes under `/api/v1/admin`. Admins and operators
//! may read everything. Operators may also disable, enable, unlock, reset
//! and sign out users. Changing groups, deleting users and managing
//! clients need an admin.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use learntrac_store::{ClientRecord, Group, Store, User};
use serde::Deserialize;
use serde_json::{Value, json};

use super::pool::{self, AdminAction};
use crate::AppState;
use crate::auth::{AdminApiUser, AdminPageUser, Principal};
use crate::error::{ApiError, ApiResult};
use crate::pages::{PageError, PageForm, escape, format_time, layout};

/// Routes under `/api/v1`.
pub fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/admin/users/{id}", get(api_user).patch(api_update_user).delete(api_delete_user))
        .route("/admin/users/{id}/events", get(api_events))
        .route("/admin/users/{id}/{action}", post(api_action))
        .route("/admin/clients", get(api_clients).post(api_create_client))
        .route("/admin/clients/{id}", axum::routing::delete(api_delete_client))
}

/// Page routes; the pages' form protection applies to them.
pub fn page_routes() -> Router<AppState> {
    Router::new()
        .route("/admin/users/{id}", get(user_page))
        .route("/admin/users/{id}/action", post(page_action))
        .route("/admin/clients", get(clients_page).post(page_create_client))
        .route("/admin/clients/{id}/delete", post(page_delete_client))
}

fn require_admin(principal: &Principal) -> Result<(), ApiError> {
    if principal.is(Group::Admins) { Ok(()) } else { Err(ApiError::Forbidden("only admins may do this".into())) }
}

pub fn user_json(user: &User) -> Value {
    json!({
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "groups": user.groups,
        "disabled": user.disabled,
        "email_verified": user.email_verified,
        "mfa": user.mfa_secret.is_some(),
        "external": user.external_subject.is_some(),
        "created_at": user.created_at,
    })
}

async fn find_user(state: &AppState, id: i64) -> Result<User, ApiError> {
    state.store.user_by_id(id).await?.ok_or_else(|| ApiError::NotFound(format!("user {id}")))
}

/// Reads a user id from the path, as the rest of the API does.
async fn user_from_path(state: &AppState, raw: &str) -> Result<User, ApiError> {
    find_user(state, crate::api::parse_id(raw, "user")?).await
}

async fn api_user(
    State(state): State<AppState>,
    AdminApiUser(_): AdminApiUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let user = user_from_path(&state, &id).await?;
    let mut body = user_json(&user);
    body["locked_until"] = state.store.sign_in_failures(&user.email).await?.locked_until.into();
    Ok(Json(body))
}

async fn api_events(
    State(state): State<AppState>,
    AdminApiUser(_): AdminApiUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let user = user_from_path(&state, &id).await?;
    Ok(Json(json!({ "events": state.store.auth_events(user.id, 200).await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserUpdate {
    disabled: Option<bool>,
    groups: Option<Vec<String>>,
}

/// Checks that `actor` may take `action` on `user`: the actor's groups
/// allow it, and no admin locks themselves out.
fn check_action(actor: &Principal, user: &User, action: &AdminAction) -> Result<(), ApiError> {
    if !action.allowed_for_operators() {
        require_admin(actor)?;
    } else if !actor.is(Group::Admins) && !actor.is(Group::Operators) {
        return Err(ApiError::Forbidden("only admins and operators may manage users".into()));
    }
    if user.id == actor.user_id && matches!(action, AdminAction::Disable | AdminAction::Delete) {
        return Err(ApiError::Conflict("you cannot disable or delete your own account".into()));
    }
    if user.id == actor.user_id && *action == AdminAction::ResetMfa {
        return Err(ApiError::Conflict("manage your own second factor at /account/mfa".into()));
    }
    if let AdminAction::SetGroups(groups) = action
        && user.id == actor.user_id
        && !groups.contains(&Group::Admins)
    {
        return Err(ApiError::Conflict("you cannot remove yourself from admins; ask another admin".into()));
    }
    if user.in_group(Group::Admins) && !actor.is(Group::Admins) {
        return Err(ApiError::Forbidden("only admins may manage an admin's account".into()));
    }
    Ok(())
}

/// Takes actions on `user` as `actor` once every one of them is allowed,
/// clears this process's caches, and records each in the audit trail.
async fn act(
    state: &AppState,
    actor: &Principal,
    user: &User,
    actions: &[AdminAction],
) -> Result<Vec<String>, ApiError> {
    for action in actions {
        check_action(actor, user, action)?;
    }
    let mut done = Vec::new();
    for action in actions {
        let code_minutes = state.config.identity.code_minutes;
        let by = format!("user:{}", actor.user_id);
        let summary = pool::apply(&state.store, &state.mailer, user, action, &by, code_minutes, state.now()).await?;
        pool::forget_cached(state);
        let target = format!("user:{}", user.id);
        let actor_id = crate::audit::Actor::User(actor.user_id);
        crate::audit::record(state, actor_id, action.audit_name(), &target, "success", &summary).await;
        tracing::info!(target: "learntrac::security", actor = actor.user_id, user_id = user.id, action = action.audit_name(), "user administered");
        done.push(summary);
    }
    Ok(done)
}

async fn api_update_user(
    State(state): State<AppState>,
    AdminApiUser(actor): AdminApiUser,
    Path(id): Path<String>,
    crate::api::JsonBody(update): crate::api::JsonBody<UserUpdate>,
) -> ApiResult<Json<Value>> {
    let user = user_from_path(&state, &id).await?;
    let mut actions = Vec::new();
    if let Some(groups) = update.groups {
        let action =
            AdminAction::parse("groups", Some(&groups)).map_err(|e| ApiError::bad_request("invalid_groups", e))?;
        actions.push(action);
    }
    if let Some(disabled) = update.disabled {
        actions.push(if disabled { AdminAction::Disable } else { AdminAction::Enable });
    }
    let done = act(&state, &actor, &user, &actions).await?;
    let user = find_user(&state, user.id).await?;
    Ok(Json(json!({ "user": user_json(&user), "done": done })))
}

async fn api_delete_user(
    State(state): State<AppState>,
    AdminApiUser(actor): AdminApiUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let user = user_from_path(&state, &id).await?;
    act(&state, &actor, &user, &[AdminAction::Delete]).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn api_action(
    State(state): State<AppState>,
    AdminApiUser(actor): AdminApiUser,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let action = match action.as_str() {
        "sign-out" | "reset-password" | "reset-mfa" | "unlock" | "disable" | "enable" => {
            AdminAction::parse(&action, None)
        }
        other => {
            Err(format!("unknown action {other:?}; use sign-out, reset-password, reset-mfa, unlock, disable or enable"))
        }
    }
    .map_err(|e| ApiError::bad_request("invalid_action", e))?;
    let user = user_from_path(&state, &id).await?;
    Ok(Json(json!({ "done": act(&state, &actor, &user, &[action]).await? })))
}

/// A client to register.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    pub client_id: String,
    pub name: Option<String>,
    /// Confidential clients get a secret; public clients must use PKCE.
    #[serde(default)]
    pub confidential: bool,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub logout_uris: Vec<String>,
    pub grants: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

const GRANTS: &[&str] = &["authorization_code", "refresh_token", "client_credentials"];
const SCOPES: &[&str] = &[
    "openid",
    "email",
    "profile",
    crate::auth::SCOPE_API,
    crate::auth::SCOPE_ADMIN,
    crate::auth::SCOPE_READ,
    crate::auth::SCOPE_WRITE,
];

/// Checks an address a client registers: https, or http on a loopback host for
/// programs on the user's own machine (RFC 8252), with no fragment.
fn valid_client_uri(uri: &str) -> bool {
    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|prefix| uri.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/'])));
    (uri.starts_with("https://") || loopback)
        && !uri.contains('#')
        && !uri.contains(char::is_whitespace)
        && uri.len() <= 2000
}

/// Checks and stores a client; returns it with its secret, shown only once.
pub async fn register_client(
    store: &Store,
    new: NewClient,
    now: i64,
) -> Result<(ClientRecord, Option<String>), ApiError> {
    let bad = |message: String| ApiError::bad_request("invalid_client_metadata", message);
    let id = new.client_id.trim();
    if id.is_empty()
        || id.len() > 64
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        || !id.bytes().any(|b| b.is_ascii_alphabetic())
    {
        return Err(bad(format!("client_id {id:?} must be 1 to 64 letters, digits, '-', '_' or '.', with a letter")));
    }
    if let Some(grant) = new.grants.iter().find(|g| !GRANTS.contains(&g.as_str())) {
        return Err(bad(format!("grant {grant:?} is not available; use {}", GRANTS.join(", "))));
    }
    if new.grants.is_empty() {
        return Err(bad(format!("give at least one grant: {}", GRANTS.join(", "))));
    }
    if let Some(scope) = new.scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Err(bad(format!("scope {scope:?} is not available; use {}", SCOPES.join(", "))));
    }
    if let Some(uri) = new.redirect_uris.iter().chain(&new.logout_uris).find(|u| !valid_client_uri(u)) {
        return Err(bad(format!(
            "{uri:?} must be an https:// address, or http:// on 127.0.0.1 or localhost, without '#'"
        )));
    }
    let has = |grant: &str| new.grants.iter().any(|g| g == grant);
    if has("authorization_code") && new.redirect_uris.is_empty() {
        return Err(bad("the authorization_code grant needs at least one redirect URI".into()));
    }
    if has("client_credentials") && !new.confidential {
        return Err(bad("client_credentials needs a confidential client (--confidential)".into()));
    }
    let secret = new.confidential.then(|| crate::random_token(32));
    let secret_hash = match &secret {
        Some(secret) => {
            let secret = secret.clone();
            Some(
                tokio::task::spawn_blocking(move || learntrac_identity::password::hash(&secret))
                    .await
                    .map_err(|e| anyhow::anyhow!("hashing task failed: {e}"))??,
            )
        }
        None => None,
    };
    let scopes = if new.scopes.is_empty() { vec!["openid".to_string()] } else { new.scopes };
    let record = ClientRecord {
        client_id: id.to_string(),
        name: new.name.unwrap_or_else(|| id.to_string()),
        secret_hash,
        redirect_uris: new.redirect_uris,
        logout_uris: new.logout_uris,
        grants: new.grants,
        scopes,
        created_at: now,
    };
    store.create_client(&record).await?;
    Ok((record, secret))
}

/// Registers the first-party command-line client, or brings its grants
/// and scopes up to date: public, with the password and refresh grants and
/// the scopes to use the whole API as the signed-in user.
pub async fn ensure_cli_client(store: &Store, now: i64) -> anyhow::Result<()> {
    let record = ClientRecord {
        client_id: crate::auth::CLI_CLIENT_ID.into(),
        name: "LearnTrac command line".into(),
        secret_hash: None,
        redirect_uris: Vec::new(),
        logout_uris: Vec::new(),
        grants: vec!["password".into(), "refresh_token".into()],
        scopes: ["openid", "email", "profile", crate::auth::SCOPE_API, crate::auth::SCOPE_ADMIN]
            .map(String::from)
            .to_vec(),
        created_at: now,
    };
    if let Some(existing) = store.client(crate::auth::CLI_CLIENT_ID).await? {
        if existing.grants != record.grants || existing.scopes != record.scopes {
            store.update_client_grants(&record).await?;
        }
        return Ok(());
    }
    match store.create_client(&record).await {
        // Another process starting at the same time registered it.
        Err(learntrac_store::StoreError::Conflict(_)) | Ok(()) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

fn client_json(client: &ClientRecord) -> Value {
    json!({
        "client_id": client.client_id,
        "name": client.name,
        "confidential": client.secret_hash.is_some(),
        "redirect_uris": client.redirect_uris,
        "logout_uris": client.logout_uris,
        "grants": client.grants,
        "scopes": client.scopes,
        "created_at": client.created_at,
    })
}

async fn api_clients(State(state): State<AppState>, AdminApiUser(_): AdminApiUser) -> ApiResult<Json<Value>> {
    let clients: Vec<Value> = state.store.list_clients().await?.iter().map(client_json).collect();
    Ok(Json(json!({ "clients": clients })))
}

async fn api_create_client(
    State(state): State<AppState>,
    AdminApiUser(actor): AdminApiUser,
    crate::api::JsonBody(new): crate::api::JsonBody<NewClient>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require_admin(&actor)?;
    let (client, secret) = register_client(&state.store, new, state.now()).await?;
    let target = format!("client:{}", client.client_id);
    crate::audit::record(&state, crate::audit::Actor::User(actor.user_id), "client.create", &target, "success", "")
        .await;
    let mut body = client_json(&client);
    if let Some(secret) = secret {
        body["client_secret"] = secret.into();
    }
    Ok((StatusCode::CREATED, Json(body)))
}

async fn delete_client(state: &AppState, actor: &Principal, id: &str) -> Result<(), ApiError> {
    require_admin(actor)?;
    if id == crate::auth::CLI_CLIENT_ID {
        return Err(ApiError::Conflict(format!("{id} is built in; switch it off with password_grant = false")));
    }
    if !state.store.delete_client(id).await? {
        return Err(ApiError::NotFound(format!("client {id}")));
    }
    state.revocations.clear();
    let target = format!("client:{id}");
    crate::audit::record(state, crate::audit::Actor::User(actor.user_id), "client.delete", &target, "success", "")
        .await;
    Ok(())
}

async fn api_delete_client(
    State(state): State<AppState>,
    AdminApiUser(actor): AdminApiUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    delete_client(&state, &actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Shows one user's page: details, actions and sign-in history.
async fn user_page(
    State(state): State<AppState>,
    AdminPageUser(actor): AdminPageUser,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let user = user_from_path(&state, &id).await?;
    Ok(layout(&user.email, Some(&actor), &user_page_body(&state, &actor, &user, None).await?).into_response())
}

/// Renders a user's details with the actions `actor` may take.
async fn user_page_body(
    state: &AppState,
    actor: &Principal,
    user: &User,
    message: Option<&str>,
) -> Result<String, ApiError> {
    let failures = state.store.sign_in_failures(&user.email).await?;
    let locked = if failures.locked_until > state.now() {
        format!("locked until {}", format_time(failures.locked_until))
    } else {
        format!("{} recent failed sign-ins", failures.failures)
    };
    let groups: Vec<&str> = user.groups.iter().map(|g| g.as_str()).collect();
    let allowed = |action: &AdminAction| check_action(actor, user, action).is_ok();
    let button = |action: &str, label: &str| {
        let Ok(parsed) = AdminAction::parse(action, Some(&[])) else {
            return String::new();
        };
        if !allowed(&parsed) {
            return String::new();
        }
        format!(
            "<form method=\"post\" action=\"/admin/users/{}/action\" class=\"inline\"><input type=\"hidden\" name=\"action\" \
             value=\"{action}\"><button type=\"submit\" id=\"action-{action}\">{label}</button></form> ",
            user.id
        )
    };
    let enable = if user.disabled { button("enable", "Enable") } else { button("disable", "Disable") };
    let groups_form = if allowed(&AdminAction::SetGroups(user.groups.clone())) {
        format!(
            "<form method=\"post\" action=\"/admin/users/{}/action\" class=\"narrow\">\
             <input type=\"hidden\" name=\"action\" value=\"groups\">\
             <label>Groups (comma-separated: admins, instructors, students, operators) \
             <input type=\"text\" name=\"groups\" value=\"{}\"></label><button type=\"submit\">Set groups</button></form>",
            user.id,
            escape(&groups.join(", "))
        )
    } else {
        String::new()
    };
    let events = state.store.auth_events(user.id, 100).await?;
    Ok(format!(
        "<h1>{}</h1>{}<dl><dt>Name</dt><dd>{}</dd><dt>Groups</dt><dd>{}</dd><dt>State</dt><dd>{}, {}, {}</dd>\
         <dt>Sign-in</dt><dd id=\"lock-state\">{locked}</dd><dt>Multi-factor</dt><dd>{}</dd></dl>\
         <p>{enable}{}{}{}{}{}</p>{groups_form}<h2>Sign-in history</h2>{}",
        escape(&user.email),
        super::notice(message),
        escape(&user.name),
        escape(&groups.join(", ")),
        if user.disabled { "disabled" } else { "enabled" },
        if user.email_verified { "email verified" } else { "email not verified" },
        if user.external_subject.is_some() { "from the external provider" } else { "built-in" },
        if user.mfa_secret.is_some() { "on" } else { "off" },
        button("unlock", "Unlock"),
        button("sign-out", "Sign out everywhere"),
        button("reset-password", "Force password reset"),
        if user.mfa_secret.is_some() { button("reset-mfa", "Turn off multi-factor sign-in") } else { String::new() },
        button("delete", "Delete"),
        super::account::events_table(&events)
    ))
}

#[derive(Deserialize)]
struct ActionForm {
    action: String,
    groups: Option<String>,
}

async fn page_action(
    State(state): State<AppState>,
    AdminPageUser(actor): AdminPageUser,
    Path(id): Path<String>,
    PageForm(form): PageForm<ActionForm>,
) -> Result<Response, PageError> {
    let groups: Option<Vec<String>> =
        form.groups.map(|g| g.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
    let action =
        AdminAction::parse(&form.action, groups.as_deref()).map_err(|e| ApiError::bad_request("invalid_action", e))?;
    let user = user_from_path(&state, &id).await?;
    let deleted = action == AdminAction::Delete;
    let summary = act(&state, &actor, &user, &[action]).await?.join("; ");
    if deleted {
        return Ok(Redirect::to("/admin").into_response());
    }
    let user = find_user(&state, user.id).await?;
    let message = format!("Done: {summary}.");
    Ok(layout(&user.email, Some(&actor), &user_page_body(&state, &actor, &user, Some(&message)).await?).into_response())
}

async fn clients_page(
    State(state): State<AppState>,
    AdminPageUser(actor): AdminPageUser,
) -> Result<Response, PageError> {
    Ok(layout("Clients", Some(&actor), &clients_body(&state, &actor, None).await?).into_response())
}

/// The form that registers a client, for admins.
const REGISTER_FORM: &str = "<h2>Register a client</h2>\
         <form method=\"post\" action=\"/admin/clients\" class=\"narrow\">\
         <label>Client id <input type=\"text\" name=\"client_id\" required></label>\
         <label>Name <input type=\"text\" name=\"name\"></label>\
         <label><input type=\"checkbox\" name=\"confidential\" value=\"true\"> Confidential (gets a secret)</label>\
         <label>Grants (space-separated) <input type=\"text\" name=\"grants\" value=\"authorization_code refresh_token\"></label>\
         <label>Scopes (space-separated) <input type=\"text\" name=\"scopes\" value=\"openid email profile\"></label>\
         <label>Redirect URIs (space-separated) <input type=\"text\" name=\"redirect_uris\"></label>\
         <label>Logout URIs (space-separated) <input type=\"text\" name=\"logout_uris\"></label>\
         <button type=\"submit\">Register</button></form>";

/// Renders the client list; only admins get the delete buttons and the form.
async fn clients_body(state: &AppState, actor: &Principal, message: Option<String>) -> Result<String, ApiError> {
    let admin = actor.is(Group::Admins);
    let form = if admin { REGISTER_FORM } else { "" };
    let clients = state.store.list_clients().await?;
    let rows: String = clients
        .iter()
        .map(|c| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>\
                 {}</td></tr>",
                escape(&c.client_id),
                escape(&c.name),
                if c.secret_hash.is_some() { "confidential" } else { "public" },
                escape(&c.grants.join(" ")),
                escape(&c.scopes.join(" ")),
                escape(&c.redirect_uris.join(" ")),
                if c.client_id == crate::auth::CLI_CLIENT_ID {
                    "built in".to_string()
                } else if !admin {
                    String::new()
                } else {
                    format!(
                        "<form method=\"post\" action=\"/admin/clients/{}/delete\" class=\"inline\">\
                         <button type=\"submit\">Delete</button></form>",
                        crate::pages::url_encode(&c.client_id)
                    )
                }
            )
        })
        .collect();
    Ok(format!(
        "<h1>OAuth clients</h1>{}<table><tr><th>Client id</th><th>Name</th><th>Type</th><th>Grants</th><th>Scopes</th>\
         <th>Redirect URIs</th><th></th></tr>{rows}</table>{form}",
        message.map(|m| format!("<p class=\"notice\" role=\"status\">{m}</p>")).unwrap_or_default()
    ))
}

#[derive(Deserialize)]
struct ClientForm {
    client_id: String,
    name: Option<String>,
    confidential: Option<String>,
    grants: String,
    scopes: String,
    redirect_uris: String,
    logout_uris: String,
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

async fn page_create_client(
    State(state): State<AppState>,
    AdminPageUser(actor): AdminPageUser,
    PageForm(form): PageForm<ClientForm>,
) -> Result<Response, PageError> {
    require_admin(&actor)?;
    let new = NewClient {
        client_id: form.client_id,
        name: form.name.filter(|n| !n.trim().is_empty()),
        confidential: form.confidential.is_some(),
        redirect_uris: words(&form.redirect_uris),
        logout_uris: words(&form.logout_uris),
        grants: words(&form.grants),
        scopes: words(&form.scopes),
    };
    let (client, secret) = register_client(&state.store, new, state.now()).await?;
    let target = format!("client:{}", client.client_id);
    crate::audit::record(&state, crate::audit::Actor::User(actor.user_id), "client.create", &target, "success", "")
        .await;
    let message = match secret {
        Some(secret) => format!(
            "Registered {}. Its secret, shown only now: <code id=\"client-secret\">{}</code>",
            escape(&client.client_id),
            escape(&secret)
        ),
        None => format!("Registered {}.", escape(&client.client_id)),
    };
    Ok(layout("Clients", Some(&actor), &clients_body(&state, &actor, Some(message)).await?).into_response())
}

async fn page_delete_client(
    State(state): State<AppState>,
    AdminPageUser(actor): AdminPageUser,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    delete_client(&state, &actor, &id).await?;
    Ok(Redirect::to("/admin/clients").into_response())
}

#[cfg(test)]
mod tests {
    use super::valid_client_uri;

    #[test]
    fn client_addresses_are_checked() {
        assert!(valid_client_uri("https://app.example/callback"));
        assert!(valid_client_uri("http://127.0.0.1:8400/cb"));
        assert!(valid_client_uri("http://localhost/cb"));
        assert!(!valid_client_uri("http://app.example/cb"));
        assert!(!valid_client_uri("http://localhost.evil.example/cb"));
        assert!(!valid_client_uri("https://app.example/cb#frag"));
        assert!(!valid_client_uri("javascript:alert(1)"));
    }
}
