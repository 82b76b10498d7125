//! Recording administrative actions and changes of data in the audit
//! trail, with the request's id and client address, and verifying it.

use learntrac_store::{AuditEntry, AuditRecord, AuditVerification, Store};

use crate::AppState;

/// Who acted.
#[derive(Clone, Debug)]
pub enum Actor {
    User(i64),
    /// A service account, by its client id.
    Service(String),
    /// The operator at the command line; the name is the operating-system user.
    Cli,
    /// LearnTrac itself, such as a key generated at start-up.
    System,
    /// A client whose identity was not checked, such as a request the
    /// gateway refused before any role saw it.
    Anonymous,
}

impl Actor {
    pub fn label(&self) -> String {
        match self {
            Actor::User(id) => format!("user:{id}"),
            Actor::Service(client_id) => format!("service:{client_id}"),
            Actor::Cli => format!("cli:{}", operating_system_user()),
            Actor::System => "system".to_string(),
            Actor::Anonymous => "anonymous".to_string(),
        }
    }
}

/// Returns the name of the process's real user from `/etc/passwd`, or
/// `uid:N`. Unlike `$USER`, the caller cannot choose it.
fn operating_system_user() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(uid) = status.lines().find_map(|line| line.strip_prefix("Uid:")?.split_whitespace().next()) else {
        return "unknown".to_string();
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 2 && fields[2] == uid).then(|| fields[0].to_string())
        })
        .unwrap_or_else(|| format!("uid:{uid}"))
}

/// Appends a record to the trail and writes it to the `audit` log group.
/// The request id and client address come from the request being handled,
/// if any. A record that cannot be stored is logged as an error; the
/// change it describes has already happened.
pub async fn record(state: &AppState, actor: Actor, action: &str, target: &str, outcome: &str, details: &str) {
    let (request_id, client_address) = crate::gateway::current_request_origin();
    let entry = AuditEntry {
        actor: actor.label(),
        action: action.to_string(),
        target: target.to_string(),
        client_address,
        request_id,
        outcome: outcome.to_string(),
        details: details.to_string(),
    };
    append(&state.store, &state.audit_key, &entry, state.now()).await;
}

/// Appends `entry` under `key` and logs it; for callers without an
/// [`AppState`], such as the command line. Returns the stored record.
pub async fn append(store: &Store, key: &[u8], entry: &AuditEntry, now: i64) -> Option<AuditRecord> {
    match store.append_audit(key, entry, now).await {
        Ok(stored) => {
            tracing::info!(
            target: "learntrac::audit",
            seq = stored.seq,
            actor = %stored.entry.actor,
            action = %stored.entry.action,
            target_name = %stored.entry.target,
            request_id = %stored.entry.request_id,
            outcome = %stored.entry.outcome,
            details = %stored.entry.details,
            hash = %stored.hash,
            "audit"
            );
            Some(stored)
        }
        Err(error) => {
            tracing::error!(
                target: "learntrac::audit",
                action = %entry.action,
                target_name = %entry.target,
                error = %error,
                "cannot store an audit record"
            );
            None
        }
    }
}

/// Formats a record as the line the server writes to the `audit` log
/// group, for writers that have no log files of their own (the command line).
pub fn log_line(record: &AuditRecord) -> String {
    let line = serde_json::json!({
        "timestamp": crate::time::format_rfc3339(record.at),
        "level": "INFO",
        "fields": {
            "message": "audit",
            "seq": record.seq,
            "actor": record.entry.actor,
            "action": record.entry.action,
            "target_name": record.entry.target,
            "request_id": record.entry.request_id,
            "outcome": record.entry.outcome,
            "details": record.entry.details,
            "hash": record.hash,
        },
        "target": "learntrac::audit",
    });
    format!("{}\n", crate::logs::mask::mask_line(&line.to_string()))
}

/// Reads the sequence numbers and HMACs of the records in the `audit` log
/// group's files, in file order.
pub fn logged_records(log_dir: &std::path::Path) -> Vec<(i64, String)> {
    let mut logged = Vec::new();
    let _ = crate::logs::filter::scan_group(log_dir, "audit", None, None, |_, event| {
        if let (Some(seq), Some(hash)) = (event["fields"]["seq"].as_i64(), event["fields"]["hash"].as_str()) {
            logged.push((seq, hash.to_string()));
        }
    });
    logged
}

/// Verifies the chain in the database, then that every record in the
/// `audit` log files is in the database with the same HMAC. Removing the
/// newest records and rewinding the head row leaves a valid chain, and so
/// does writing new records over their numbers. Neither matches the log
/// lines.
pub async fn verify_with_logs(
    store: &Store,
    key: &[u8],
    log_dir: &std::path::Path,
) -> learntrac_store::Result<AuditVerification> {
    let verification = store.verify_audit(key).await?;
    if !matches!(verification, AuditVerification::Intact { .. }) {
        return Ok(verification);
    }
    let stored = store.audit_hashes().await?;
    let mismatch = logged_records(log_dir)
        .into_iter()
        .filter(|(seq, hash)| stored.get(seq) != Some(hash))
        .min_by_key(|(seq, _)| *seq);
    if let Some((seq, _)) = mismatch {
        let reason = if stored.contains_key(&seq) {
            "it differs from the copy in the audit log files".to_string()
        } else {
            "it is in the audit log files but not in the database".to_string()
        };
        return Ok(AuditVerification::Broken { seq, reason });
    }
    Ok(verification)
}

/// Records a change of `DATA_DIR/learntrac.toml` since the last start,
/// with the SHA-256 of its new contents (`none` when there is no file).
/// Settings from flags and the environment are not covered.
pub async fn record_settings_change(state: &AppState) {
    let path = state.config.data_dir.join("learntrac.toml");
    let digest = std::fs::read(&path).map_or_else(|_| "none".to_string(), |bytes| crate::sha256_hex_bytes(&bytes));
    let details = format!("learntrac.toml sha256 {digest}");
    let filter = learntrac_store::AuditFilter { action: Some("settings.change".into()), ..Default::default() };
    let last = match state.store.audit_records(&filter).await {
        Ok(records) => records.last().map(|record| record.entry.details.clone()),
        Err(error) => {
            tracing::error!(error = %error, "cannot read the audit trail for the last settings change");
            return;
        }
    };
    if last.as_deref() != Some(details.as_str()) {
        record(state, Actor::System, "settings.change", "learntrac.toml", "success", &details).await;
    }
}

pub async fn verify(state: &AppState) -> learntrac_store::Result<AuditVerification> {
    verify_with_logs(&state.store, &state.audit_key, &state.config.logs.dir).await
}
