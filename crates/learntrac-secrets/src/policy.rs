//! Least privilege for secrets: each role reads only the secrets the
//! policy grants it. A refused request is logged on the audit target.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::{Result, SecretError, SecretStore, SecretValue, validate_name};

/// A principal that reads secrets: one of LearnTrac's roles or a service
/// account.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Gateway,
    Trac,
    Api,
    Idp,
    /// A service account, written `service:NAME`.
    Service(String),
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Gateway => f.write_str("gateway"),
            Role::Trac => f.write_str("trac"),
            Role::Api => f.write_str("api"),
            Role::Idp => f.write_str("idp"),
            Role::Service(name) => write!(f, "service:{name}"),
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "gateway" => Ok(Role::Gateway),
            "trac" => Ok(Role::Trac),
            "api" => Ok(Role::Api),
            "idp" => Ok(Role::Idp),
            other => match other.strip_prefix("service:") {
                Some(name) if validate_name(name).is_ok() => Ok(Role::Service(name.to_string())),
                _ => Err(format!(
                    "role {other:?} is unknown; use gateway, trac, api, idp or service:NAME for a service account"
                )),
            },
        }
    }
}

/// Secrets LearnTrac itself keeps, with the roles that use each: the
/// identity provider signs tokens and encrypts TOTP secrets, the gateway and the identity provider
/// hash client addresses for the logs, and every role that changes data
/// appends to the audit trail.
pub const BUILTIN_GRANTS: &[(Role, &str)] = &[
    (Role::Idp, crate::TOKEN_SIGNING_KEY),
    (Role::Idp, crate::PREVIOUS_SIGNING_KEY),
    (Role::Idp, crate::MFA_KEY),
    (Role::Gateway, crate::LOG_ADDRESS_KEY),
    (Role::Idp, crate::LOG_ADDRESS_KEY),
    (Role::Trac, crate::AUDIT_KEY),
    (Role::Api, crate::AUDIT_KEY),
    (Role::Idp, crate::AUDIT_KEY),
];

/// The grants of secrets to roles.
#[derive(Clone, Debug, Default)]
pub struct SecretPolicy {
    grants: BTreeMap<Role, BTreeSet<String>>,
}

impl SecretPolicy {
    /// Builds the built-in grants plus `extra` (role name to secret names, as
    /// in the `[secret_policy]` table of the settings file).
    pub fn new(extra: &BTreeMap<String, Vec<String>>) -> Result<SecretPolicy, String> {
        let mut grants: BTreeMap<Role, BTreeSet<String>> = BTreeMap::new();
        for (role, name) in BUILTIN_GRANTS {
            grants.entry(role.clone()).or_default().insert((*name).to_string());
        }
        for (role, names) in extra {
            let role: Role = role.parse()?;
            for name in names {
                validate_name(name).map_err(|error| format!("[secret_policy] {role}: {error}"))?;
                grants.entry(role.clone()).or_default().insert(name.clone());
            }
        }
        Ok(SecretPolicy { grants })
    }

    pub fn allows(&self, role: &Role, name: &str) -> bool {
        self.grants.get(role).is_some_and(|names| names.contains(name))
    }
}

/// The secrets store limited to what one role may read.
#[derive(Clone)]
pub struct RoleSecrets {
    role: Role,
    policy: Arc<SecretPolicy>,
    store: Arc<SecretStore>,
}

impl RoleSecrets {
    pub fn new(role: Role, policy: Arc<SecretPolicy>, store: Arc<SecretStore>) -> RoleSecrets {
        RoleSecrets { role, policy, store }
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    /// Returns the secret if the policy grants it to this role; otherwise
    /// records the attempt on the audit target and returns
    /// [`SecretError::Denied`].
    pub fn get(&self, name: &str) -> Result<SecretValue> {
        self.check(name)?;
        self.store.get(name)
    }

    /// Like [`RoleSecrets::get`], with `None` for a granted secret that
    /// does not exist yet.
    pub fn get_optional(&self, name: &str) -> Result<Option<SecretValue>> {
        self.check(name)?;
        match self.store.get(name) {
            Ok(value) => Ok(Some(value)),
            Err(SecretError::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn check(&self, name: &str) -> Result<()> {
        if self.policy.allows(&self.role, name) {
            return Ok(());
        }
        tracing::warn!(
            target: "learntrac::audit",
            action = "secret.read",
            outcome = "denied",
            role = %self.role,
            secret = name,
            "a role requested a secret that the policy does not grant it"
        );
        Err(SecretError::Denied { role: self.role.to_string(), name: name.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_print() {
        for text in ["gateway", "trac", "api", "idp", "service:reports"] {
            assert_eq!(text.parse::<Role>().expect(text).to_string(), text);
        }
        assert!("admin".parse::<Role>().is_err());
        assert!("service:".parse::<Role>().is_err());
    }

    #[test]
    fn policy_grants_only_what_it_names() {
        let extra = BTreeMap::from([("api".to_string(), vec!["model-api-key".to_string()])]);
        let policy = SecretPolicy::new(&extra).expect("policy");
        assert!(policy.allows(&Role::Api, "model-api-key"));
        assert!(policy.allows(&Role::Idp, crate::TOKEN_SIGNING_KEY));
        assert!(!policy.allows(&Role::Api, crate::TOKEN_SIGNING_KEY));
        assert!(!policy.allows(&Role::Trac, "model-api-key"));
    }

    #[test]
    fn policy_rejects_unknown_role() {
        let extra = BTreeMap::from([("cron".to_string(), vec!["x".to_string()])]);
        let error = SecretPolicy::new(&extra).expect_err("unknown role");
        assert!(error.contains("cron"), "{error}");
    }
}
