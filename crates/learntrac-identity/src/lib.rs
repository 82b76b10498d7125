//! Parts of LearnTrac's identity provider that need no database: password
//! hashing and the password policy, TOTP second factors with their QR code
//! and recovery codes, and outgoing mail.

// Tests report a failure by panicking.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod mail;
pub mod password;
pub mod totp;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
