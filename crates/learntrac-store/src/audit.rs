//! The audit trail, chained by HMAC-SHA256.
//!
//! Each record's `hash` is the HMAC, under a key the database does not
//! hold, of its fields and the previous record's `hash`. Someone who can
//! write to the database but lacks the key cannot add, remove, reorder or
//! change a record without [`Store::verify_audit`] naming the first bad one.

use aws_lc_rs::hmac;
use serde::Serialize;
use sqlx::Row;

use crate::{Result, Store, StoreError};

/// A new audit record's fields, as the caller reports them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AuditEntry {
    /// `user:ID`, `cli:NAME` or `system`.
    pub actor: String,
    /// A dotted verb such as `wiki.update` or `secret.put`.
    pub action: String,
    /// The object acted on, such as `wiki:WikiStart` or `user:7`.
    pub target: String,
    pub client_address: String,
    pub request_id: String,
    /// `success`, `denied` or `failure`.
    pub outcome: String,
    /// Further facts, as short text; never a secret.
    pub details: String,
}

/// A stored audit record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

/// Conditions of `audit list`; each one that is set must hold.
#[derive(Debug, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: Option<i64>,
}

/// The result of checking the chain.
#[derive(Debug, PartialEq)]
pub enum AuditVerification {
    Intact {
        records: i64,
    },
    /// `seq` is the first record that does not fit, and `reason` explains why.
    Broken {
        seq: i64,
        reason: String,
    },
}

fn chain_hash(key: &hmac::Key, seq: i64, at: i64, entry: &AuditEntry, prev_hash: &str) -> String {
    // A JSON array encodes the fields without ambiguity about where one ends.
    let fields = serde_json::json!([
        seq,
        at,
        entry.actor,
        entry.action,
        entry.target,
        entry.client_address,
        entry.request_id,
        entry.outcome,
        entry.details,
        prev_hash
    ]);
    let tag = hmac::sign(key, fields.to_string().as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn record_from_row(row: &sqlx::any::AnyRow) -> Result<AuditRecord> {
    Ok(AuditRecord {
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        entry: AuditEntry {
            actor: row.try_get("actor")?,
            action: row.try_get("action")?,
            target: row.try_get("target")?,
            client_address: row.try_get("client_address")?,
            request_id: row.try_get("request_id")?,
            outcome: row.try_get("outcome")?,
            details: row.try_get("details")?,
        },
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

impl Store {
    /// Appends a record at time `at`, chained to the last one under `key`.
    /// Raising the head's sequence number first locks it, so concurrent
    /// writers, in this process or another, append one after the other.
    pub async fn append_audit(&self, key: &[u8], entry: &AuditEntry, at: i64) -> Result<AuditRecord> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key);
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE audit_head SET seq = seq + 1 WHERE id = 1").execute(&mut *tx).await?;
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(&mut *tx).await?;
        let seq: i64 = head.try_get("seq")?;
        let prev_hash: String = head.try_get("hash")?;
        let hash = chain_hash(&key, seq, at, entry, &prev_hash);

        sqlx::query(
            "INSERT INTO audit_log (seq, at, actor, action, target, client_address, request_id, outcome, details, \
             prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(seq)
        .bind(at)
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.client_address)
        .bind(&entry.request_id)
        .bind(&entry.outcome)
        .bind(&entry.details)
        .bind(&prev_hash)
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1").bind(&hash).execute(&mut *tx).await?;
        tx.commit().await?;

        Ok(AuditRecord { seq, at, entry: entry.clone(), prev_hash, hash })
    }

    /// Returns the HMAC of every record by sequence number.
    pub async fn audit_hashes(&self) -> Result<std::collections::HashMap<i64, String>> {
        let rows = sqlx::query("SELECT seq, hash FROM audit_log").fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok((row.try_get("seq")?, row.try_get("hash")?))).collect()
    }

    /// Records matching `filter`, oldest first.
    pub async fn audit_records(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM audit_log WHERE ($1 = '' OR actor = $1) AND ($2 = '' OR action = $2) \
             AND ($3 = '' OR target = $3) AND at >= $4 AND at <= $5 ORDER BY seq LIMIT $6",
        )
        .bind(filter.actor.clone().unwrap_or_default())
        .bind(filter.action.clone().unwrap_or_default())
        .bind(filter.target.clone().unwrap_or_default())
        .bind(filter.since.unwrap_or(i64::MIN))
        .bind(filter.until.unwrap_or(i64::MAX))
        .bind(filter.limit.unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Checks every record against its predecessor and `key`, and the last
    /// one against the head.
    pub async fn verify_audit(&self, key: &[u8]) -> Result<AuditVerification> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key);
        let rows = sqlx::query("SELECT * FROM audit_log ORDER BY seq").fetch_all(&self.pool).await?;
        let mut expected_seq = 1;
        let mut prev_hash = String::new();
        for row in &rows {
            let record = record_from_row(row)?;
            if record.seq != expected_seq {
                return Ok(AuditVerification::Broken {
                    seq: expected_seq,
                    reason: format!("record {expected_seq} is missing; the next one is {}", record.seq),
                });
            }
            if record.prev_hash != prev_hash {
                return Ok(AuditVerification::Broken {
                    seq: record.seq,
                    reason: "it does not follow the record before it".to_string(),
                });
            }
            if chain_hash(&key, record.seq, record.at, &record.entry, &prev_hash) != record.hash {
                return Ok(AuditVerification::Broken {
                    seq: record.seq,
                    reason: "its contents or hash were changed".to_string(),
                });
            }
            prev_hash = record.hash;
            expected_seq += 1;
        }

        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_optional(&self.pool).await?;
        let Some(head) = head else {
            return Err(StoreError::Corrupt("the audit head row is missing".into()));
        };
        let head_seq: i64 = head.try_get("seq")?;
        let head_hash: String = head.try_get("hash")?;
        if head_seq != expected_seq - 1 || head_hash != prev_hash {
            return Ok(AuditVerification::Broken {
                seq: expected_seq,
                reason: format!("the trail ends at record {} but {head_seq} were written", expected_seq - 1),
            });
        }
        Ok(AuditVerification::Intact { records: expected_seq - 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::memory_store;

    const KEY: &[u8] = b"test audit key";

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            actor: "user:1".into(),
            action: action.into(),
            target: "wiki:WikiStart".into(),
            outcome: "success".into(),
            ..AuditEntry::default()
        }
    }

    async fn store_with_records(count: usize) -> Store {
        let store = memory_store().await;
        for i in 0..count {
            store.append_audit(KEY, &entry(&format!("action.{i}")), 100 + i as i64).await.expect("append");
        }
        store
    }

    #[tokio::test]
    async fn intact_chain_verifies() {
        let store = store_with_records(5).await;
        assert_eq!(store.verify_audit(KEY).await.expect("verify"), AuditVerification::Intact { records: 5 });
        let wrong_key = store.verify_audit(b"other key").await.expect("verify");
        assert!(matches!(wrong_key, AuditVerification::Broken { seq: 1, .. }), "{wrong_key:?}");
    }

    #[tokio::test]
    async fn edited_record_is_named() {
        let store = store_with_records(5).await;
        sqlx::query("UPDATE audit_log SET actor = 'user:2' WHERE seq = 3").execute(&store.pool).await.expect("edit");
        let result = store.verify_audit(KEY).await.expect("verify");
        assert!(matches!(result, AuditVerification::Broken { seq: 3, .. }), "{result:?}");
    }

    #[tokio::test]
    async fn removed_records_are_named() {
        let store = store_with_records(5).await;
        sqlx::query("DELETE FROM audit_log WHERE seq = 2").execute(&store.pool).await.expect("delete");
        let result = store.verify_audit(KEY).await.expect("verify");
        assert!(matches!(result, AuditVerification::Broken { seq: 2, .. }), "{result:?}");

        let store = store_with_records(5).await;
        sqlx::query("DELETE FROM audit_log WHERE seq = 5").execute(&store.pool).await.expect("delete last");
        let result = store.verify_audit(KEY).await.expect("verify");
        assert!(matches!(result, AuditVerification::Broken { seq: 5, .. }), "{result:?}");
    }

    #[tokio::test]
    async fn filter_selects_records() {
        let store = store_with_records(4).await;
        let filter = AuditFilter { action: Some("action.2".into()), ..AuditFilter::default() };
        let found = store.audit_records(&filter).await.expect("list");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].seq, 3);
        let since = AuditFilter { since: Some(102), ..AuditFilter::default() };
        assert_eq!(store.audit_records(&since).await.expect("list").len(), 2);
    }
}
