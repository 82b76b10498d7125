//! Alert rules. Each rule counts events per subject in a time window and
//! fires when the count reaches its threshold (and again at each further
//! multiple of it). A firing is stored in the `alerts` table, where repeats
//! within the grouping interval raise the count of the open alert. Only a
//! new alert is posted to the webhook, with retries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use learntrac_store::Raised;

use crate::AppState;

/// Thresholds and delivery of the alert rules.
#[derive(Clone, Debug)]
pub struct AlertSettings {
    /// HTTPS address that receives each new alert as JSON, or
    /// `secret:NAME` for an address kept in the secrets store (read as the
    /// gateway role).
    pub webhook: Option<String>,
    /// 401 and 403 responses to, and failed password checks from, one
    /// client address within a minute.
    pub auth_failures_per_minute: u32,
    /// Failed sign-ins for one account within `failed_sign_in_window_seconds`.
    pub failed_sign_ins: u32,
    pub failed_sign_in_window_seconds: i64,
    /// Rate-limited (429) responses to one client address within ten minutes.
    pub rate_limit_trips: u32,
    /// Repeats of a rule for one subject within this interval join the open alert.
    pub group_seconds: i64,
}

impl Default for AlertSettings {
    fn default() -> AlertSettings {
        AlertSettings {
            webhook: None,
            auth_failures_per_minute: 20,
            failed_sign_ins: 10,
            failed_sign_in_window_seconds: 600,
            rate_limit_trips: 5,
            group_seconds: 600,
        }
    }
}

/// The alert rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    AuthFailures,
    FailedSignIns,
    RateLimitTrips,
    AdminNewAddress,
    AuditChain,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::AuthFailures => "auth_failures",
            Rule::FailedSignIns => "failed_sign_ins",
            Rule::RateLimitTrips => "rate_limit_trips",
            Rule::AdminNewAddress => "admin_new_address",
            Rule::AuditChain => "audit_chain",
        }
    }
}

/// The counting windows of the rules that count.
pub struct Alerts {
    settings: AlertSettings,
    windows: crate::window::WindowCounter<(Rule, String)>,
    client: Option<reqwest::Client>,
    /// The webhook address, read from the secrets store when configured
    /// as `secret:NAME`.
    webhook_url: Option<String>,
    /// Deliveries by alert id: under way (false) or done (true), so that a
    /// repeat does not post an alert a second time, even before the
    /// database shows it as delivered.
    deliveries: Mutex<HashMap<i64, bool>>,
}

const WEBHOOK_ATTEMPTS: u32 = 4;

impl Alerts {
    /// `webhook_url` is the resolved `settings.webhook`.
    pub fn new(
        settings: AlertSettings,
        webhook_url: Option<String>,
        egress: &crate::egress::EgressSettings,
    ) -> Result<Alerts> {
        let client = match &webhook_url {
            Some(_) => Some(crate::egress::client(egress)?),
            None => None,
        };
        Ok(Alerts {
            settings,
            windows: crate::window::WindowCounter::default(),
            client,
            webhook_url,
            deliveries: Mutex::new(HashMap::new()),
        })
    }

    /// Counts an event; returns the count when it reaches a multiple of
    /// `threshold` within `window` seconds.
    fn count(&self, rule: Rule, subject: &str, window: i64, threshold: u32, now: Instant) -> Option<u32> {
        if threshold == 0 {
            return None;
        }
        let window = Duration::from_secs(window.unsigned_abs());
        let (count, _) = self.windows.hit((rule, subject.to_string()), window, now);
        (count % threshold == 0).then_some(count)
    }

    /// Counts a response for the auth-failure and rate-limit rules.
    pub fn observe_response(&self, state: &AppState, client: &str, status: u16, now: Instant) {
        let (rule, window, threshold) = match status {
            401 | 403 => (Rule::AuthFailures, 60, self.settings.auth_failures_per_minute),
            429 => (Rule::RateLimitTrips, 600, self.settings.rate_limit_trips),
            _ => return,
        };
        if let Some(count) = self.count(rule, client, window, threshold, now) {
            let details = format!("{count} failures (status {status} last) for client {client} within {window} s");
            spawn_fire(state, rule, client.to_string(), details);
        }
    }

    /// Counts a failed password check from `client` for the auth-failure
    /// rule: the token endpoint and the sign-in form respond to those with
    /// 400 and 200, not 401, but they are the same kind of attempt.
    pub fn observe_failed_password(&self, state: &AppState, client: &str, now: Instant) {
        let threshold = self.settings.auth_failures_per_minute;
        if let Some(count) = self.count(Rule::AuthFailures, client, 60, threshold, now) {
            let details = format!("{count} failures (a wrong password last) for client {client} within 60 s");
            spawn_fire(state, Rule::AuthFailures, client.to_string(), details);
        }
    }

    /// Counts a failed sign-in of an existing account.
    pub fn observe_failed_sign_in(&self, state: &AppState, user_id: i64, now: Instant) {
        let window = self.settings.failed_sign_in_window_seconds;
        let subject = format!("user:{user_id}");
        if let Some(count) = self.count(Rule::FailedSignIns, &subject, window, self.settings.failed_sign_ins, now) {
            spawn_fire(state, Rule::FailedSignIns, subject, format!("{count} failed sign-ins within {window} s"));
        }
    }
}

fn spawn_fire(state: &AppState, rule: Rule, subject: String, details: String) {
    let state = state.clone();
    tokio::spawn(async move {
        if let Err(error) = fire(&state, rule, &subject, &details).await {
            tracing::error!(rule = rule.name(), subject, error = format!("{error:#}"), "cannot record an alert");
        }
    });
}

/// Alerts when an administrator signs in from an address not seen for
/// them before; the first sign-in ever only records the address.
pub async fn check_admin_address(state: &AppState, user: &learntrac_store::User, client: &str) -> Result<()> {
    let (new_address, known_before) = state.store.note_sign_in_address(user.id, client, state.now()).await?;
    if new_address && known_before && user.groups.contains(&learntrac_store::Group::Admins) {
        let details =
            format!("administrator user:{} signed in from {client}, an address not seen for them before", user.id);
        fire(state, Rule::AdminNewAddress, &format!("user:{}", user.id), &details).await?;
    }
    Ok(())
}

/// Stores a firing, logs it on `learntrac::alert` and posts a new alert to
/// the webhook in the background.
pub async fn fire(state: &AppState, rule: Rule, subject: &str, details: &str) -> Result<()> {
    let group_seconds = state.alerts.settings.group_seconds;
    let raised = state.store.raise_alert(rule.name(), subject, details, group_seconds, state.now()).await?;
    let (alert, new) = match raised {
        Raised::New(alert) => (alert, true),
        Raised::Grouped(alert) => (alert, false),
    };
    // A grouped firing posts again while the alert is undelivered and no
    // delivery is under way, so a webhook that was down when the alert
    // opened still hears of it.
    let post = {
        let mut deliveries = state.alerts.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        let idle = !deliveries.contains_key(&alert.id);
        let post = state.alerts.client.is_some() && (new || !alert.delivered) && idle;
        if post {
            deliveries.insert(alert.id, false);
        }
        post
    };
    tracing::warn!(
        target: "learntrac::alert",
        rule = rule.name(),
        subject,
        count = alert.count,
        alert_id = alert.id,
        grouped = !new,
        details,
        "alert"
    );
    if let (true, Some(client), Some(url)) = (post, &state.alerts.client, &state.alerts.webhook_url) {
        let state = state.clone();
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(async move { deliver(&state, &client, &url, alert).await });
    }
    Ok(())
}

async fn deliver(state: &AppState, client: &reqwest::Client, url: &str, alert: learntrac_store::AlertRecord) {
    let id = alert.id;
    let delivered = deliver_with_retries(state, client, url, alert).await;
    let mut deliveries = state.alerts.deliveries.lock().unwrap_or_else(|p| p.into_inner());
    if delivered {
        deliveries.insert(id, true);
    } else {
        deliveries.remove(&id);
    }
}

async fn deliver_with_retries(
    state: &AppState,
    client: &reqwest::Client,
    url: &str,
    alert: learntrac_store::AlertRecord,
) -> bool {
    let body = serde_json::json!({
        "source": "learntrac",
        "instance": state.config.public_url,
        "id": alert.id,
        "rule": alert.rule,
        "subject": alert.subject,
        "count": alert.count,
        "first_at": alert.first_at,
        "last_at": alert.last_at,
        "details": alert.details,
    });
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        let failure = match client.post(url).json(&body).send().await {
            Ok(response) if response.status().is_success() => {
                if let Err(error) = state.store.mark_alert_delivered(alert.id).await {
                    tracing::error!(alert_id = alert.id, error = %error, "cannot mark an alert as delivered");
                }
                return true;
            }
            Ok(response) => format!("status {}", response.status()),
            Err(error) => crate::egress::error_chain(&error.without_url()),
        };
        // The address is not logged: webhook addresses often carry a token.
        tracing::warn!(alert_id = alert.id, attempt, failure, "alert webhook failed");
        if attempt < WEBHOOK_ATTEMPTS {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
        }
    }
    tracing::error!(
        alert_id = alert.id,
        attempts = WEBHOOK_ATTEMPTS,
        "alert webhook gave up; the alert stays in the alerts table"
    );
    false
}

/// Verifies the audit chain every `interval` and fires an alert while it
/// is broken.
pub async fn watch_audit_chain(state: AppState, interval: Duration) {
    loop {
        match crate::audit::verify(&state).await {
            Ok(learntrac_store::AuditVerification::Intact { .. }) => {}
            Ok(learntrac_store::AuditVerification::Broken { seq, reason }) => {
                let details = format!("audit record {seq}: {reason}");
                if let Err(error) = fire(&state, Rule::AuditChain, "audit_log", &details).await {
                    tracing::error!(error = format!("{error:#}"), "cannot record an alert");
                }
            }
            Err(error) => tracing::error!(error = format!("{error:#}"), "cannot verify the audit trail"),
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_fires_at_each_multiple_of_the_threshold() {
        let egress = crate::egress::EgressSettings::default();
        let alerts = Alerts::new(AlertSettings::default(), None, &egress).expect("alerts");
        let start = Instant::now();
        let later = start + Duration::from_secs(100);
        let fired: Vec<u32> = (0..7).filter_map(|_| alerts.count(Rule::AuthFailures, "h:1", 60, 3, start)).collect();
        assert_eq!(fired, vec![3, 6]);
        assert_eq!(alerts.count(Rule::AuthFailures, "h:2", 60, 3, start), None, "subjects count apart");
        let after_window: Vec<u32> =
            (0..3).filter_map(|_| alerts.count(Rule::AuthFailures, "h:1", 60, 3, later)).collect();
        assert_eq!(after_window, vec![3], "a new window starts from zero");
    }
}
