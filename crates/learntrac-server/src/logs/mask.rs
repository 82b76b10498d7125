//! Masking of personal data and credentials in log lines.
//!
//! Every line is checked on its way out, whatever wrote it: email
//! addresses keep their first character and domain (`a***@example.org`),
//! and anything shaped like a JWT becomes `[token]`. Client addresses are
//! masked where they are logged, by [`AddressMasker`], because a bare IP
//! address cannot be recognised reliably inside free text.

use std::borrow::Cow;
use std::net::IpAddr;

/// The form client addresses take in logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressMode {
    /// A keyed hash: the same address always gives the same 16 hex digits,
    /// which cannot be turned back into the address without the key.
    Hash,
    /// The network part only: /24 for IPv4, /48 for IPv6.
    Truncate,
    /// The whole address; this turns masking off.
    Full,
}

impl std::str::FromStr for AddressMode {
    type Err = String;

    fn from_str(text: &str) -> Result<AddressMode, String> {
        match text {
            "hash" => Ok(AddressMode::Hash),
            "truncate" => Ok(AddressMode::Truncate),
            "full" => Ok(AddressMode::Full),
            other => Err(format!("log_client_address {other:?} is invalid; use hash, truncate or full")),
        }
    }
}

/// Turns client addresses into their logged form.
#[derive(Clone)]
pub struct AddressMasker {
    mode: AddressMode,
    key: aws_lc_rs::hmac::Key,
}

impl AddressMasker {
    /// `key` keys the hash; it should be secret and stable, so that one
    /// address gives the same value across restarts.
    pub fn new(mode: AddressMode, key: &[u8]) -> AddressMasker {
        AddressMasker { mode, key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key) }
    }

    pub fn mode(&self) -> AddressMode {
        self.mode
    }

    pub fn mask(&self, address: IpAddr) -> String {
        match self.mode {
            AddressMode::Full => address.to_string(),
            AddressMode::Truncate => match address {
                IpAddr::V4(v4) => {
                    let [a, b, c, _] = v4.octets();
                    format!("{a}.{b}.{c}.0/24")
                }
                IpAddr::V6(v6) => {
                    let segments = v6.segments();
                    format!("{:x}:{:x}:{:x}::/48", segments[0], segments[1], segments[2])
                }
            },
            AddressMode::Hash => {
                let tag = aws_lc_rs::hmac::sign(&self.key, address.to_string().as_bytes());
                let hex: String = tag.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
                format!("h:{hex}")
            }
        }
    }
}

/// Masks an email address: the first character of the local part, then
/// `***@` and the domain.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_string(),
    }
}

fn is_local_char(c: u8) -> bool {
    // '/' is allowed in addresses but appears in paths far more often.
    c.is_ascii_alphanumeric() || b".!#$%&'*+=?^_`{|}~-".contains(&c)
}

fn is_domain_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'.' || c == b'-'
}

fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// Decodes the percent escapes that can hide an address or a token from
/// the scan: `%40` (`@`) and `%2E` (`.`), also encoded again as `%2540`
/// and `%252E`. One pass over the line.
fn decode_hiding_escapes(line: &str) -> Cow<'_, str> {
    let bytes = line.as_bytes();
    let escape_at = |i: usize| -> Option<(usize, char)> {
        let hex = |start: usize| bytes.get(start..start + 2).map(|pair| pair.to_ascii_lowercase());
        if bytes.get(i) != Some(&b'%') {
            return None;
        }
        let (skip, code) = match hex(i + 1).as_deref() {
            Some(b"25") => (5, hex(i + 3)),
            _ => (3, hex(i + 1)),
        };
        match code.as_deref() {
            Some(b"40") => Some((skip, '@')),
            Some(b"2e") => Some((skip, '.')),
            _ => None,
        }
    };
    if !(0..bytes.len()).any(|i| escape_at(i).is_some()) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some((skip, plain)) = escape_at(i) {
            out.push_str(&line[copied..i]);
            out.push(plain);
            i += skip;
            copied = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&line[copied..]);
    Cow::Owned(out)
}

/// Masks every email address and JWT in `line`, also when they are
/// percent-encoded. Lines without `@`, `%40` or `eyJ` (the base64 of a
/// JSON header) are returned unchanged. Works on bytes and cuts only at
/// ASCII characters, so any UTF-8 text is safe.
pub fn mask_line(line: &str) -> Cow<'_, str> {
    if !line.contains('@') && !line.contains("eyJ") && !line.contains('%') {
        return Cow::Borrowed(line);
    }
    let decoded = decode_hiding_escapes(line);
    if !decoded.contains('@') && !decoded.contains("eyJ") {
        return Cow::Borrowed(line);
    }
    let text: &str = &decoded;
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'@' {
            let mut start = i;
            while start > copied && is_local_char(bytes[start - 1]) {
                start -= 1;
            }
            let mut end = i + 1;
            while end < bytes.len() && is_domain_char(bytes[end]) {
                end += 1;
            }
            // A domain starts with a letter or digit and has at least two
            // characters: "a@b" and "1.2@" are left alone.
            let domain = &bytes[i + 1..end];
            let domain_ok = domain.len() >= 2 && domain[0].is_ascii_alphanumeric();
            if start < i && domain_ok {
                out.push_str(&text[copied..start]);
                out.push_str(&mask_email(&text[start..end]));
                copied = end;
                i = end;
                continue;
            }
        } else if bytes[i..].starts_with(b"eyJ") && (i == 0 || !is_token_char(bytes[i - 1])) {
            let mut end = i;
            let mut dots = 0;
            while end < bytes.len() && (is_token_char(bytes[end]) || bytes[end] == b'.') {
                dots += usize::from(bytes[end] == b'.');
                end += 1;
            }
            if dots >= 2 {
                out.push_str(&text[copied..i]);
                out.push_str("[token]");
                copied = end;
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_masked() {
        assert_eq!(mask_line(r#"{"email":"ann.lee@example.org","x":1}"#), r#"{"email":"a***@example.org","x":1}"#);
        assert_eq!(mask_line("created admin@localhost today"), "created a***@localhost today");
        assert_eq!(mask_line("two: a@b.io, c@d.io"), "two: a***@b.io, c***@d.io");
    }

    #[test]
    fn text_without_addresses_is_unchanged() {
        for line in ["no at sign", "user @ host", "a@b", "version 1.2@", "100% done"] {
            assert_eq!(mask_line(line), line);
        }
    }

    #[test]
    fn non_ascii_text_is_safe() {
        assert_eq!(mask_line("/\u{fc}@x.io"), "/\u{fc}@x.io", "no local part in ASCII: nothing to mask");
        assert_eq!(mask_line("Grüße an ann@example.org"), "Grüße an a***@example.org");
        assert_eq!(mask_line("ü@é eyJ ü"), "ü@é eyJ ü");
        for line in ["\u{fc}@\u{fc}", "é@eyJé.é.é", "日本@日本.jp eyJ日.本.語"] {
            let _ = mask_line(line);
        }
    }

    #[test]
    fn encoded_addresses_and_tokens_are_masked() {
        assert_eq!(mask_line("/api/v1/users/ann%40example.org"), "/api/v1/users/a***@example.org");
        assert_eq!(mask_line("/x/eyJhbGciOi%2EeyJzdWIi%2Esig"), "/x/[token]");
        assert_eq!(mask_line("/wiki/%C3%BC@example.org"), "/wiki/%***@example.org", "the path before stays");
        assert_eq!(mask_line("mail ann@intranet now"), "mail a***@intranet now");
        assert_eq!(mask_line("/u/ann%2540example%252Eorg"), "/u/a***@example.org");
        let long = format!("/x/{}@", "%2e".repeat(5000));
        assert_eq!(mask_line(&long), format!("/x/{}@", ".".repeat(5000)));
    }

    #[test]
    fn tokens_are_removed() {
        let line = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl done";
        assert_eq!(mask_line(line), "Bearer [token] done");
        assert_eq!(mask_line("keyJson is fine"), "keyJson is fine");
    }

    #[test]
    fn addresses_are_hashed_or_truncated() {
        let v4: IpAddr = "203.0.113.77".parse().expect("ip");
        let v6: IpAddr = "2001:db8:abcd:12::1".parse().expect("ip");
        let truncate = AddressMasker::new(AddressMode::Truncate, b"key");
        assert_eq!(truncate.mask(v4), "203.0.113.0/24");
        assert_eq!(truncate.mask(v6), "2001:db8:abcd::/48");

        let hash = AddressMasker::new(AddressMode::Hash, b"key");
        let masked = hash.mask(v4);
        assert!(masked.starts_with("h:"), "{masked}");
        assert_eq!(masked.len(), 18, "{masked}");
        assert!(!masked.contains("203"));
        assert_eq!(masked, hash.mask(v4), "the same address gives the same value");
        assert_ne!(masked, AddressMasker::new(AddressMode::Hash, b"other").mask(v4));
        assert_eq!(AddressMasker::new(AddressMode::Full, b"key").mask(v4), "203.0.113.77");
    }
}
