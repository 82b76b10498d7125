//! Alert records and the sign-in addresses that alert rules compare against.

use serde::Serialize;
use sqlx::Row;

use crate::{Result, Store};

/// An alert, with the repeats grouped into it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlertRecord {
    pub id: i64,
    pub rule: String,
    pub subject: String,
    pub first_at: i64,
    pub last_at: i64,
    pub count: i64,
    pub details: String,
    pub delivered: bool,
}

/// Whether [`Store::raise_alert`] opened a new alert or grouped a repeat.
#[derive(Debug, PartialEq)]
pub enum Raised {
    New(AlertRecord),
    Grouped(AlertRecord),
}

fn alert_from_row(row: &sqlx::any::AnyRow) -> Result<AlertRecord> {
    Ok(AlertRecord {
        id: row.try_get("id")?,
        rule: row.try_get("rule")?,
        subject: row.try_get("subject")?,
        first_at: row.try_get("first_at")?,
        last_at: row.try_get("last_at")?,
        count: row.try_get("count")?,
        details: row.try_get("details")?,
        delivered: row.try_get::<i64, _>("delivered")? != 0,
    })
}

impl Store {
    /// Records that `rule` fired for `subject`: a repeat within
    /// `group_seconds` of the last firing raises that alert's count,
    /// anything else opens a new alert.
    pub async fn raise_alert(
        &self,
        rule: &str,
        subject: &str,
        details: &str,
        group_seconds: i64,
        now: i64,
    ) -> Result<Raised> {
        let mut tx = self.pool.begin().await?;
        if self.backend == crate::Backend::Postgres {
            // Two firings at once would both find no open alert and open
            // two; SQLite serialises the writes, PostgreSQL needs a lock.
            sqlx::query("SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock(hashtext($1))) AS lock")
                .bind(format!("alert:{rule}:{subject}"))
                .fetch_one(&mut *tx)
                .await?;
        }
        let updated = sqlx::query(
            "UPDATE alerts SET count = count + 1, last_at = $1, details = $2 \
             WHERE id = (SELECT MAX(id) FROM alerts WHERE rule = $3 AND subject = $4 AND last_at >= $5)",
        )
        .bind(now)
        .bind(details)
        .bind(rule)
        .bind(subject)
        .bind(now - group_seconds)
        .execute(&mut *tx)
        .await?;
        let raised = if updated.rows_affected() > 0 {
            let row = sqlx::query("SELECT * FROM alerts WHERE rule = $1 AND subject = $2 ORDER BY id DESC LIMIT 1")
                .bind(rule)
                .bind(subject)
                .fetch_one(&mut *tx)
                .await?;
            Raised::Grouped(alert_from_row(&row)?)
        } else {
            let row = sqlx::query(
                "INSERT INTO alerts (rule, subject, first_at, last_at, count, details) VALUES ($1, $2, $3, $3, 1, $4) \
                 RETURNING *",
            )
            .bind(rule)
            .bind(subject)
            .bind(now)
            .bind(details)
            .fetch_one(&mut *tx)
            .await?;
            Raised::New(alert_from_row(&row)?)
        };
        tx.commit().await?;
        Ok(raised)
    }

    pub async fn mark_alert_delivered(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE alerts SET delivered = 1 WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Alerts whose last firing is at or after `since`, newest first.
    pub async fn alerts_since(&self, since: i64) -> Result<Vec<AlertRecord>> {
        let rows = sqlx::query("SELECT * FROM alerts WHERE last_at >= $1 ORDER BY id DESC")
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(alert_from_row).collect()
    }

    /// Stores that `user_id` signed in from `address`. Returns whether the
    /// address is new and whether the user had signed in from any address
    /// before.
    pub async fn note_sign_in_address(&self, user_id: i64, address: &str, now: i64) -> Result<(bool, bool)> {
        let known = sqlx::query("SELECT address FROM known_addresses WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        let mut seen_before = false;
        for row in &known {
            if row.try_get::<String, _>("address")? == address {
                seen_before = true;
            }
        }
        if !seen_before {
            sqlx::query(
                "INSERT INTO known_addresses (user_id, address, first_seen) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id, address) DO NOTHING",
            )
            .bind(user_id)
            .bind(address)
            .bind(now)
            .execute(&self.pool)
            .await?;
        }
        Ok((!seen_before, !known.is_empty()))
    }

    /// Connections of the pool: (open, idle, maximum).
    pub fn pool_connections(&self) -> (u32, usize, u32) {
        (self.pool.size(), self.pool.num_idle(), self.pool.options().get_max_connections())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Group;
    use crate::testing::memory_store;

    #[tokio::test]
    async fn repeats_are_grouped() {
        let store = memory_store().await;
        let first = store.raise_alert("auth_failures", "h:1", "20 in a minute", 600, 1000).await.expect("raise");
        assert!(matches!(first, Raised::New(ref alert) if alert.count == 1));
        let repeat = store.raise_alert("auth_failures", "h:1", "25 in a minute", 600, 1300).await.expect("raise");
        let Raised::Grouped(grouped) = repeat else { unreachable!("a repeat within the interval is grouped") };
        assert_eq!(grouped.count, 2);
        assert_eq!(grouped.last_at, 1300);
        let other = store.raise_alert("auth_failures", "h:2", "x", 600, 1300).await.expect("raise");
        assert!(matches!(other, Raised::New(_)));
        let later = store.raise_alert("auth_failures", "h:1", "x", 600, 2000).await.expect("raise");
        assert!(matches!(later, Raised::New(_)), "a repeat after the interval opens a new alert");
        assert_eq!(store.alerts_since(0).await.expect("list").len(), 3);
    }

    #[tokio::test]
    async fn sign_in_addresses() {
        let store = memory_store().await;
        let user = store.create_user("a@example.org", "A", "h", &[Group::Admins], false, 1).await.expect("user");
        assert_eq!(store.note_sign_in_address(user.id, "h:1", 10).await.expect("note"), (true, false));
        assert_eq!(store.note_sign_in_address(user.id, "h:1", 11).await.expect("note"), (false, true));
        assert_eq!(store.note_sign_in_address(user.id, "h:2", 12).await.expect("note"), (true, true));
    }
}
