//! The user pool's records beyond the user row: sessions, OAuth clients,
//! authorization codes, refresh-token families, single-use codes, failed
//! sign-ins and the per-user event log.

use sqlx::Row;

use crate::users::{USER_COLUMNS, encode_groups, user_from_row};
use crate::{Group, Result, Store, conflict_or, sql};

/// A browser session, stored by the SHA-256 of the cookie's random id.
#[derive(Clone, Debug)]
pub struct SessionRecord {
    pub id_hash: String,
    pub user_id: i64,
    /// The token every form of this session must send back.
    pub csrf: String,
    pub stage: SessionStage,
    pub auth_time: i64,
    pub created_at: i64,
    pub last_seen_at: i64,
    /// The absolute end of the session.
    pub expires_at: i64,
}

/// How far a browser session has signed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionStage {
    /// The password matched; the second factor is still missing.
    Mfa,
    Active,
}

impl SessionStage {
    fn as_str(self) -> &'static str {
        match self {
            SessionStage::Mfa => "mfa",
            SessionStage::Active => "active",
        }
    }
}

/// A registered OAuth client.
#[derive(Clone, Debug)]
pub struct ClientRecord {
    pub client_id: String,
    pub name: String,
    /// Argon2id hash of the secret of a confidential client; `None` for a
    /// public client, which must use PKCE.
    pub secret_hash: Option<String>,
    pub redirect_uris: Vec<String>,
    /// Addresses `/logout` may send the browser back to.
    pub logout_uris: Vec<String>,
    pub grants: Vec<String>,
    pub scopes: Vec<String>,
    pub created_at: i64,
}

/// An issued authorization code, kept until it is exchanged or expires.
#[derive(Clone, Debug)]
pub struct CodeRecord {
    pub code_hash: String,
    pub client_id: String,
    pub user_id: i64,
    pub redirect_uri: String,
    pub scope: String,
    /// The S256 PKCE challenge.
    pub code_challenge: String,
    pub nonce: String,
    pub auth_time: i64,
    pub expires_at: i64,
    /// The refresh-token family of the tokens the code is exchanged for.
    pub family: String,
}

/// The result of presenting an authorization code.
#[derive(Clone, Debug)]
pub enum CodeUse {
    /// The code was valid and is now used.
    Valid(CodeRecord),
    /// The code had been used; the family of its tokens is now revoked.
    Reused { user_id: i64, client_id: String },
    /// Unknown or expired.
    Invalid,
}

/// A refresh token to store.
#[derive(Clone, Debug)]
pub struct NewRefreshToken<'a> {
    pub token_hash: &'a str,
    pub user_id: i64,
    pub token_version: i64,
    /// Every token rotated from the same sign-in shares the family.
    pub family: &'a str,
    pub client_id: &'a str,
    pub scope: &'a str,
    pub auth_time: i64,
    pub expires_at: i64,
}

/// The grant a valid refresh token carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshGrant {
    pub user_id: i64,
    pub family: String,
    pub client_id: String,
    pub scope: String,
    pub auth_time: i64,
}

/// The result of presenting a refresh token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was valid and is now used.
    Valid(RefreshGrant),
    /// The token had been used before; its family is now revoked.
    Reused { user_id: i64, family: String },
    /// Unknown, expired, revoked, of another client, or issued before the
    /// user's last password change.
    Invalid,
}

/// The result of checking a mailed code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeCheck {
    /// The code matched and is used up.
    Accepted,
    Wrong,
    /// No code was sent, it expired or it was tried too often.
    Missing,
}

/// One entry of a user's sign-in history.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuthEvent {
    pub user_id: Option<i64>,
    pub at: i64,
    /// For example `sign_in`, `token_refresh`, `mfa_enabled`, `sign_out`.
    pub event: String,
    /// `success` or `failure`.
    pub outcome: String,
    /// The reason of a failure (`wrong_password`, `locked`, …); empty on success.
    pub reason: String,
    pub client_address: String,
    pub user_agent: String,
    pub client_id: String,
}

/// Failed sign-ins of one email address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailureState {
    pub failures: i64,
    pub locked_until: i64,
}

fn split(value: String) -> Vec<String> {
    value.split(' ').filter(|v| !v.is_empty()).map(str::to_string).collect()
}

fn session_from_row(row: &sqlx::any::AnyRow) -> Result<SessionRecord> {
    let stage: String = row.try_get("stage")?;
    Ok(SessionRecord {
        id_hash: row.try_get("id_hash")?,
        user_id: row.try_get("user_id")?,
        csrf: row.try_get("csrf")?,
        stage: if stage == "active" { SessionStage::Active } else { SessionStage::Mfa },
        auth_time: row.try_get("auth_time")?,
        created_at: row.try_get("created_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

fn client_from_row(row: &sqlx::any::AnyRow) -> Result<ClientRecord> {
    Ok(ClientRecord {
        client_id: row.try_get("client_id")?,
        name: row.try_get("name")?,
        secret_hash: row.try_get("secret_hash")?,
        redirect_uris: split(row.try_get("redirect_uris")?),
        logout_uris: split(row.try_get("logout_uris")?),
        grants: split(row.try_get("grants")?),
        scopes: split(row.try_get("scopes")?),
        created_at: row.try_get("created_at")?,
    })
}

const SESSION_COLUMNS: &str = "id_hash, user_id, csrf, stage, auth_time, created_at, last_seen_at, expires_at";
const CLIENT_COLUMNS: &str = "client_id, name, secret_hash, redirect_uris, logout_uris, grants, scopes, created_at";

impl Store {
    // Users.

    /// Creates a user who signed up and has not verified the email yet.
    pub async fn create_unverified_user(
        &self,
        email: &str,
        name: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<crate::User> {
        let email = email.trim().to_lowercase();
        let row = sqlx::query(sql(format!(
            "INSERT INTO users (email, name, password_hash, groups, must_change_password, disabled, created_at, \
             email_verified) VALUES ($1, $2, $3, $4, 0, 0, $5, 0) RETURNING {USER_COLUMNS}"
        )))
        .bind(&email)
        .bind(name)
        .bind(password_hash)
        .bind(encode_groups(&[Group::Students]))
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| conflict_or(e, || format!("a user with email {email}")))?;
        user_from_row(&row)
    }

    /// Returns the user an external provider identifies as `subject`, creating
    /// one (no password, in no group) on first sight. Groups come from each
    /// token, not from this row.
    pub async fn external_user(&self, subject: &str, email: &str, name: &str, now: i64) -> Result<crate::User> {
        let select = format!("SELECT {USER_COLUMNS} FROM users WHERE external_subject = $1");
        if let Some(row) = sqlx::query(sql(select.clone())).bind(subject).fetch_optional(&self.pool).await? {
            return user_from_row(&row);
        }
        sqlx::query(
            "INSERT INTO users (email, name, password_hash, groups, must_change_password, disabled, created_at, \
             email_verified, external_subject) VALUES ($1, $2, '!', '', 0, 0, $3, 1, $4) \
             ON CONFLICT (external_subject) DO NOTHING",
        )
        .bind(email.trim().to_lowercase())
        .bind(name)
        .bind(now)
        .bind(subject)
        .execute(&self.pool)
        .await
        .map_err(|e| conflict_or(e, || format!("a user with email {email}")))?;
        let row = sqlx::query(sql(select)).bind(subject).fetch_one(&self.pool).await?;
        user_from_row(&row)
    }

    /// Replaces the name and password of an account whose address is not
    /// verified yet, for a new sign-up with the same address.
    pub async fn replace_unverified_user(&self, user_id: i64, name: &str, password_hash: &str) -> Result<bool> {
        let updated =
            sqlx::query("UPDATE users SET name = $1, password_hash = $2 WHERE id = $3 AND email_verified = 0")
                .bind(name)
                .bind(password_hash)
                .bind(user_id)
                .execute(&self.pool)
                .await?;
        Ok(updated.rows_affected() > 0)
    }

    /// Marks the address verified if the password hash is still `password_hash`.
    pub async fn verify_email_with_password(&self, user_id: i64, password_hash: &str) -> Result<bool> {
        let updated = sqlx::query("UPDATE users SET email_verified = 1 WHERE id = $1 AND password_hash = $2")
            .bind(user_id)
            .bind(password_hash)
            .execute(&self.pool)
            .await?;
        Ok(updated.rows_affected() > 0)
    }

    pub async fn set_email_verified(&self, user_id: i64) -> Result<()> {
        sqlx::query("UPDATE users SET email_verified = 1 WHERE id = $1").bind(user_id).execute(&self.pool).await?;
        Ok(())
    }

    /// Disables or enables a user; disabling also ends every session and token.
    pub async fn set_disabled(&self, user_id: i64, disabled: bool) -> Result<bool> {
        let updated = sqlx::query("UPDATE users SET disabled = $1 WHERE id = $2")
            .bind(i64::from(disabled))
            .bind(user_id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if disabled && updated > 0 {
            self.sign_out_everywhere(user_id).await?;
        }
        Ok(updated > 0)
    }

    pub async fn set_groups(&self, user_id: i64, groups: &[Group]) -> Result<bool> {
        let updated = sqlx::query("UPDATE users SET groups = $1 WHERE id = $2")
            .bind(encode_groups(groups))
            .bind(user_id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(updated > 0)
    }

    /// Deletes a user with everything that belongs to them.
    pub async fn delete_user(&self, user_id: i64) -> Result<bool> {
        let deleted = sqlx::query("DELETE FROM users WHERE id = $1").bind(user_id).execute(&self.pool).await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// Ends every session and token of a user: browser sessions are deleted,
    /// refresh tokens revoked, and the token version raised so that access
    /// tokens issued before are refused.
    pub async fn sign_out_everywhere(&self, user_id: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE users SET token_version = token_version + 1 WHERE id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM sessions WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the password with one nothing matches and ends every
    /// session, so that the user must choose a new password by mailed code.
    pub async fn force_password_reset(&self, user_id: i64) -> Result<()> {
        sqlx::query("UPDATE users SET password_hash = '!' WHERE id = $1").bind(user_id).execute(&self.pool).await?;
        self.sign_out_everywhere(user_id).await
    }

    /// Turns on multi-factor sign-in with an encrypted secret and the hashes
    /// of new recovery codes, or turns it off with `None`.
    pub async fn set_mfa(&self, user_id: i64, secret: Option<(&str, &[String])>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE users SET mfa_secret = $1, mfa_last_step = NULL WHERE id = $2")
            .bind(secret.map(|(s, _)| s))
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
        for code_hash in secret.map(|(_, codes)| codes).unwrap_or_default() {
            sqlx::query("INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)")
                .bind(user_id)
                .bind(code_hash)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records that TOTP step `step` was used; false when it or a later one
    /// was used already.
    pub async fn use_totp_step(&self, user_id: i64, step: i64) -> Result<bool> {
        let updated = sqlx::query(
            "UPDATE users SET mfa_last_step = $1 WHERE id = $2 AND (mfa_last_step IS NULL OR mfa_last_step < $1)",
        )
        .bind(step)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() > 0)
    }

    /// Uses up a recovery code; false when it is unknown or used.
    pub async fn use_recovery_code(&self, user_id: i64, code_hash: &str, now: i64) -> Result<bool> {
        let updated = sqlx::query(
            "UPDATE recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(now)
        .bind(user_id)
        .bind(code_hash)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() > 0)
    }

    pub async fn unused_recovery_codes(&self, user_id: i64) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL")
            .bind(user_id)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    // Mailed codes.

    /// Stores the hash of a code mailed for `purpose`, replacing an older one.
    pub async fn put_mailed_code(&self, user_id: i64, purpose: &str, code_hash: &str, expires_at: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO mailed_codes (user_id, purpose, code_hash, expires_at, attempts) VALUES ($1, $2, $3, $4, 0) \
             ON CONFLICT (user_id, purpose) DO UPDATE SET code_hash = $3, expires_at = $4, attempts = 0",
        )
        .bind(user_id)
        .bind(purpose)
        .bind(code_hash)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Checks a mailed code. A match uses it up; a code tried
    /// `max_attempts` times is gone.
    pub async fn check_mailed_code(
        &self,
        user_id: i64,
        purpose: &str,
        code_hash: &str,
        now: i64,
        max_attempts: i64,
    ) -> Result<CodeCheck> {
        let row = sqlx::query(
            "UPDATE mailed_codes SET attempts = attempts + 1 \
             WHERE user_id = $1 AND purpose = $2 AND expires_at > $3 AND attempts < $4 RETURNING code_hash",
        )
        .bind(user_id)
        .bind(purpose)
        .bind(now)
        .bind(max_attempts)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(CodeCheck::Missing);
        };
        let stored: String = row.try_get("code_hash")?;
        if !constant_time_eq(stored.as_bytes(), code_hash.as_bytes()) {
            return Ok(CodeCheck::Wrong);
        }
        let deleted = sqlx::query("DELETE FROM mailed_codes WHERE user_id = $1 AND purpose = $2 AND code_hash = $3")
            .bind(user_id)
            .bind(purpose)
            .bind(code_hash)
            .execute(&self.pool)
            .await?;
        Ok(if deleted.rows_affected() > 0 { CodeCheck::Accepted } else { CodeCheck::Missing })
    }

    // Failed sign-ins.

    pub async fn sign_in_failures(&self, email: &str) -> Result<FailureState> {
        let row = sqlx::query("SELECT failures, locked_until FROM sign_in_failures WHERE email = $1")
            .bind(email.trim().to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => {
                FailureState { failures: row.try_get("failures")?, locked_until: row.try_get("locked_until")? }
            }
            None => FailureState::default(),
        })
    }

    /// Counts a failed sign-in for `email`. Failures older than `window`
    /// seconds are forgotten first; the `lock_after`-th failure locks the
    /// address until `now + lock_seconds`. Returns the new state.
    pub async fn record_sign_in_failure(
        &self,
        email: &str,
        now: i64,
        window: i64,
        lock_after: i64,
        lock_seconds: i64,
    ) -> Result<FailureState> {
        let row = sqlx::query(
            "INSERT INTO sign_in_failures (email, failures, last_failure_at, locked_until) VALUES ($1, 1, $2, 0) \
             ON CONFLICT (email) DO UPDATE SET \
             failures = CASE WHEN sign_in_failures.last_failure_at < $3 AND sign_in_failures.locked_until <= $2 \
                        THEN 1 ELSE sign_in_failures.failures + 1 END, \
             last_failure_at = $2 \
             RETURNING failures, locked_until",
        )
        .bind(email.trim().to_lowercase())
        .bind(now)
        .bind(now - window)
        .fetch_one(&self.pool)
        .await?;
        let mut state = FailureState { failures: row.try_get("failures")?, locked_until: row.try_get("locked_until")? };
        if state.failures >= lock_after && state.locked_until <= now {
            state.locked_until = now + lock_seconds;
            sqlx::query("UPDATE sign_in_failures SET locked_until = $1 WHERE email = $2")
                .bind(state.locked_until)
                .bind(email.trim().to_lowercase())
                .execute(&self.pool)
                .await?;
        }
        Ok(state)
    }

    /// Forgets the failures of `email`: after a successful sign-in, or when
    /// an administrator unlocks the account. Returns whether it was locked.
    pub async fn clear_sign_in_failures(&self, email: &str, now: i64) -> Result<bool> {
        let row = sqlx::query("DELETE FROM sign_in_failures WHERE email = $1 RETURNING locked_until")
            .bind(email.trim().to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<i64, _>("locked_until")? > now,
            None => false,
        })
    }

    // Events.

    pub async fn insert_auth_event(&self, event: &AuthEvent) -> Result<()> {
        sqlx::query(
            "INSERT INTO auth_events (user_id, at, event, outcome, reason, client_address, user_agent, client_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(event.user_id)
        .bind(event.at)
        .bind(&event.event)
        .bind(&event.outcome)
        .bind(&event.reason)
        .bind(&event.client_address)
        .bind(&event.user_agent)
        .bind(&event.client_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Returns the newest `limit` events of a user, newest first.
    pub async fn auth_events(&self, user_id: i64, limit: i64) -> Result<Vec<AuthEvent>> {
        let rows = sqlx::query(
            "SELECT user_id, at, event, outcome, reason, client_address, user_agent, client_id FROM auth_events \
             WHERE user_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(user_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuthEvent {
                    user_id: row.try_get("user_id")?,
                    at: row.try_get("at")?,
                    event: row.try_get("event")?,
                    outcome: row.try_get("outcome")?,
                    reason: row.try_get("reason")?,
                    client_address: row.try_get("client_address")?,
                    user_agent: row.try_get("user_agent")?,
                    client_id: row.try_get("client_id")?,
                })
            })
            .collect()
    }

    // Sessions.

    pub async fn create_session(&self, session: &SessionRecord) -> Result<()> {
        sqlx::query(sql(format!("INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")))
            .bind(&session.id_hash)
            .bind(session.user_id)
            .bind(&session.csrf)
            .bind(session.stage.as_str())
            .bind(session.auth_time)
            .bind(session.created_at)
            .bind(session.last_seen_at)
            .bind(session.expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>> {
        let row = sqlx::query(sql(format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id_hash = $1")))
            .bind(id_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// Records activity on a session, for the idle timeout.
    pub async fn touch_session(&self, id_hash: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id_hash = $2")
            .bind(now)
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes a session; returns whether it existed.
    pub async fn delete_session(&self, id_hash: &str) -> Result<bool> {
        let deleted = sqlx::query("DELETE FROM sessions WHERE id_hash = $1").bind(id_hash).execute(&self.pool).await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// Removes sessions past their absolute end or idle since `idle_before`.
    pub async fn delete_stale_sessions(&self, now: i64, idle_before: i64) -> Result<u64> {
        let deleted = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at < $2")
            .bind(now)
            .bind(idle_before)
            .execute(&self.pool)
            .await?;
        Ok(deleted.rows_affected())
    }

    // Clients.

    pub async fn create_client(&self, client: &ClientRecord) -> Result<()> {
        sqlx::query(sql(format!(
            "INSERT INTO oauth_clients ({CLIENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        )))
        .bind(&client.client_id)
        .bind(&client.name)
        .bind(&client.secret_hash)
        .bind(client.redirect_uris.join(" "))
        .bind(client.logout_uris.join(" "))
        .bind(client.grants.join(" "))
        .bind(client.scopes.join(" "))
        .bind(client.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| conflict_or(e, || format!("a client with id {}", client.client_id)))?;
        Ok(())
    }

    /// Replaces the grants and scopes of a registered client.
    pub async fn update_client_grants(&self, client: &ClientRecord) -> Result<()> {
        sqlx::query("UPDATE oauth_clients SET grants = $1, scopes = $2 WHERE client_id = $3")
            .bind(client.grants.join(" "))
            .bind(client.scopes.join(" "))
            .bind(&client.client_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn client(&self, client_id: &str) -> Result<Option<ClientRecord>> {
        let row = sqlx::query(sql(format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE client_id = $1")))
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(client_from_row).transpose()
    }

    pub async fn list_clients(&self) -> Result<Vec<ClientRecord>> {
        let rows = sqlx::query(sql(format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients ORDER BY client_id")))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(client_from_row).collect()
    }

    /// Deletes a client and revokes its refresh tokens.
    pub async fn delete_client(&self, client_id: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE client_id = $1")
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        let deleted =
            sqlx::query("DELETE FROM oauth_clients WHERE client_id = $1").bind(client_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(deleted.rows_affected() > 0)
    }

    // Authorization codes.

    pub async fn insert_code(&self, code: &CodeRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO authorization_codes (code_hash, client_id, user_id, redirect_uri, scope, code_challenge, \
             nonce, auth_time, expires_at, family) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&code.code_hash)
        .bind(&code.client_id)
        .bind(code.user_id)
        .bind(&code.redirect_uri)
        .bind(&code.scope)
        .bind(&code.code_challenge)
        .bind(&code.nonce)
        .bind(code.auth_time)
        .bind(code.expires_at)
        .bind(&code.family)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Uses a code that has not expired; a code works once. Presenting a
    /// used code again revokes its family until `family_expires_at`.
    pub async fn use_code(&self, code_hash: &str, now: i64, family_expires_at: i64) -> Result<CodeUse> {
        sqlx::query("DELETE FROM authorization_codes WHERE expires_at <= $1").bind(now).execute(&self.pool).await?;
        let row = sqlx::query(
            "UPDATE authorization_codes SET used_at = $2 WHERE code_hash = $1 AND used_at IS NULL \
             RETURNING client_id, user_id, redirect_uri, scope, code_challenge, nonce, auth_time, expires_at, family",
        )
        .bind(code_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            let used = sqlx::query("SELECT user_id, client_id, family FROM authorization_codes WHERE code_hash = $1")
                .bind(code_hash)
                .fetch_optional(&self.pool)
                .await?;
            let Some(used) = used else {
                return Ok(CodeUse::Invalid);
            };
            let family: String = used.try_get("family")?;
            self.revoke_family(&family, family_expires_at, now).await?;
            return Ok(CodeUse::Reused { user_id: used.try_get("user_id")?, client_id: used.try_get("client_id")? });
        };
        Ok(CodeUse::Valid(CodeRecord {
            code_hash: code_hash.to_string(),
            client_id: row.try_get("client_id")?,
            user_id: row.try_get("user_id")?,
            redirect_uri: row.try_get("redirect_uri")?,
            scope: row.try_get("scope")?,
            code_challenge: row.try_get("code_challenge")?,
            nonce: row.try_get("nonce")?,
            auth_time: row.try_get("auth_time")?,
            expires_at: row.try_get("expires_at")?,
            family: row.try_get("family")?,
        }))
    }

    // Refresh tokens.

    pub async fn insert_refresh_token(&self, token: &NewRefreshToken<'_>, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, user_id, token_version, expires_at, revoked, created_at, family, \
             client_id, scope, auth_time) VALUES ($1, $2, $3, $4, \
             (SELECT COUNT(*) FROM revoked_tokens WHERE jti = $6), $5, $6, $7, $8, $9)",
        )
        .bind(token.token_hash)
        .bind(token.user_id)
        .bind(token.token_version)
        .bind(token.expires_at)
        .bind(now)
        .bind(token.family)
        .bind(token.client_id)
        .bind(token.scope)
        .bind(token.auth_time)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Uses a refresh token presented by `client_id`. A valid one is marked
    /// used; one used before revokes its whole family (and the family's
    /// access tokens, through `revoked_tokens`) until `family_expires_at`.
    /// A token stored after its family was revoked (by a concurrent reuse)
    /// is stored revoked, so a race cannot keep a family alive.
    pub async fn use_refresh_token(
        &self,
        token_hash: &str,
        client_id: &str,
        now: i64,
        family_expires_at: i64,
    ) -> Result<RefreshOutcome> {
        let row = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $3 WHERE token_hash = $1 AND client_id = $2 AND used_at IS NULL \
             AND revoked = 0 AND expires_at > $3 \
             RETURNING user_id, token_version, family, scope, auth_time",
        )
        .bind(token_hash)
        .bind(client_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            let used = sqlx::query(
                "SELECT user_id, family FROM refresh_tokens WHERE token_hash = $1 AND client_id = $2 \
                 AND used_at IS NOT NULL",
            )
            .bind(token_hash)
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?;
            let Some(used) = used else {
                return Ok(RefreshOutcome::Invalid);
            };
            let family: String = used.try_get("family")?;
            self.revoke_family(&family, family_expires_at, now).await?;
            return Ok(RefreshOutcome::Reused { user_id: used.try_get("user_id")?, family });
        };
        let user_id: i64 = row.try_get("user_id")?;
        let issued_under: i64 = row.try_get("token_version")?;
        let current = sqlx::query("SELECT token_version FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get::<i64, _>("token_version"))
            .transpose()?;
        if current != Some(issued_under) {
            return Ok(RefreshOutcome::Invalid);
        }
        Ok(RefreshOutcome::Valid(RefreshGrant {
            user_id,
            family: row.try_get("family")?,
            client_id: client_id.to_string(),
            scope: row.try_get("scope")?,
            auth_time: row.try_get("auth_time")?,
        }))
    }

    /// Revokes every refresh token of a family, and the access tokens that
    /// name it, until `expires_at`.
    pub async fn revoke_family(&self, family: &str, expires_at: i64, now: i64) -> Result<()> {
        if family.is_empty() {
            return Ok(());
        }
        sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE family = $1").bind(family).execute(&self.pool).await?;
        self.revoke_token(family, expires_at, now).await
    }

    /// Returns whether a service account's token is still accepted: its
    /// client is registered and the token was not revoked.
    pub async fn service_token_accepted(&self, client_id: &str, jti: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM oauth_clients WHERE client_id = $1) AS registered, \
             (SELECT COUNT(*) FROM revoked_tokens WHERE jti = $2) AS revoked",
        )
        .bind(client_id)
        .bind(jti)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("registered")? > 0 && row.try_get::<i64, _>("revoked")? == 0)
    }

    /// Returns whether `client_id` is registered.
    pub async fn client_registered(&self, client_id: &str) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM oauth_clients WHERE client_id = $1")
            .bind(client_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// Finds the family of a refresh token of `client_id`, for revocation.
    pub async fn refresh_family(&self, token_hash: &str, client_id: &str) -> Result<Option<(i64, String)>> {
        let row = sqlx::query("SELECT user_id, family FROM refresh_tokens WHERE token_hash = $1 AND client_id = $2")
            .bind(token_hash)
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("user_id")?, r.try_get("family")?))).transpose()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::memory_store;

    async fn user(store: &Store) -> crate::User {
        store.create_user("a@example.org", "A", "hash", &[Group::Students], false, 0).await.expect("user")
    }

    fn token<'a>(hash: &'a str, user_id: i64, family: &'a str) -> NewRefreshToken<'a> {
        NewRefreshToken {
            token_hash: hash,
            user_id,
            token_version: 0,
            family,
            client_id: "cli",
            scope: "openid",
            auth_time: 5,
            expires_at: 1000,
        }
    }

    #[tokio::test]
    async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
        let store = memory_store().await;
        let user = user(&store).await;
        store.insert_refresh_token(&token("t1", user.id, "f"), 0).await.expect("insert");
        let RefreshOutcome::Valid(grant) = store.use_refresh_token("t1", "cli", 10, 2000).await.expect("use") else {
            unreachable!("first use is valid");
        };
        assert_eq!((grant.family.as_str(), grant.auth_time), ("f", 5));
        store.insert_refresh_token(&token("t2", user.id, "f"), 10).await.expect("insert");
        assert_eq!(store.use_refresh_token("t2", "other", 11, 2000).await.expect("use"), RefreshOutcome::Invalid);
        let reused = store.use_refresh_token("t1", "cli", 12, 2000).await.expect("reuse");
        assert_eq!(reused, RefreshOutcome::Reused { user_id: user.id, family: "f".into() });
        assert_eq!(store.use_refresh_token("t2", "cli", 13, 2000).await.expect("use"), RefreshOutcome::Invalid);
        assert!(!store.token_accepted(user.id, "other", "f", 0).await.expect("family revoked"));
        // A token stored after the revocation (a concurrent rotation) is dead too.
        store.insert_refresh_token(&token("t3", user.id, "f"), 14).await.expect("insert");
        assert_eq!(store.use_refresh_token("t3", "cli", 15, 2000).await.expect("use"), RefreshOutcome::Invalid);
    }

    #[tokio::test]
    async fn failures_lock_and_expire() {
        let store = memory_store().await;
        for n in 1..=3 {
            let state = store.record_sign_in_failure("x@example.org", 100, 900, 3, 60).await.expect("failure");
            assert_eq!(state.failures, n);
        }
        assert_eq!(store.sign_in_failures("X@example.org").await.expect("state").locked_until, 160);
        // Past the lock and the window, counting starts again.
        let state = store.record_sign_in_failure("x@example.org", 2000, 900, 3, 60).await.expect("failure");
        assert_eq!(state, FailureState { failures: 1, locked_until: 160 });
        assert!(!store.clear_sign_in_failures("x@example.org", 2000).await.expect("clear"));
    }

    #[tokio::test]
    async fn mailed_codes_work_once_and_wear_out() {
        let store = memory_store().await;
        let user = user(&store).await;
        store.put_mailed_code(user.id, "verify", "h", 100).await.expect("put");
        assert_eq!(store.check_mailed_code(user.id, "verify", "x", 10, 3).await.expect("check"), CodeCheck::Wrong);
        assert_eq!(store.check_mailed_code(user.id, "verify", "h", 10, 3).await.expect("check"), CodeCheck::Accepted);
        assert_eq!(store.check_mailed_code(user.id, "verify", "h", 10, 3).await.expect("check"), CodeCheck::Missing);
        store.put_mailed_code(user.id, "verify", "h", 100).await.expect("put");
        for _ in 0..3 {
            store.check_mailed_code(user.id, "verify", "x", 10, 3).await.expect("check");
        }
        assert_eq!(store.check_mailed_code(user.id, "verify", "h", 10, 3).await.expect("check"), CodeCheck::Missing);
        store.put_mailed_code(user.id, "verify", "h", 100).await.expect("put");
        assert_eq!(store.check_mailed_code(user.id, "verify", "h", 100, 3).await.expect("check"), CodeCheck::Missing);
    }

    #[tokio::test]
    async fn codes_and_totp_steps_are_single_use() {
        let store = memory_store().await;
        let user = user(&store).await;
        store
            .create_client(&ClientRecord {
                client_id: "web".into(),
                name: "Web".into(),
                secret_hash: None,
                redirect_uris: vec!["https://app.example/cb".into()],
                logout_uris: vec![],
                grants: vec!["authorization_code".into()],
                scopes: vec!["openid".into()],
                created_at: 0,
            })
            .await
            .expect("client");
        let code = CodeRecord {
            code_hash: "c".into(),
            client_id: "web".into(),
            user_id: user.id,
            redirect_uri: "https://app.example/cb".into(),
            scope: "openid".into(),
            code_challenge: "x".into(),
            nonce: String::new(),
            auth_time: 1,
            expires_at: 100,
            family: "code-family".into(),
        };
        store.insert_code(&code).await.expect("code");
        assert!(matches!(store.use_code("c", 200, 300).await.expect("expired"), CodeUse::Invalid));
        store.insert_code(&code).await.expect("code");
        assert!(matches!(store.use_code("c", 50, 300).await.expect("use"), CodeUse::Valid(_)));
        let again = store.use_code("c", 60, 300).await.expect("again");
        assert!(matches!(again, CodeUse::Reused { .. }), "{again:?}");
        assert!(
            !store.token_accepted(user.id, "any", "code-family", 0).await.expect("check"),
            "its tokens are revoked"
        );

        assert!(store.use_totp_step(user.id, 10).await.expect("step"));
        assert!(!store.use_totp_step(user.id, 10).await.expect("same step"));
        assert!(!store.use_totp_step(user.id, 9).await.expect("older step"));
        store.set_mfa(user.id, Some(("secret", &["r1".to_string()]))).await.expect("mfa");
        assert!(store.use_recovery_code(user.id, "r1", 5).await.expect("code"));
        assert!(!store.use_recovery_code(user.id, "r1", 6).await.expect("used"));
    }

    #[tokio::test]
    async fn external_users_are_provisioned_once() {
        let store = memory_store().await;
        let first = store.external_user("https://idp.example sub-1", "e@example.org", "E", 0).await.expect("user");
        let again = store.external_user("https://idp.example sub-1", "e@example.org", "E", 0).await.expect("user");
        assert_eq!(first.id, again.id);
        assert!(first.groups.is_empty());
    }
}
