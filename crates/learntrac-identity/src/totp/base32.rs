//! Base32 with the RFC 4648 alphabet, the encoding of TOTP secrets in
//! authenticator apps.

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Encodes `bytes` without `=` padding.
pub fn encode(bytes: &[u8]) -> String {
    let mut output = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            output.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        output.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    output
}

/// Decodes base32 in either case, ignoring spaces and trailing `=`
/// padding. The error names the first invalid character or the invalid
/// length.
pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    let symbols: Vec<char> = text.chars().filter(|c| *c != ' ').collect();
    let end = symbols.iter().rposition(|c| *c != '=').map_or(0, |last| last + 1);
    let symbols = &symbols[..end];

    // A final group of 1, 3 or 6 symbols leaves bits that make no whole byte.
    if matches!(symbols.len() % 8, 1 | 3 | 6) {
        return Err(format!("{} base32 characters is not a valid length", symbols.len()));
    }

    let mut output = Vec::with_capacity(symbols.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &symbol in symbols {
        let value = match symbol.to_ascii_uppercase() {
            letter @ 'A'..='Z' => letter as u32 - 'A' as u32,
            digit @ '2'..='7' => digit as u32 - '2' as u32 + 26,
            other => return Err(format!("{other:?} is not a base32 character (A-Z, 2-7)")),
        };
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            output.push(((buffer >> bits) & 0xff) as u8);
        }
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vectors of RFC 4648, section 10, without padding.
    const VECTORS: &[(&str, &str)] = &[
        ("", ""),
        ("f", "MY"),
        ("fo", "MZXQ"),
        ("foo", "MZXW6"),
        ("foob", "MZXW6YQ"),
        ("fooba", "MZXW6YTB"),
        ("foobar", "MZXW6YTBOI"),
    ];

    #[test]
    fn rfc4648_vectors_encode() {
        for (plain, encoded) in VECTORS {
            assert_eq!(encode(plain.as_bytes()), *encoded, "{plain:?}");
        }
    }

    #[test]
    fn rfc4648_vectors_decode_with_padding() {
        let padded = ["", "MY======", "MZXQ====", "MZXW6===", "MZXW6YQ=", "MZXW6YTB", "MZXW6YTBOI======"];
        for ((plain, unpadded), padded) in VECTORS.iter().zip(padded) {
            assert_eq!(decode(unpadded).as_deref(), Ok(plain.as_bytes()), "{unpadded}");
            assert_eq!(decode(padded).as_deref(), Ok(plain.as_bytes()), "{padded}");
        }
    }

    #[test]
    fn decode_accepts_lower_case_and_spaces() {
        assert_eq!(decode("mzxw 6ytb oi").as_deref(), Ok(&b"foobar"[..]));
    }

    #[test]
    fn decode_rejects_bad_input() {
        let error = decode("MZXW1").unwrap_err();
        assert!(error.contains("'1'"), "{error}");
        let error = decode("MZX").unwrap_err();
        assert!(error.contains("3 base32 characters"), "{error}");
        assert!(decode("M").is_err());
        assert!(decode("MZXW6Y").is_err());
    }

    #[test]
    fn round_trip_every_length() {
        let bytes: Vec<u8> = (0..=255).collect();
        for length in 0..40 {
            let slice = &bytes[200 - length..200];
            assert_eq!(decode(&encode(slice)).as_deref(), Ok(slice), "length {length}");
        }
    }
}
