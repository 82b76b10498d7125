//! Time-based one-time passwords (TOTP, RFC 6238, built on HOTP of RFC
//! 4226) with HMAC-SHA1, six digits and a 30-second step, the parameters
//! that common authenticator apps support. The module also draws the QR
//! code that carries the secret to the app, and makes recovery codes for
//! users who lose the app.

mod base32;

use std::fmt;

use aws_lc_rs::hmac;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use qrcodegen::{QrCode, QrCodeEcc};

/// Seconds per TOTP time step.
const STEP_SECONDS: i64 = 30;

/// Digits per code.
const DIGITS: usize = 6;

/// Length of a generated secret: 160 bits, the size RFC 4226 recommends.
const SECRET_BYTES: usize = 20;

/// Shortest secret accepted from base32: 128 bits, the minimum of RFC 4226.
const MIN_SECRET_BYTES: usize = 16;

/// A TOTP shared secret. Its `Debug` output leaves the bytes out.
pub struct TotpSecret(Vec<u8>);

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(..)")
    }
}

impl TotpSecret {
    /// Generates a secret of 20 random bytes.
    pub fn generate() -> anyhow::Result<Self> {
        let mut bytes = vec![0u8; SECRET_BYTES];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("the random number generator failed"))?;
        Ok(TotpSecret(bytes))
    }

    /// Parses a secret in base32, as authenticator apps show it: upper or
    /// lower case, with spaces between groups and optional `=` padding. The
    /// error names the problem, for example a character outside A-Z and
    /// 2-7, or a secret shorter than 128 bits.
    pub fn from_base32(text: &str) -> Result<Self, String> {
        let bytes = base32::decode(text).map_err(|e| format!("invalid TOTP secret: {e}"))?;
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "invalid TOTP secret: it has {} bits, and at least {} are required",
                bytes.len() * 8,
                MIN_SECRET_BYTES * 8
            ));
        }
        Ok(TotpSecret(bytes))
    }

    /// Encodes the secret in base32 (RFC 4648) without padding.
    pub fn to_base32(&self) -> String {
        base32::encode(&self.0)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Computes the code of the time step that contains `unix` (seconds
    /// since 1970-01-01 UTC).
    pub fn code_at(&self, unix: i64) -> String {
        format_code(self.hotp(step_of(unix)))
    }

    /// Checks `code` against the time steps before, at and after the one
    /// that contains `unix`, so that a clock off by up to 30 seconds still
    /// works, and returns the step that matched. Steps at or before
    /// `last_used_step` are skipped, so a code works once only. The caller
    /// stores the returned step as the new `last_used_step`.
    ///
    /// `code` must be six ASCII digits, with white space around it allowed;
    /// anything else returns `None`. Every candidate step is compared in
    /// constant time.
    pub fn verify(&self, code: &str, unix: i64, last_used_step: Option<i64>) -> Option<i64> {
        let code = code.trim();
        if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }

        let current = step_of(unix);
        let mut matched = None;
        for step in [current - 1, current, current + 1] {
            if last_used_step.is_some_and(|last| step <= last) {
                continue;
            }
            let expected = format_code(self.hotp(step));
            let equal = aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), code.as_bytes()).is_ok();
            // All three steps are computed even after a match, so the time
            // taken does not reveal which one matched.
            if equal && matched.is_none() {
                matched = Some(step);
            }
        }
        matched
    }

    /// Builds the `otpauth://` URI that authenticator apps read from a QR
    /// code. `issuer` and `account` are percent-encoded, and the label is
    /// `issuer:account` as the Key URI Format of Google Authenticator
    /// describes.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> String {
        let issuer = utf8_percent_encode(issuer, URI_COMPONENT);
        let account = utf8_percent_encode(account, URI_COMPONENT);
        format!(
            "otpauth://totp/{issuer}:{account}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
            self.to_base32()
        )
    }

    /// Computes the HOTP value of RFC 4226, section 5.3, for counter `step`,
    /// before it is reduced to six digits.
    fn hotp(&self, step: i64) -> u32 {
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &self.0);
        let tag = hmac::sign(&key, &step.to_be_bytes());
        let digest = tag.as_ref();

        // Dynamic truncation: the low four bits of the last byte pick the
        // offset of four bytes, read big-endian without the top bit.
        let offset = usize::from(digest[digest.len() - 1] & 0x0f);
        let word = [digest[offset], digest[offset + 1], digest[offset + 2], digest[offset + 3]];
        u32::from_be_bytes(word) & 0x7fff_ffff
    }
}

/// Characters left as they are in a URI component: RFC 3986's unreserved set.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn step_of(unix: i64) -> i64 {
    unix.div_euclid(STEP_SECONDS)
}

fn format_code(hotp: u32) -> String {
    format!("{:06}", hotp % 1_000_000)
}

/// Draws `text` as a QR code (error correction level M) in a standalone
/// SVG document: a white background with a quiet zone of four modules and
/// the dark modules as one `<path>`, one SVG unit per module. The result
/// depends only on `text`.
pub fn qr_svg(text: &str) -> anyhow::Result<String> {
    let qr = QrCode::encode_text(text, QrCodeEcc::Medium)
        .map_err(|e| anyhow::anyhow!("the text of {} bytes does not fit in a QR code: {e}", text.len()))?;

    const QUIET_ZONE: i32 = 4;
    let size = qr.size();
    let mut path = String::new();
    for y in 0..size {
        for x in 0..size {
            if qr.get_module(x, y) {
                if !path.is_empty() {
                    path.push(' ');
                }
                path.push_str(&format!("M{},{}h1v1h-1z", x + QUIET_ZONE, y + QUIET_ZONE));
            }
        }
    }

    let full = size + 2 * QUIET_ZONE;
    Ok(format!(
        concat!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" viewBox="0 0 {full} {full}" "#,
            r#"shape-rendering="crispEdges" stroke="none">"#,
            r##"<rect width="100%" height="100%" fill="#ffffff"/>"##,
            r##"<path d="{path}" fill="#000000"/></svg>"##,
        ),
        full = full,
        path = path
    ))
}

/// Letters and digits of recovery codes: no 0, o, 1, l or i, which are
/// easily confused when read from paper.
const RECOVERY_ALPHABET: &[u8] = b"23456789abcdefghjkmnpqrstuvwxyz";

/// Characters per recovery code, shown in groups of four.
const RECOVERY_LENGTH: usize = 12;

/// Generates `count` recovery codes such as `k7qm-2xvd-9fpt`: 12 random
/// characters from a 31-character alphabet (about 59 bits), in groups of
/// four. Store them hashed and compare the result of
/// `normalise_recovery_code`.
pub fn recovery_codes(count: usize) -> anyhow::Result<Vec<String>> {
    (0..count).map(|_| recovery_code()).collect()
}

fn recovery_code() -> anyhow::Result<String> {
    // Bytes at or above 248 (= 31 * 8) are discarded, so that each letter
    // of the alphabet is equally likely.
    let limit = (256 / RECOVERY_ALPHABET.len() * RECOVERY_ALPHABET.len()) as u8;
    let mut characters = Vec::with_capacity(RECOVERY_LENGTH);
    while characters.len() < RECOVERY_LENGTH {
        let mut random = [0u8; 32];
        aws_lc_rs::rand::fill(&mut random).map_err(|_| anyhow::anyhow!("the random number generator failed"))?;
        for byte in random {
            if byte < limit && characters.len() < RECOVERY_LENGTH {
                characters.push(char::from(RECOVERY_ALPHABET[usize::from(byte) % RECOVERY_ALPHABET.len()]));
            }
        }
    }

    let groups: Vec<String> = characters.chunks(4).map(|group| group.iter().collect()).collect();
    Ok(groups.join("-"))
}

/// Brings a recovery code as the user typed it to the form it was
/// generated in, minus the dashes: lower case, without spaces or dashes.
pub fn normalise_recovery_code(input: &str) -> String {
    input.chars().filter(|c| !c.is_whitespace() && *c != '-').flat_map(char::to_lowercase).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns the key of the SHA1 test vectors of RFC 6238, appendix B.
    fn rfc_secret() -> TotpSecret {
        TotpSecret(b"12345678901234567890".to_vec())
    }

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 lists eight-digit codes, and a six-digit code is the
        // same number modulo 10^6.
        let vectors = [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ];
        let secret = rfc_secret();
        for (time, eight_digits) in vectors {
            assert_eq!(secret.code_at(time), eight_digits[2..], "time {time}");
        }
    }

    #[test]
    fn base32_round_trip() {
        let secret = TotpSecret::generate().expect("generate");
        assert_eq!(secret.as_bytes().len(), 20);
        let encoded = secret.to_base32();
        assert_eq!(encoded.len(), 32);
        let decoded = TotpSecret::from_base32(&encoded).expect("decode");
        assert_eq!(decoded.as_bytes(), secret.as_bytes());
    }

    #[test]
    fn from_base32_accepts_app_formats() {
        let expected = rfc_secret();
        assert_eq!(expected.to_base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        for text in [
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
            "gezd gnbv gy3t qojq gezd gnbv gy3t qojq",
            "gezdgnbvgy3tqojqgezdgnbvgy3tqojq====",
        ] {
            let secret = TotpSecret::from_base32(text).expect(text);
            assert_eq!(secret.as_bytes(), expected.as_bytes(), "{text}");
        }
    }

    #[test]
    fn from_base32_rejects_bad_secrets() {
        let error = TotpSecret::from_base32("GEZDGNBVGY3TQOJ1").unwrap_err();
        assert!(error.contains("'1'"), "{error}");
        let error = TotpSecret::from_base32("GEZDGNBVGY3TQOJQ").unwrap_err();
        assert!(error.contains("80 bits"), "{error}");
        assert!(TotpSecret::from_base32("").is_err());
    }

    #[test]
    fn debug_hides_secret() {
        let secret = rfc_secret();
        let debug = format!("{secret:?}");
        assert_eq!(debug, "TotpSecret(..)");
    }

    #[test]
    fn verify_accepts_one_step_either_side() {
        let secret = rfc_secret();
        let now = 1_111_111_111;
        let step = now / 30;
        for offset in [-1, 0, 1] {
            let code = secret.code_at(now + offset * 30);
            assert_eq!(secret.verify(&code, now, None), Some(step + offset), "offset {offset}");
        }
        let code = secret.code_at(now);
        assert_eq!(secret.verify(&format!(" {code}\n"), now, None), Some(step), "surrounding white space");
    }

    #[test]
    fn verify_refuses_two_steps_away() {
        let secret = rfc_secret();
        let now = 1_111_111_111;
        for offset in [-2, 2] {
            let code = secret.code_at(now + offset * 30);
            assert_eq!(secret.verify(&code, now, None), None, "offset {offset}");
        }
    }

    #[test]
    fn verify_refuses_replay() {
        let secret = rfc_secret();
        let now = 1_111_111_111;
        let code = secret.code_at(now);
        let step = secret.verify(&code, now, None).expect("first use");
        assert_eq!(secret.verify(&code, now, Some(step)), None, "same code again");
        assert_eq!(secret.verify(&code, now + 10, Some(step)), None, "same code later in the step");

        let earlier = secret.code_at(now - 30);
        assert_eq!(secret.verify(&earlier, now, Some(step)), None, "an older step after a newer one");

        let next = secret.code_at(now + 30);
        assert_eq!(secret.verify(&next, now + 30, Some(step)), Some(step + 1), "the next step");
    }

    #[test]
    fn verify_rejects_malformed_codes() {
        let secret = rfc_secret();
        let now = 1_111_111_111;
        let code = secret.code_at(now);
        for input in ["", "12345", "1234567", "12a456", "١٢٣٤٥٦", &format!("{code}0"), &format!("+{}", &code[1..])]
        {
            assert_eq!(secret.verify(input, now, None), None, "{input:?}");
        }
    }

    #[test]
    fn otpauth_uri_is_percent_encoded() {
        let uri = rfc_secret().otpauth_uri("LearnTrac School", "jane+doe@example.org");
        assert_eq!(
            uri,
            "otpauth://totp/LearnTrac%20School:jane%2Bdoe%40example.org?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=LearnTrac%20School&algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn qr_svg_is_standalone_and_deterministic() {
        let uri = rfc_secret().otpauth_uri("LearnTrac", "jane@example.org");
        let svg = qr_svg(&uri).expect("svg");
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<path").count(), 1);
        assert_eq!(qr_svg(&uri).expect("svg"), svg);
        assert_ne!(qr_svg("other text").expect("svg"), svg);

        let qr = QrCode::encode_text(&uri, QrCodeEcc::Medium).expect("qr");
        let full = qr.size() + 8;
        assert!(svg.contains(&format!(r#"viewBox="0 0 {full} {full}""#)), "{svg}");
        assert_eq!(qr.error_correction_level(), QrCodeEcc::Medium);
    }

    #[test]
    fn qr_svg_rejects_too_long_text() {
        let error = qr_svg(&"x".repeat(5000)).unwrap_err();
        assert!(error.to_string().contains("5000 bytes"), "{error}");
    }

    #[test]
    fn recovery_codes_format() {
        let codes = recovery_codes(10).expect("codes");
        assert_eq!(codes.len(), 10);
        for code in &codes {
            assert_eq!(code.len(), 14, "{code}");
            let groups: Vec<&str> = code.split('-').collect();
            assert_eq!(groups.len(), 3, "{code}");
            assert!(groups.iter().all(|group| group.len() == 4), "{code}");
            assert!(code.bytes().filter(|b| *b != b'-').all(|b| RECOVERY_ALPHABET.contains(&b)), "{code}");
        }
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());
        assert!(recovery_codes(0).expect("none").is_empty());
    }

    #[test]
    fn recovery_alphabet_avoids_confusable_characters() {
        assert_eq!(RECOVERY_ALPHABET.len(), 31);
        for confusable in b"0o1li" {
            assert!(!RECOVERY_ALPHABET.contains(confusable), "{}", char::from(*confusable));
        }
    }

    #[test]
    fn normalise_recovery_code_forms() {
        for input in ["k7qm-2xvd-9fpt", "K7QM-2XVD-9FPT", "k7qm 2xvd 9fpt", " k7qm2xvd9fpt ", "K7QM - 2xvd-9FPT"] {
            assert_eq!(normalise_recovery_code(input), "k7qm2xvd9fpt", "{input:?}");
        }
    }
}
