//! The identity provider's token-signing keys: RSA 2048 (RS256) or P-256
//! (ES256), generated at first start into the encrypted secrets store and
//! published as a JSON Web Key Set. A rotation keeps the replaced key in
//! the set until the tokens it signed have expired.

use std::path::Path;

use anyhow::{Context, Result, bail};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use learntrac_secrets::{PREVIOUS_SIGNING_KEY, RoleSecrets, SecretStore, TOKEN_SIGNING_KEY};

/// A public key that verifies tokens.
pub struct VerifyingKey {
    pub kid: String,
    pub algorithm: Algorithm,
    pub decoding: DecodingKey,
}

/// A private key with its public half.
pub struct KeyPair {
    pub kid: String,
    pub algorithm: Algorithm,
    pub encoding: EncodingKey,
    pub public: VerifyingKey,
    /// The public key as a JSON Web Key.
    pub jwk: serde_json::Value,
}

/// The key that signs new tokens and every key whose tokens still verify.
pub struct SigningKeys {
    pub current: KeyPair,
    /// The current key first, then a retired key still in use.
    pub verifying: Vec<VerifyingKey>,
    /// The JWKS document, serialised once.
    pub jwks: serde_json::Value,
}

/// Key types the provider can generate, named as on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Rs256,
    Es256,
}

impl KeyType {
    /// Returns the JWS algorithm name.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Rs256 => "RS256",
            KeyType::Es256 => "ES256",
        }
    }
}

impl std::str::FromStr for KeyType {
    type Err = String;

    fn from_str(value: &str) -> Result<KeyType, String> {
        match value.to_ascii_lowercase().as_str() {
            "rs256" => Ok(KeyType::Rs256),
            "es256" => Ok(KeyType::Es256),
            other => Err(format!("unknown key algorithm {other:?}; use rs256 or es256")),
        }
    }
}

/// The stored form of the retired key.
#[derive(serde::Serialize, serde::Deserialize)]
struct RetiredKey {
    pem: String,
    retired_at: i64,
}

impl SigningKeys {
    /// Loads the keys from the secrets store with the identity provider's
    /// rights. The retired key is kept while tokens signed before the
    /// rotation may still be valid: for `keep_seconds` after it retired.
    pub fn load(secrets: &RoleSecrets, now: i64, keep_seconds: i64) -> Result<SigningKeys> {
        let pem_text = secrets.get(TOKEN_SIGNING_KEY).context("LT-KEY-LOAD: cannot read the token-signing key")?;
        let current = KeyPair::from_pkcs8_pem(pem_text.expose())
            .context("LT-KEY-LOAD: the token-signing key in the secrets store is invalid")?;
        let mut retired = None;
        if let Some(value) = secrets.get_optional(PREVIOUS_SIGNING_KEY)? {
            let previous: RetiredKey = serde_json::from_str(value.expose())
                .context("LT-KEY-LOAD: the retired token-signing key in the secrets store is invalid")?;
            if previous.retired_at + keep_seconds > now {
                retired = Some(KeyPair::from_pkcs8_pem(&previous.pem).context("LT-KEY-LOAD: the retired key")?);
            }
        }
        Ok(SigningKeys::from_pairs(current, retired))
    }

    fn from_pairs(current: KeyPair, retired: Option<KeyPair>) -> SigningKeys {
        let mut jwks = vec![current.jwk.clone()];
        let mut verifying = Vec::new();
        if let Some(retired) = retired {
            jwks.push(retired.jwk);
            verifying.push(retired.public);
        }
        let jwks = serde_json::json!({ "keys": jwks });
        let public = VerifyingKey {
            kid: current.kid.clone(),
            algorithm: current.algorithm,
            decoding: current.public.decoding.clone(),
        };
        verifying.insert(0, public);
        SigningKeys { current, verifying, jwks }
    }

    /// Returns the key with id `kid`.
    pub fn find(&self, kid: &str) -> Option<&VerifyingKey> {
        self.verifying.iter().find(|key| key.kid == kid)
    }
}

impl KeyPair {
    /// Reads an RSA or P-256 private key in PKCS#8 PEM.
    pub fn from_pkcs8_pem(pem_text: &str) -> Result<KeyPair> {
        let body: String = pem_text.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = STANDARD.decode(body.trim()).context("the key is not valid PEM")?;
        if let Ok(key) = aws_lc_rs::rsa::KeyPair::from_pkcs8(&der) {
            let public = key.public_key();
            let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
            let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
            let kid = key_id(n.as_bytes());
            let encoding = EncodingKey::from_rsa_pem(pem_text.as_bytes()).context("jsonwebtoken rejected the key")?;
            let decoding = DecodingKey::from_rsa_components(&n, &e).context("jsonwebtoken rejected the public key")?;
            let jwk = serde_json::json!({ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e });
            let public = VerifyingKey { kid: kid.clone(), algorithm: Algorithm::RS256, decoding };
            return Ok(KeyPair { kid, algorithm: Algorithm::RS256, encoding, public, jwk });
        }
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|_| anyhow::anyhow!("not an RSA or P-256 PKCS#8 private key"))?;
        // An uncompressed point: 0x04, then x and y of 32 bytes each.
        let point = key.public_key().as_ref();
        if point.len() != 65 {
            bail!("unexpected P-256 public key length {}", point.len());
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..]);
        let kid = key_id(&point[1..]);
        let encoding = EncodingKey::from_ec_pem(pem_text.as_bytes()).context("jsonwebtoken rejected the key")?;
        let decoding = DecodingKey::from_ec_components(&x, &y).context("jsonwebtoken rejected the public key")?;
        let jwk = serde_json::json!({ "kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256", "kid": kid, "x": x, "y": y });
        let public = VerifyingKey { kid: kid.clone(), algorithm: Algorithm::ES256, decoding };
        Ok(KeyPair { kid, algorithm: Algorithm::ES256, encoding, public, jwk })
    }
}

/// Returns a short, stable key id: the first 12 bytes of the SHA-256 of the public key.
fn key_id(public: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public);
    URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12])
}

/// Generates a private key of `key_type` as PKCS#8 PEM.
pub fn generate(key_type: KeyType) -> Result<String> {
    let der = match key_type {
        KeyType::Rs256 => {
            let key = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048)
                .map_err(|_| anyhow::anyhow!("LT-KEY-GENERATE: RSA key generation failed"))?;
            key.as_der().map_err(|_| anyhow::anyhow!("LT-KEY-GENERATE: cannot encode the RSA key"))?.as_ref().to_vec()
        }
        KeyType::Es256 => {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| anyhow::anyhow!("LT-KEY-GENERATE: P-256 key generation failed"))?
                .as_ref()
                .to_vec()
        }
    };
    Ok(pem("PRIVATE KEY", &der))
}

/// Puts a token-signing key into the store if it has none: the PEM file
/// that older versions kept in `DATA_DIR/keys` (deleted once stored, so
/// tokens signed with it stay valid), or a new RSA key. Returns true when
/// it added one.
pub fn ensure_signing_key(store: &mut SecretStore, data_dir: &Path, now: i64) -> Result<bool> {
    if store.contains(TOKEN_SIGNING_KEY) {
        return Ok(false);
    }
    let legacy = data_dir.join("keys").join("token-signing.pem");
    if legacy.exists() {
        let pem_text = std::fs::read_to_string(&legacy).with_context(|| format!("cannot read {}", legacy.display()))?;
        KeyPair::from_pkcs8_pem(&pem_text)
            .with_context(|| format!("LT-KEY-LOAD: invalid token-signing key {}", legacy.display()))?;
        let stored = store.put_if_absent(TOKEN_SIGNING_KEY, &pem_text, now)?;
        match std::fs::remove_file(&legacy) {
            // Another process starting at the same time removed it first.
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(error).with_context(|| format!("cannot remove {}", legacy.display()));
            }
            _ => {}
        }
        if stored {
            tracing::info!(path = %legacy.display(), "moved the token-signing key into the secrets store");
        }
        return Ok(stored);
    }
    // Another process starting on the same data directory may have stored
    // one since; its key wins and this one is dropped.
    let stored = store.put_if_absent(TOKEN_SIGNING_KEY, &generate(KeyType::Rs256)?, now)?;
    if stored {
        tracing::info!(secret = TOKEN_SIGNING_KEY, "generated the token-signing key in the secrets store");
    }
    Ok(stored)
}

/// The key ids a rotation replaced and introduced.
pub struct Rotated {
    pub new_kid: String,
    pub retired_kid: String,
}

/// Replaces the signing key with a new one of `key_type` and keeps the old
/// one as the retired key. Refuses while the key retired by the previous
/// rotation may still verify live tokens (`keep_seconds` after it retired),
/// because only one retired key is kept, unless `force` is set.
pub fn rotate(store: &mut SecretStore, key_type: KeyType, now: i64, keep_seconds: i64, force: bool) -> Result<Rotated> {
    let current = store.get(TOKEN_SIGNING_KEY).context("the store has no token-signing key; start the server once")?;
    let retired_kid = KeyPair::from_pkcs8_pem(current.expose())?.kid;
    if !force && store.contains(PREVIOUS_SIGNING_KEY) {
        let previous: RetiredKey = serde_json::from_str(store.get(PREVIOUS_SIGNING_KEY)?.expose())
            .context("the retired token-signing key in the secrets store is invalid")?;
        let until = previous.retired_at + keep_seconds;
        if until > now {
            bail!(
                "the key retired by the last rotation still verifies tokens until {} (Unix time {until}); rotating \
                 now would drop it and sign out those clients. Wait, or pass --force",
                crate::pages::format_time(until)
            );
        }
    }
    let pem_text = generate(key_type)?;
    let new_kid = KeyPair::from_pkcs8_pem(&pem_text)?.kid;
    let retired = serde_json::to_string(&RetiredKey { pem: current.expose().to_string(), retired_at: now })?;
    store.put(PREVIOUS_SIGNING_KEY, &retired, now)?;
    store.put(TOKEN_SIGNING_KEY, &pem_text, now)?;
    Ok(Rotated { new_kid, retired_kid })
}

fn pem(label: &str, der: &[u8]) -> String {
    let encoded = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Generates a signing key and reads it back through a fresh store in a
/// temporary directory.
#[cfg(test)]
pub(crate) fn generate_for_tests() -> SigningKeys {
    use learntrac_secrets::{KeyRing, KeySource, Role, SecretPolicy};
    let dir = std::env::temp_dir().join(format!("lt-keys-{}", crate::random_token(6)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let keys = KeyRing::open(KeySource::File(dir.join("master.key")), true).expect("master key");
    let mut store = SecretStore::open(&dir, keys).expect("store");
    ensure_signing_key(&mut store, &dir, 0).expect("signing key");
    let policy = SecretPolicy::new(&Default::default()).expect("policy");
    let idp = RoleSecrets::new(Role::Idp, std::sync::Arc::new(policy), std::sync::Arc::new(store));
    let loaded = SigningKeys::load(&idp, 0, 3600).expect("load");
    let _ = std::fs::remove_dir_all(&dir);
    loaded
}

#[cfg(test)]
mod tests {
    use super::*;
    use learntrac_secrets::{KeyRing, KeySource, Role, SecretPolicy};

    #[test]
    fn rotation_keeps_the_retired_key_until_its_tokens_expire() {
        let dir = std::env::temp_dir().join(format!("lt-rotate-{}", crate::random_token(6)));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ring = KeyRing::open(KeySource::File(dir.join("master.key")), true).expect("master key");
        let mut store = SecretStore::open(&dir, ring).expect("store");
        ensure_signing_key(&mut store, &dir, 0).expect("signing key");
        let rotated = rotate(&mut store, KeyType::Es256, 100, 3600, false).expect("rotate");
        assert!(rotate(&mut store, KeyType::Rs256, 200, 3600, false).is_err(), "the retired key is still in use");

        let policy = std::sync::Arc::new(SecretPolicy::new(&Default::default()).expect("policy"));
        let store = std::sync::Arc::new(store);
        let idp = RoleSecrets::new(Role::Idp, policy, store);
        let keys = SigningKeys::load(&idp, 200, 3600).expect("load");
        assert_eq!(keys.current.kid, rotated.new_kid);
        assert_eq!(keys.current.algorithm, Algorithm::ES256);
        assert!(keys.find(&rotated.retired_kid).is_some());
        assert_eq!(keys.jwks["keys"].as_array().map(Vec::len), Some(2));
        let later = SigningKeys::load(&idp, 100 + 3600, 3600).expect("load");
        assert!(later.find(&rotated.retired_kid).is_none(), "dropped once its tokens expired");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
