//! Password hashing with Argon2id and the configurable password policy.

use std::collections::HashSet;
use std::sync::LazyLock;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine;

/// Hashes `password` with Argon2id, the default parameters and a random
/// 16-byte salt, and returns the PHC string to store.
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

/// Generates a 30-character one-time password: a fixed prefix and suffix
/// that supply an upper-case letter, a lower-case letter, a digit and a
/// symbol, around 24 random base64url characters (144 bits). It meets
/// every policy whose `min_length` is at most 30.
pub fn generate_one_time() -> anyhow::Result<String> {
    let mut random = [0u8; 18];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| anyhow::anyhow!("the random number generator failed"))?;
    let middle = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random);
    Ok(format!("Lt-{middle}-9a"))
}

/// The rules a new password must meet, the `[password_policy]` settings.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordPolicy {
    /// Minimum number of characters (Unicode scalar values).
    pub min_length: usize,
    /// At least one upper-case letter, in any script.
    pub require_upper: bool,
    /// At least one lower-case letter, in any script.
    pub require_lower: bool,
    /// At least one digit.
    pub require_digit: bool,
    /// At least one character that is neither a letter, a digit nor white space.
    pub require_symbol: bool,
    /// Rejects passwords on the built-in list of common passwords, also with
    /// digits and symbols added at either end, and passwords made of the
    /// account's email address or its local part.
    pub reject_common: bool,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        PasswordPolicy {
            min_length: 8,
            require_upper: true,
            require_lower: true,
            require_digit: true,
            require_symbol: true,
            reject_common: true,
        }
    }
}

impl PasswordPolicy {
    /// Checks `password` against the policy. `email` is the account's
    /// address, if known, so that its local part can be rejected too.
    ///
    /// The error is a sentence for the user that names every unmet rule,
    /// such as "the password needs at least 8 characters, a digit".
    pub fn check(&self, password: &str, email: Option<&str>) -> Result<(), String> {
        let mut missing = Vec::new();
        if password.chars().count() < self.min_length {
            missing.push(format!("at least {} characters", self.min_length));
        }
        if self.require_upper && !password.chars().any(char::is_uppercase) {
            missing.push("an upper-case letter".to_string());
        }
        if self.require_lower && !password.chars().any(char::is_lowercase) {
            missing.push("a lower-case letter".to_string());
        }
        if self.require_digit && !password.chars().any(char::is_numeric) {
            missing.push("a digit".to_string());
        }
        if self.require_symbol && !password.chars().any(is_symbol) {
            missing.push("a symbol".to_string());
        }
        if !missing.is_empty() {
            return Err(format!("the password needs {}", missing.join(", ")));
        }

        if self.reject_common {
            if is_common(password) {
                return Err("the password is too common: it is on a list of passwords that attackers try first".into());
            }
            if email.is_some_and(|email| matches_email(password, email)) {
                return Err("the password must not be the email address or its part before the @".into());
            }
        }
        Ok(())
    }

    /// Describes the character rules in one sentence for forms, such as "At
    /// least 8 characters with upper and lower case letters, a digit and a
    /// symbol." The sentence leaves out `reject_common`, whose error
    /// explains itself.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match (self.require_upper, self.require_lower) {
            (true, true) => parts.push("upper and lower case letters"),
            (true, false) => parts.push("an upper-case letter"),
            (false, true) => parts.push("a lower-case letter"),
            (false, false) => {}
        }
        if self.require_digit {
            parts.push("a digit");
        }
        if self.require_symbol {
            parts.push("a symbol");
        }

        let mut sentence = format!("At least {} characters", self.min_length);
        if let Some((last, rest)) = parts.split_last() {
            sentence.push_str(" with ");
            if !rest.is_empty() {
                sentence.push_str(&rest.join(", "));
                sentence.push_str(" and ");
            }
            sentence.push_str(last);
        }
        sentence.push('.');
        sentence
    }
}

fn is_symbol(c: char) -> bool {
    !c.is_alphanumeric() && !c.is_whitespace()
}

/// About 1,350 widely used weak passwords, lower case, one a line.
static COMMON: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| include_str!("common-passwords.txt").lines().filter(|line| !line.is_empty()).collect());

/// True when `password`, lower-cased, is on the common list, either as it
/// is or with the digits and symbols at both ends removed, so that
/// "Password1!" and "!Qwerty2024" count as common.
fn is_common(password: &str) -> bool {
    let lower = password.to_lowercase();
    let core = lower.trim_matches(|c: char| !c.is_alphabetic());
    COMMON.contains(lower.as_str()) || COMMON.contains(core)
}

/// True when `password` is the whole address, or has the same letters as
/// the address's local part once every other character is removed, so
/// "Jane.Doe1990!" matches "jane_doe@example.org".
fn matches_email(password: &str, email: &str) -> bool {
    let lower = password.to_lowercase();
    if lower == email.to_lowercase() {
        return true;
    }
    let local = email.rsplit_once('@').map_or(email, |(local, _)| local);
    let local_letters = letters_of(local);
    !local_letters.is_empty() && letters_of(&lower) == local_letters
}

fn letters_of(text: &str) -> String {
    text.chars().filter(|c| c.is_alphabetic()).flat_map(char::to_lowercase).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only_length(min_length: usize) -> PasswordPolicy {
        PasswordPolicy {
            min_length,
            require_upper: false,
            require_lower: false,
            require_digit: false,
            require_symbol: false,
            reject_common: false,
        }
    }

    #[test]
    fn hash_and_verify() {
        let stored = hash("Correct-horse-9").expect("hash");
        assert!(stored.starts_with("$argon2id$"));
        assert!(verify("Correct-horse-9", Some(&stored)));
        assert!(!verify("wrong", Some(&stored)));
        assert!(!verify("Correct-horse-9", None));
        assert!(!verify("anything", Some("not a PHC string")));
        assert!(DUMMY_HASH.parse::<PasswordHash>().is_ok(), "the dummy hash is a valid PHC string");
    }

    #[test]
    fn one_time_password_meets_strict_policy() {
        let policy = PasswordPolicy { min_length: 30, ..PasswordPolicy::default() };
        let first = generate_one_time().expect("generate");
        let second = generate_one_time().expect("generate");
        assert_eq!(first.chars().count(), 30, "{first}");
        assert_eq!(policy.check(&first, Some("jane@example.org")), Ok(()));
        assert_ne!(first, second);
    }

    #[test]
    fn error_names_every_unmet_rule() {
        let error = PasswordPolicy::default().check("short", None).unwrap_err();
        assert!(error.starts_with("the password needs "), "{error}");
        assert!(error.contains("at least 8 characters"), "{error}");
        assert!(error.contains("an upper-case letter"), "{error}");
        assert!(error.contains("a digit"), "{error}");
        assert!(error.contains("a symbol"), "{error}");
        assert!(!error.contains("lower-case"), "{error}");
    }

    #[test]
    fn min_length_counts_characters() {
        let policy = only_length(8);
        assert!(policy.check("abcdefg", None).is_err());
        assert_eq!(policy.check("abcdefgh", None), Ok(()));
        // Eight characters, sixteen bytes in UTF-8.
        assert_eq!(policy.check("ääääääää", None), Ok(()));
        assert!(policy.check("äääääää", None).is_err());
    }

    #[test]
    fn each_rule_alone() {
        let upper = PasswordPolicy { require_upper: true, ..only_length(1) };
        assert_eq!(upper.check("abc", None), Err("the password needs an upper-case letter".into()));
        assert_eq!(upper.check("aBc", None), Ok(()));

        let lower = PasswordPolicy { require_lower: true, ..only_length(1) };
        assert_eq!(lower.check("ABC", None), Err("the password needs a lower-case letter".into()));
        assert_eq!(lower.check("ABc", None), Ok(()));

        let digit = PasswordPolicy { require_digit: true, ..only_length(1) };
        assert_eq!(digit.check("abc", None), Err("the password needs a digit".into()));
        assert_eq!(digit.check("ab3", None), Ok(()));

        let symbol = PasswordPolicy { require_symbol: true, ..only_length(1) };
        assert_eq!(symbol.check("ab c", None), Err("the password needs a symbol".into()), "a space is no symbol");
        assert_eq!(symbol.check("ab#c", None), Ok(()));
    }

    #[test]
    fn non_ascii_letters_count_as_letters() {
        let policy = PasswordPolicy { reject_common: false, ..PasswordPolicy::default() };
        assert_eq!(policy.check("Ärger-über-7", None), Ok(()));
        assert_eq!(policy.check("ÄÖÜ-ßäö-1", None), Ok(()), "ß and ä are lower case, Ä upper case");
        let error = policy.check("éèêë7-ab", None).unwrap_err();
        assert_eq!(error, "the password needs an upper-case letter");
        let error = PasswordPolicy { require_symbol: true, ..only_length(1) }.check("Ωμέγα", None).unwrap_err();
        assert_eq!(error, "the password needs a symbol", "Greek letters are letters, not symbols");
    }

    #[test]
    fn common_passwords_rejected() {
        let policy = PasswordPolicy::default();
        for password in ["Password1!", "!Qwerty2024", "P@ssw0rd", "Summer2024!", "Letmein#12", "#1Dragon"] {
            let error = policy.check(password, None).expect_err(password);
            assert!(error.contains("too common"), "{password}: {error}");
        }
    }

    #[test]
    fn common_check_is_off_when_disabled() {
        let policy = PasswordPolicy { reject_common: false, ..PasswordPolicy::default() };
        assert_eq!(policy.check("Password1!", Some("password@example.org")), Ok(()));
    }

    #[test]
    fn email_local_part_rejected() {
        let policy = PasswordPolicy::default();
        let email = Some("jane.doe@example.org");
        for password in ["Jane.Doe1990!", "JaneDoe#2", "2024-jane-DOE!"] {
            let error = policy.check(password, email).expect_err(password);
            assert!(error.contains("email address"), "{password}: {error}");
        }

        let without_digit = PasswordPolicy { require_digit: false, ..policy.clone() };
        assert!(without_digit.check("Jane.Doe@example.org", email).is_err(), "the whole address");

        assert_eq!(policy.check("Jane.Doe1990!", Some("12345@example.org")), Ok(()), "local part without letters");
        assert_eq!(policy.check("Jane.Doe1990!", None), Ok(()), "no address known");
    }

    #[test]
    fn strong_password_accepted() {
        let policy = PasswordPolicy::default();
        assert_eq!(policy.check("Velvet-Harbour-42", Some("jane@example.org")), Ok(()));
        assert_eq!(policy.check("tq9#Lm2!xR", None), Ok(()));
    }

    #[test]
    fn common_list_is_large_and_clean() {
        let text = include_str!("common-passwords.txt");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() >= 1000, "{} entries", lines.len());
        assert_eq!(COMMON.len(), lines.len(), "the list has duplicates or empty lines");
        for line in &lines {
            assert_eq!(*line, line.to_lowercase(), "entries are lower case");
            assert_eq!(*line, line.trim(), "entries have no surrounding white space");
        }
        for entry in ["password", "qwerty", "letmein", "iloveyou", "dragon", "trustno1", "123456"] {
            assert!(COMMON.contains(entry), "{entry} is on the list");
        }
    }

    #[test]
    fn describe_lists_rules() {
        assert_eq!(
            PasswordPolicy::default().describe(),
            "At least 8 characters with upper and lower case letters, a digit and a symbol."
        );
        assert_eq!(only_length(12).describe(), "At least 12 characters.");
        let digit_only = PasswordPolicy { require_digit: true, ..only_length(10) };
        assert_eq!(digit_only.describe(), "At least 10 characters with a digit.");
        let upper_symbol = PasswordPolicy { require_upper: true, require_symbol: true, ..only_length(8) };
        assert_eq!(upper_symbol.describe(), "At least 8 characters with an upper-case letter and a symbol.");
    }

    #[test]
    fn policy_from_toml_defaults() {
        let policy: PasswordPolicy = toml::from_str("min_length = 12").expect("parse");
        assert_eq!(policy.min_length, 12);
        assert!(policy.require_upper);
        assert!(policy.require_lower);
        assert!(policy.require_digit);
        assert!(policy.require_symbol);
        assert!(policy.reject_common);

        let error = toml::from_str::<PasswordPolicy>("min_lenght = 12").expect_err("unknown field");
        assert!(error.to_string().contains("min_lenght"), "{error}");
    }
}
