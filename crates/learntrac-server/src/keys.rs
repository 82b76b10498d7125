//! The identity provider's token-signing key: RSA 2048, generated at first
//! start into the encrypted secrets store and published as a JSON Web Key
//! Set.

use std::path::Path;

use anyhow::{Context, Result};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, EncodingKey};
use learntrac_secrets::{RoleSecrets, SecretStore, TOKEN_SIGNING_KEY};

/// The signing key with its public half in the forms verifiers need.
pub struct SigningKeys {
    pub kid: String,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    /// The JWKS document, serialised once.
    pub jwks: serde_json::Value,
}

impl SigningKeys {
    /// Loads the key from the secrets store with the identity provider's rights.
    pub fn load(secrets: &RoleSecrets) -> Result<SigningKeys> {
        let pem_text = secrets.get(TOKEN_SIGNING_KEY).context("LT-KEY-LOAD: cannot read the token-signing key")?;
        SigningKeys::from_pkcs8_pem(pem_text.expose().as_bytes())
            .context("LT-KEY-LOAD: the token-signing key in the secrets store is invalid")
    }

    pub fn from_pkcs8_pem(pem_text: &[u8]) -> Result<SigningKeys> {
        let text = std::str::from_utf8(pem_text).context("the key file is not text")?;
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = STANDARD.decode(body.trim()).context("the key file is not valid PEM")?;
        let key = KeyPair::from_pkcs8(&der).map_err(|e| anyhow::anyhow!("not an RSA PKCS#8 key: {e}"))?;
        let public = key.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, n.as_bytes());
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]);

        let encoding = EncodingKey::from_rsa_pem(pem_text).context("jsonwebtoken rejected the key")?;
        let decoding = DecodingKey::from_rsa_components(&n, &e).context("jsonwebtoken rejected the public key")?;
        let jwks = serde_json::json!({
            "keys": [{ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e }]
        });
        Ok(SigningKeys { kid, encoding, decoding, jwks })
    }
}

/// Puts a token-signing key into the store if it has none: the PEM file
/// that older versions kept in `DATA_DIR/keys` (deleted once stored, so
/// tokens signed with it stay valid), or a new key. Returns true when it
/// added one.
// TODO: rotate the signing key by command, keeping the old one in the JWKS
// until its tokens expire.
pub fn ensure_signing_key(store: &mut SecretStore, data_dir: &Path, now: i64) -> Result<bool> {
    if store.contains(TOKEN_SIGNING_KEY) {
        return Ok(false);
    }
    let legacy = data_dir.join("keys").join("token-signing.pem");
    if legacy.exists() {
        let pem_text = std::fs::read_to_string(&legacy).with_context(|| format!("cannot read {}", legacy.display()))?;
        SigningKeys::from_pkcs8_pem(pem_text.as_bytes())
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
    let key = KeyPair::generate(KeySize::Rsa2048)
        .map_err(|_| anyhow::anyhow!("LT-KEY-GENERATE: RSA key generation failed"))?;
    let der = key.as_der().map_err(|_| anyhow::anyhow!("LT-KEY-GENERATE: cannot encode the RSA key"))?;
    // Another process starting on the same data directory may have stored
    // one since; its key wins and this one is dropped.
    let stored = store.put_if_absent(TOKEN_SIGNING_KEY, &pem("PRIVATE KEY", der.as_ref()), now)?;
    if stored {
        tracing::info!(secret = TOKEN_SIGNING_KEY, "generated the token-signing key in the secrets store");
    }
    Ok(stored)
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
    let loaded = SigningKeys::load(&idp).expect("load");
    let _ = std::fs::remove_dir_all(&dir);
    loaded
}
