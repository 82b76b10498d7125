//! One AES-256-GCM message: a random 96-bit nonce, the ciphertext and its
//! tag. The associated data binds a ciphertext to what it belongs to, so a
//! value moved to another record fails to decrypt.

use aws_lc_rs::aead::{Aad, LessSafeKey, NONCE_LEN, Nonce};

use crate::{Result, SecretError, random_bytes};

pub(crate) fn seal(key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Result<([u8; NONCE_LEN], Vec<u8>)> {
    let mut nonce = [0u8; NONCE_LEN];
    random_bytes(&mut nonce)?;
    let mut in_out = plaintext.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut in_out)
        .map_err(|_| SecretError::Crypto("encryption failed"))?;
    Ok((nonce, in_out))
}

/// Decrypts and authenticates; `None` when the tag does not match.
pub(crate) fn open(key: &LessSafeKey, nonce: &[u8], aad: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut in_out = ciphertext.to_vec();
    let plaintext = key.open_in_place(nonce, Aad::from(aad), &mut in_out).ok()?;
    Some(plaintext.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MasterKey;

    #[test]
    fn round_trip_and_tamper() {
        let key = MasterKey::generate().expect("key").aead().expect("aead");
        let (nonce, mut sealed) = seal(&key, b"name", b"value").expect("sealed");
        assert_eq!(open(&key, &nonce, b"name", &sealed).as_deref(), Some(&b"value"[..]));
        assert!(open(&key, &nonce, b"other name", &sealed).is_none());
        sealed[0] ^= 1;
        assert!(open(&key, &nonce, b"name", &sealed).is_none());
    }
}
