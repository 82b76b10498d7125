//! The user pool's rules shared by the forms, the token endpoint, the
//! administration API and the command line: password checks with lockout,
//! mailed codes, and administrative actions on users.

use std::time::{Duration, Instant};

use learntrac_identity::mail::Mailer;
use learntrac_store::{CodeCheck, Group, Store, User};

use super::{Origin, record_event};
use crate::AppState;
use crate::error::ApiError;

/// The reason a password check failed. Only the log and the user's event
/// history record it. The client gets the same response for every reason,
/// except that an unverified address is named once the password matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    UnknownAccount,
    WrongPassword,
    Locked,
    Disabled,
    Unverified,
    /// An administrator forced a password reset.
    ResetRequired,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::UnknownAccount => "unknown_account",
            Rejection::WrongPassword => "wrong_password",
            Rejection::Locked => "locked",
            Rejection::Disabled => "account_disabled",
            Rejection::Unverified => "email_not_verified",
            Rejection::ResetRequired => "password_reset_required",
        }
    }
}

/// The stored hash of an account without a usable password: one an
/// administrator reset, or one known from an external provider.
pub const NO_PASSWORD: &str = "!";

/// Checks an email and password. The same Argon2 work is done whether or
/// not the account exists, and failures are counted per address whether or
/// not it exists, so neither timing nor lockout reveals which addresses have
/// accounts. From the `slow_after_failures`-th failure each attempt waits a
/// little longer; the `lock_after_failures`-th locks the address for
/// `lock_minutes`, during which even the right password fails.
pub async fn check_password(
    state: &AppState,
    email: &str,
    password: &str,
    origin: &Origin,
    client_id: &str,
) -> Result<Result<User, Rejection>, ApiError> {
    let settings = &state.config.identity;
    let now = state.now();
    let failures = state.store.sign_in_failures(email).await?;
    if failures.failures >= settings.slow_after_failures {
        let extra = failures.failures - settings.slow_after_failures + 1;
        tokio::time::sleep(Duration::from_millis(500 * extra.clamp(1, 10) as u64)).await;
    }
    let user = state.store.user_by_email(email).await?;
    let stored = user.as_ref().map(|u| u.password_hash.clone()).filter(|h| h != NO_PASSWORD);
    let candidate = password.to_string();
    let matched =
        tokio::task::spawn_blocking(move || learntrac_identity::password::verify(&candidate, stored.as_deref()))
            .await
            .map_err(|e| anyhow::anyhow!("password check task failed: {e}"))?;
    let rejection = match &user {
        None => Some(Rejection::UnknownAccount),
        Some(_) if failures.locked_until > now => Some(Rejection::Locked),
        Some(u) if u.password_hash == NO_PASSWORD => Some(Rejection::ResetRequired),
        Some(_) if !matched => Some(Rejection::WrongPassword),
        Some(u) if u.disabled => Some(Rejection::Disabled),
        Some(u) if !u.email_verified => Some(Rejection::Unverified),
        Some(_) => None,
    };
    let user_id = user.as_ref().map(|u| u.id);
    match (rejection, user) {
        (None, Some(user)) => {
            state.store.clear_sign_in_failures(email, now).await?;
            state.metrics.observe_sign_in("success");
            if let Err(error) = crate::alerts::check_admin_address(state, &user, &origin.client).await {
                tracing::error!(user_id = user.id, error = format!("{error:#}"), "cannot check the sign-in address");
            }
            Ok(Ok(user))
        }
        (rejection, _) => {
            let rejection = rejection.unwrap_or(Rejection::UnknownAccount);
            count_failure(state, email, user_id, origin, "sign_in", rejection.as_str(), client_id).await?;
            Ok(Err(rejection))
        }
    }
}

/// Counts a failed sign-in (a password or a second factor) against the
/// address, records the event, and locks the address at the threshold.
pub async fn count_failure(
    state: &AppState,
    email: &str,
    user_id: Option<i64>,
    origin: &Origin,
    event: &str,
    reason: &str,
    client_id: &str,
) -> Result<(), ApiError> {
    let settings = &state.config.identity;
    let now = state.now();
    let before = state.store.sign_in_failures(email).await?;
    let after = state
        .store
        .record_sign_in_failure(
            email,
            now,
            settings.failure_window_minutes * 60,
            settings.lock_after_failures,
            settings.lock_minutes * 60,
        )
        .await?;
    state.metrics.observe_sign_in(reason);
    state.alerts.observe_failed_password(state, &origin.client, Instant::now());
    if let Some(user_id) = user_id {
        state.alerts.observe_failed_sign_in(state, user_id, Instant::now());
    }
    record_event(state, origin, user_id, event, Some(reason), client_id).await;
    if after.locked_until > now && before.locked_until <= now {
        tracing::warn!(target: "learntrac::security", user_id, failures = after.failures, "account locked");
        record_event(state, origin, user_id, "lockout", Some("too_many_failures"), client_id).await;
    }
    Ok(())
}

/// The purpose of a mailed code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodePurpose {
    VerifyEmail,
    ResetPassword,
}

impl CodePurpose {
    fn as_str(self) -> &'static str {
        match self {
            CodePurpose::VerifyEmail => "verify",
            CodePurpose::ResetPassword => "reset",
        }
    }
}

/// Tries allowed per mailed code.
const CODE_ATTEMPTS: i64 = 5;

/// Makes an 8-digit code, stores its hash and mails it to `user`.
pub async fn mail_code(
    store: &Store,
    mailer: &Mailer,
    user: &User,
    purpose: CodePurpose,
    minutes: i64,
    now: i64,
) -> anyhow::Result<()> {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("the random number generator failed"))?;
    let code = format!("{:08}", u64::from_le_bytes(bytes) % 100_000_000);
    store.put_mailed_code(user.id, purpose.as_str(), &crate::sha256_hex(&code), now + minutes * 60).await?;
    let (subject, what) = match purpose {
        CodePurpose::VerifyEmail => ("Verify your email address", "confirm your email address"),
        CodePurpose::ResetPassword => ("Reset your password", "choose a new password"),
    };
    let body = format!(
        "Hello {},\n\nyour LearnTrac code to {what} is:\n\n    {code}\n\nIt works once, for {minutes} minutes. \
         If you did not ask for it, you can ignore this message.\n",
        user.name
    );
    mailer.send(&user.email, subject, &body).await
}

/// Runs `job`, which sends mail, after the response: neither the time the
/// mail server takes nor its failure may tell the client whether an
/// address has an account. A failure is logged with the user id.
pub fn mail_in_background(
    user_id: i64,
    what: &'static str,
    job: impl Future<Output = anyhow::Result<()>> + Send + 'static,
) {
    tokio::spawn(async move {
        if let Err(error) = job.await {
            tracing::error!(user_id, what, error = format!("{error:#}"), "cannot send mail");
        }
    });
}

/// Mails a code to `user` in the background; see [`mail_in_background`].
pub fn mail_code_in_background(state: &AppState, user: User, purpose: CodePurpose) {
    let (store, mailer) = (state.store.clone(), state.mailer.clone());
    let (minutes, now) = (state.config.identity.code_minutes, state.now());
    mail_in_background(user.id, purpose.as_str(), async move {
        mail_code(&store, &mailer, &user, purpose, minutes, now).await
    });
}

/// Checks a mailed code; a match uses it up.
pub async fn check_code(
    store: &Store,
    user_id: i64,
    purpose: CodePurpose,
    code: &str,
    now: i64,
) -> Result<CodeCheck, ApiError> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    Ok(store.check_mailed_code(user_id, purpose.as_str(), &crate::sha256_hex(&code), now, CODE_ATTEMPTS).await?)
}

/// An administrative action on a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminAction {
    Disable,
    Enable,
    Delete,
    SetGroups(Vec<Group>),
    /// Replaces the password with none and mails a reset code.
    ForceReset,
    SignOut,
    Unlock,
    /// Turns TOTP off and ends every session, for a user who lost the
    /// authenticator and the recovery codes. A group that requires TOTP
    /// makes the user set it up again at the next sign-in.
    ResetMfa,
}

impl AdminAction {
    /// Returns the action's name in the audit trail.
    pub fn audit_name(&self) -> &'static str {
        match self {
            AdminAction::Disable => "user.disable",
            AdminAction::Enable => "user.enable",
            AdminAction::Delete => "user.delete",
            AdminAction::SetGroups(_) => "user.groups",
            AdminAction::ForceReset => "user.force_reset",
            AdminAction::SignOut => "user.sign_out",
            AdminAction::Unlock => "user.unlock",
            AdminAction::ResetMfa => "user.reset_mfa",
        }
    }

    /// Returns whether operators may take it; changing groups and deleting need an admin.
    pub fn allowed_for_operators(&self) -> bool {
        !matches!(self, AdminAction::Delete | AdminAction::SetGroups(_))
    }

    /// Parses the name used by the API and the command line.
    pub fn parse(name: &str, groups: Option<&[String]>) -> Result<AdminAction, String> {
        Ok(match name {
            "disable" => AdminAction::Disable,
            "enable" => AdminAction::Enable,
            "delete" => AdminAction::Delete,
            "reset-password" => AdminAction::ForceReset,
            "sign-out" => AdminAction::SignOut,
            "unlock" => AdminAction::Unlock,
            "reset-mfa" => AdminAction::ResetMfa,
            "groups" => {
                let names = groups.ok_or("groups needs the list of groups")?;
                AdminAction::SetGroups(names.iter().map(|g| g.trim().parse()).collect::<Result<Vec<Group>, _>>()?)
            }
            other => {
                return Err(format!(
                    "unknown action {other:?}; use disable, enable, delete, groups, reset-password, reset-mfa, sign-out or unlock"
                ));
            }
        })
    }
}

/// Applies `action` to `user` as `actor` (`user:ID` or `cli`), records it in
/// the user's auth events, and returns a sentence saying what was done.
pub async fn apply(
    store: &Store,
    mailer: &Mailer,
    user: &User,
    action: &AdminAction,
    actor: &str,
    code_minutes: i64,
    now: i64,
) -> anyhow::Result<String> {
    let summary = apply_action(store, mailer, user, action, code_minutes, now).await?;
    if *action != AdminAction::Delete {
        let event = learntrac_store::AuthEvent {
            user_id: Some(user.id),
            at: now,
            event: action.audit_name().replace("user.", "admin_"),
            outcome: "success".into(),
            reason: format!("by {actor}"),
            client_address: String::new(),
            user_agent: String::new(),
            client_id: String::new(),
        };
        store.insert_auth_event(&event).await?;
    }
    Ok(summary)
}

async fn apply_action(
    store: &Store,
    mailer: &Mailer,
    user: &User,
    action: &AdminAction,
    code_minutes: i64,
    now: i64,
) -> anyhow::Result<String> {
    Ok(match action {
        AdminAction::Disable => {
            store.set_disabled(user.id, true).await?;
            format!("disabled {} and ended their sessions", user.email)
        }
        AdminAction::Enable => {
            store.set_disabled(user.id, false).await?;
            format!("enabled {}", user.email)
        }
        AdminAction::Delete => {
            store.delete_user(user.id).await?;
            format!("deleted {}", user.email)
        }
        AdminAction::SetGroups(groups) => {
            store.set_groups(user.id, groups).await?;
            // Tokens carry the groups, so the old ones must go.
            store.sign_out_everywhere(user.id).await?;
            let names: Vec<&str> = groups.iter().map(|g| g.as_str()).collect();
            format!(
                "set the groups of {} to {}",
                user.email,
                if names.is_empty() { "none".into() } else { names.join(", ") }
            )
        }
        AdminAction::ForceReset => {
            // The code goes out first, so a mail failure leaves the password as it was.
            mail_code(store, mailer, user, CodePurpose::ResetPassword, code_minutes, now).await?;
            store.force_password_reset(user.id).await?;
            format!("removed the password of {}, ended their sessions and mailed a reset code", user.email)
        }
        AdminAction::SignOut => {
            store.sign_out_everywhere(user.id).await?;
            format!("signed {} out everywhere", user.email)
        }
        AdminAction::ResetMfa if user.mfa_secret.is_none() => {
            format!("{} has no multi-factor sign-in; nothing changed", user.email)
        }
        AdminAction::ResetMfa => {
            store.set_mfa(user.id, None).await?;
            store.sign_out_everywhere(user.id).await?;
            format!("turned off multi-factor sign-in for {} and ended their sessions", user.email)
        }
        AdminAction::Unlock => {
            let was_locked = store.clear_sign_in_failures(&user.email, now).await?;
            if was_locked { format!("unlocked {}", user.email) } else { format!("{} was not locked", user.email) }
        }
    })
}

/// Forgets every cached session and token check in this process, after
/// an action that changes who may do what.
pub fn forget_cached(state: &AppState) {
    state.sessions.clear();
    state.revocations.clear();
}
