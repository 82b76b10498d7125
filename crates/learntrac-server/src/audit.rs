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

pub async fn verify(state: &AppState) -> learntrac_store::Result<AuditVerification> {
    state.store.verify_audit(&state.audit_key).await
}
