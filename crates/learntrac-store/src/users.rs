use std::fmt;

use sqlx::Row;

use crate::{Result, Store, StoreError, conflict_or, sql};

/// The groups that grant rights. A user may belong to several.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    Admins,
    Instructors,
    Students,
    Operators,
}

impl Group {
    pub const ALL: [Group; 4] = [Group::Admins, Group::Instructors, Group::Students, Group::Operators];

    pub fn as_str(self) -> &'static str {
        match self {
            Group::Admins => "admins",
            Group::Instructors => "instructors",
            Group::Students => "students",
            Group::Operators => "operators",
        }
    }
}

impl std::str::FromStr for Group {
    type Err = String;

    fn from_str(value: &str) -> Result<Group, String> {
        Group::ALL
            .into_iter()
            .find(|g| g.as_str() == value)
            .ok_or_else(|| format!("unknown group {value:?}; use one of admins, instructors, students, operators"))
    }
}

/// A user of the built-in identity provider.
#[derive(Clone)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub groups: Vec<Group>,
    pub must_change_password: bool,
    pub disabled: bool,
    pub created_at: i64,
    /// Raised on every password change; tokens name the version they were
    /// issued under.
    pub token_version: i64,
    pub email_verified: bool,
    /// The TOTP secret, encrypted; `None` until multi-factor sign-in is set up.
    pub mfa_secret: Option<String>,
    /// The last TOTP time step accepted, so that no code works twice.
    pub mfa_last_step: Option<i64>,
    /// `issuer subject` of a user known from an external provider's tokens.
    pub external_subject: Option<String>,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("groups", &self.groups)
            .field("disabled", &self.disabled)
            .field("mfa", &self.mfa_secret.is_some())
            .finish_non_exhaustive()
    }
}

impl User {
    pub fn in_group(&self, group: Group) -> bool {
        self.groups.contains(&group)
    }
}

pub(crate) fn encode_groups(groups: &[Group]) -> String {
    groups.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(",")
}

fn decode_groups(value: &str) -> Result<Vec<Group>> {
    value.split(',').filter(|g| !g.is_empty()).map(|g| g.parse().map_err(StoreError::Corrupt)).collect()
}

pub(crate) fn user_from_row(row: &sqlx::any::AnyRow) -> Result<User> {
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        groups: decode_groups(&row.try_get::<String, _>("groups")?)?,
        must_change_password: row.try_get::<i64, _>("must_change_password")? != 0,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        created_at: row.try_get("created_at")?,
        token_version: row.try_get("token_version")?,
        email_verified: row.try_get::<i64, _>("email_verified")? != 0,
        mfa_secret: row.try_get("mfa_secret")?,
        mfa_last_step: row.try_get("mfa_last_step")?,
        external_subject: row.try_get("external_subject")?,
    })
}

pub(crate) const USER_COLUMNS: &str = "id, email, name, password_hash, groups, must_change_password, disabled, \
     created_at, token_version, email_verified, mfa_secret, mfa_last_step, external_subject";

impl Store {
    /// Creates a user; the email must be unique (compared in lower case).
    pub async fn create_user(
        &self,
        email: &str,
        name: &str,
        password_hash: &str,
        groups: &[Group],
        must_change_password: bool,
        now: i64,
    ) -> Result<User> {
        let email = email.trim().to_lowercase();
        let row = sqlx::query(sql(format!(
            "INSERT INTO users (email, name, password_hash, groups, must_change_password, disabled, created_at) \
             VALUES ($1, $2, $3, $4, $5, 0, $6) RETURNING {USER_COLUMNS}"
        )))
        .bind(&email)
        .bind(name)
        .bind(password_hash)
        .bind(encode_groups(groups))
        .bind(i64::from(must_change_password))
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| conflict_or(e, || format!("a user with email {email}")))?;
        user_from_row(&row)
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let row = sqlx::query(sql(format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1")))
            .bind(email.trim().to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn user_by_id(&self, id: i64) -> Result<Option<User>> {
        let row = sqlx::query(sql(format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Returns every user, ordered by id.
    pub async fn list_users(&self) -> Result<Vec<User>> {
        let rows =
            sqlx::query(sql(format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"))).fetch_all(&self.pool).await?;
        rows.iter().map(user_from_row).collect()
    }

    pub async fn count_users(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM users").fetch_one(&self.pool).await?.try_get("n")?)
    }

    /// Replaces a user's password hash, clears the must-change flag, and
    /// signs the user out everywhere: refresh tokens are revoked and the
    /// token version is raised. Returns the new token version.
    /// Emails of the users who still have to replace a one-time password.
    pub async fn users_with_one_time_password(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT email FROM users WHERE must_change_password = 1 ORDER BY email")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("email")?)).collect()
    }

    pub async fn set_password(&self, user_id: i64, password_hash: &str) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let version: i64 = sqlx::query(
            "UPDATE users SET password_hash = $1, must_change_password = 0, token_version = token_version + 1 \
             WHERE id = $2 RETURNING token_version",
        )
        .bind(password_hash)
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("token_version")?;
        sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Returns whether a token of `user_id` with id `jti`, issued under
    /// `token_version`, is still accepted: the user exists, is not disabled,
    /// has not been signed out everywhere since, and neither the token nor
    /// its refresh-token family `origin` was revoked.
    pub async fn token_accepted(&self, user_id: i64, jti: &str, origin: &str, token_version: i64) -> Result<bool> {
        let row = sqlx::query(
            "SELECT u.disabled, u.token_version, \
             (SELECT COUNT(*) FROM revoked_tokens r WHERE r.jti = $2 OR r.jti = $3) AS revoked \
             FROM users u WHERE u.id = $1",
        )
        .bind(user_id)
        .bind(jti)
        .bind(origin)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let disabled: i64 = row.try_get("disabled")?;
        let current: i64 = row.try_get("token_version")?;
        let revoked: i64 = row.try_get("revoked")?;
        Ok(disabled == 0 && token_version == current && revoked == 0)
    }

    /// Signs out one session: its token id is refused until `expires_at`.
    /// Expired entries are removed at the same time.
    pub async fn revoke_token(&self, jti: &str, expires_at: i64, now: i64) -> Result<()> {
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < $1").bind(now).execute(&self.pool).await?;
        sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING")
            .bind(jti)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::memory_store;

    #[tokio::test]
    async fn users_round_trip_and_conflict() {
        let store = memory_store().await;
        let user = store
            .create_user("Ada@Example.org", "Ada", "$argon2id$x", &[Group::Students, Group::Instructors], true, 10)
            .await
            .expect("create");
        assert_eq!(user.email, "ada@example.org");
        assert!(user.must_change_password);
        let found = store.user_by_email("ADA@example.org").await.expect("query").expect("found");
        assert_eq!(found.groups, [Group::Students, Group::Instructors]);
        let again = store.create_user("ada@example.org", "Ada", "h", &[Group::Students], false, 11).await;
        assert!(matches!(again, Err(StoreError::Conflict(_))));
        assert_eq!(store.count_users().await.expect("count"), 1);
    }

    #[tokio::test]
    async fn password_change_and_sign_out_revoke_tokens() {
        let store = memory_store().await;
        let user = store.create_user("a@b.c", "A", "h", &[Group::Students], false, 0).await.expect("create");
        assert!(store.token_accepted(user.id, "t1", "f1", 0).await.expect("check"));
        assert!(!store.token_accepted(user.id + 1, "t1", "f1", 0).await.expect("check"), "unknown user");

        store.revoke_token("t1", 100, 20).await.expect("revoke");
        assert!(!store.token_accepted(user.id, "t1", "f1", 0).await.expect("check"), "signed out");
        assert!(store.token_accepted(user.id, "t2", "f1", 0).await.expect("check"));

        let refresh = crate::NewRefreshToken {
            token_hash: "r",
            user_id: user.id,
            token_version: 0,
            family: "f1",
            client_id: "cli",
            scope: "openid",
            auth_time: 0,
            expires_at: 1000,
        };
        store.insert_refresh_token(&refresh, 0).await.expect("insert");
        assert_eq!(store.set_password(user.id, "h2").await.expect("set"), 1);
        assert!(!store.token_accepted(user.id, "t2", "f1", 0).await.expect("check"), "issued before the change");
        assert!(store.token_accepted(user.id, "t3", "f1", 1).await.expect("check"), "issued after the change");
        let used = store.use_refresh_token("r", "cli", 60, 1000).await.expect("use");
        assert_eq!(used, crate::RefreshOutcome::Invalid, "refresh tokens revoked");
    }
}
