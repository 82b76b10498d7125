//! Recording administrative actions and changes of data in the audit
//! trail, with the request's id and client address, and verifying it.

use learntrac_store::{AuditEntry, AuditVerification, Store};

use crate::AppState;

/// Who acted.
pub enum Actor {
    User(i64),
    /// The operator at the command line; the name is the operating-system user.
    Cli,
    /// LearnTrac itself, such as a key generated at start-up.
    System,
}

impl Actor {
    pub fn label(&self) -> String {
        match self {
            Actor::User(id) => format!("user:{id}"),
            Actor::Cli => format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into())),
            Actor::System => "system".to_string(),
        }
    }
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
/// [`AppState`], such as the command line.
pub async fn append(store: &Store, key: &[u8], entry: &AuditEntry, now: i64) {
    match store.append_audit(key, entry, now).await {
        Ok(stored) => tracing::info!(
            target: "learntrac::audit",
            seq = stored.seq,
            actor = %stored.actor,
            action = %stored.action,
            target_name = %stored.target,
            request_id = %stored.request_id,
            outcome = %stored.outcome,
            details = %stored.details,
            "audit"
        ),
        Err(error) => tracing::error!(
            target: "learntrac::audit",
            action = %entry.action,
            target_name = %entry.target,
            error = %error,
            "cannot store an audit record"
        ),
    }
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
        Ok(records) => records.last().map(|record| record.details.clone()),
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
    state.store.verify_audit(&state.audit_key).await
}
