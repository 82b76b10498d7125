//! Password hashing with Argon2id.

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};

/// Minimum password length accepted by `user add` and the change form.
pub const MIN_LENGTH: usize = 8;

pub fn hash(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| anyhow::anyhow!("the random number generator failed"))?;
    let hash = Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("password hashing failed: {e}"))?;
    Ok(hash.to_string())
}

/// Checks `password` against a stored PHC hash. With `None` it verifies
/// against a fixed dummy hash, so that a sign-in for an unknown account
/// takes as long as one for a known account.
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    let known = stored.is_some();
    let Ok(parsed) = stored.unwrap_or(DUMMY_HASH).parse::<PasswordHash>() else {
        tracing::error!(target: "learntrac::security", "a stored password hash is not a valid PHC string");
        return false;
    };
    let matched = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
    matched && known
}

/// An Argon2id hash with the default parameters, of a random password
/// nobody knows, checked when the account does not exist.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$2Gr4Lzp4VgDeSHUQVTL9rj8ny2F4IDXxuYqDCXUsr7A";

/// Checks the password policy: at least 8 characters with an upper-case
/// letter, a lower-case letter, a digit and a symbol.
pub fn check_policy(password: &str) -> Result<(), String> {
    let mut missing = Vec::new();
    if password.chars().count() < MIN_LENGTH {
        missing.push(format!("at least {MIN_LENGTH} characters"));
    }
    if !password.chars().any(char::is_uppercase) {
        missing.push("an upper-case letter".to_string());
    }
    if !password.chars().any(char::is_lowercase) {
        missing.push("a lower-case letter".to_string());
    }
    if !password.chars().any(|c| c.is_ascii_digit()) {
        missing.push("a digit".to_string());
    }
    if !password.chars().any(|c| !c.is_alphanumeric() && !c.is_whitespace()) {
        missing.push("a symbol".to_string());
    }
    if missing.is_empty() { Ok(()) } else { Err(format!("the password needs {}", missing.join(", "))) }
}

/// Generates a one-time password that meets the policy.
pub fn generate_one_time() -> String {
    format!("Lt-{}-9a", crate::random_token(15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let stored = hash("Correct-horse-9").expect("hash");
        assert!(stored.starts_with("$argon2id$"));
        assert!(verify("Correct-horse-9", Some(&stored)));
        assert!(!verify("wrong", Some(&stored)));
        assert!(!verify("Correct-horse-9", None));
        assert!(DUMMY_HASH.parse::<PasswordHash>().is_ok(), "the dummy hash is a valid PHC string");
    }

    #[test]
    fn policy_names_what_is_missing() {
        assert!(check_policy("Aa1!aaaa").is_ok());
        let error = check_policy("short").unwrap_err();
        assert!(error.contains("8 characters"), "{error}");
        assert!(error.contains("digit"), "{error}");
        assert!(error.contains("symbol"), "{error}");
        assert!(check_policy(&generate_one_time()).is_ok());
    }
}
