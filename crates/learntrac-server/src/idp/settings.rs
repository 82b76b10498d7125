//! The `[identity]` table of learntrac.toml: the user pool's rules, mail,
//! and which issuer's tokens the services accept.

use std::collections::BTreeMap;
use std::path::PathBuf;

use learntrac_store::Group;
use serde::Deserialize;

/// Clock difference allowed when checking `exp` and `nbf`, at most.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 60;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentitySettings {
    /// Whether anyone may create an account at /signup.
    pub self_sign_up: bool,
    pub password_policy: learntrac_identity::password::PasswordPolicy,
    /// Members of these groups must set up TOTP before using LearnTrac.
    pub mfa_required_groups: Vec<Group>,
    /// Failed sign-ins of one address after which each further attempt waits.
    pub slow_after_failures: i64,
    /// Failed sign-ins of one address after which it is locked.
    pub lock_after_failures: i64,
    pub lock_minutes: i64,
    /// Failures older than this are forgotten.
    pub failure_window_minutes: i64,
    /// Lifetime of ID tokens, in seconds.
    pub id_token_seconds: i64,
    /// A browser session ends after this long without a request.
    pub session_idle_seconds: i64,
    pub clock_skew_seconds: i64,
    /// How long a mailed code (email verification, password reset) works.
    pub code_minutes: i64,
    /// Sender of LearnTrac's mail.
    pub mail_from: String,
    /// The mail server; without one, mail is written to DATA_DIR/mail/outbox.
    pub smtp: Option<learntrac_identity::mail::SmtpSettings>,
    /// Access tokens of the built-in provider are accepted from these
    /// clients only; empty accepts every registered client.
    pub accepted_clients: Vec<String>,
    /// Accept an external provider's tokens on the API instead of the
    /// built-in provider's.
    pub external: Option<ExternalIssuer>,
}

impl Default for IdentitySettings {
    fn default() -> IdentitySettings {
        IdentitySettings {
            self_sign_up: true,
            password_policy: Default::default(),
            mfa_required_groups: vec![Group::Admins],
            slow_after_failures: 3,
            lock_after_failures: 10,
            lock_minutes: 15,
            failure_window_minutes: 15,
            id_token_seconds: 3600,
            session_idle_seconds: 3600,
            clock_skew_seconds: 30,
            code_minutes: 15,
            mail_from: "LearnTrac <noreply@localhost>".into(),
            smtp: None,
            accepted_clients: Vec::new(),
            external: None,
        }
    }
}

/// An OpenID Connect provider whose access tokens the services accept,
/// such as a managed user pool.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalIssuer {
    /// The `iss` of its tokens, exactly.
    pub issuer: String,
    /// Accepted `client_id` (or `aud`) values.
    pub client_ids: Vec<String>,
    /// Address of its JSON Web Key Set (https://).
    pub jwks_url: String,
    /// The claim that lists the user's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The provider's group names mapped to LearnTrac's groups; a group
    /// named like one of LearnTrac's maps to it without an entry.
    #[serde(default)]
    pub group_map: BTreeMap<String, Group>,
    /// PEM file of the CA that signed the JWKS server's certificate, when
    /// it is not a public one.
    pub ca_file: Option<PathBuf>,
}

fn default_groups_claim() -> String {
    "cognito:groups".into()
}

impl IdentitySettings {
    /// Checks the values; the error names the setting and the fix.
    pub fn validate(&self) -> Result<(), String> {
        if !(0..=MAX_CLOCK_SKEW_SECONDS).contains(&self.clock_skew_seconds) {
            return Err(format!(
                "clock_skew_seconds = {} is out of range; use 0 to {MAX_CLOCK_SKEW_SECONDS}",
                self.clock_skew_seconds
            ));
        }
        for (name, value) in [
            ("slow_after_failures", self.slow_after_failures),
            ("lock_after_failures", self.lock_after_failures),
            ("lock_minutes", self.lock_minutes),
            ("failure_window_minutes", self.failure_window_minutes),
            ("id_token_seconds", self.id_token_seconds),
            ("session_idle_seconds", self.session_idle_seconds),
            ("code_minutes", self.code_minutes),
        ] {
            if value < 1 {
                return Err(format!("{name} = {value} must be at least 1"));
            }
        }
        if self.slow_after_failures > self.lock_after_failures {
            return Err(format!(
                "slow_after_failures = {} must not exceed lock_after_failures = {}",
                self.slow_after_failures, self.lock_after_failures
            ));
        }
        if let Some(external) = &self.external {
            if !external.jwks_url.starts_with("https://") {
                return Err(format!("external.jwks_url {:?} must start with https://", external.jwks_url));
            }
            if external.issuer.is_empty() || external.client_ids.is_empty() {
                return Err("external needs issuer and at least one entry in client_ids".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert_eq!(IdentitySettings::default().validate(), Ok(()));
        let skew = IdentitySettings { clock_skew_seconds: 61, ..Default::default() };
        assert!(skew.validate().unwrap_err().contains("clock_skew_seconds"));
        let parsed: IdentitySettings = toml::from_str(
            "[external]\nissuer = \"https://idp\"\nclient_ids = [\"abc\"]\njwks_url = \"http://idp/jwks\"\n",
        )
        .expect("parse");
        assert!(parsed.validate().unwrap_err().contains("https://"));
        assert!(toml::from_str::<IdentitySettings>("mfa_required_groups = [\"wizards\"]").is_err());
    }
}
