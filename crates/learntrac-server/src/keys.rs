//! The identity provider's token-signing key: RSA 2048, generated at first
//! start and published as a JSON Web Key Set.

use std::path::Path;

use anyhow::{Context, Result};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, EncodingKey};

/// The signing key with its public half in the forms verifiers need.
pub struct SigningKeys {
    pub kid: String,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    /// The JWKS document, serialised once.
    pub jwks: serde_json::Value,
}

impl SigningKeys {
    /// Loads the key from `DATA_DIR/keys/token-signing.pem`, generating it
    /// (mode 0600) if the file does not exist.
    // TODO: keep the signing key in the encrypted secrets store and rotate it.
    pub fn load_or_generate(data_dir: &Path) -> Result<SigningKeys> {
        let path = data_dir.join("keys").join("token-signing.pem");
        if !path.exists() {
            let dir = path.parent().context("key path has no parent")?;
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let key = KeyPair::generate(KeySize::Rsa2048)
                .map_err(|_| anyhow::anyhow!("LT-KEY-GENERATE: RSA key generation failed"))?;
            let der = key.as_der().map_err(|_| anyhow::anyhow!("LT-KEY-GENERATE: cannot encode the RSA key"))?;
            crate::write_private(&path, pem("PRIVATE KEY", der.as_ref()).as_bytes())?;
            tracing::info!(path = %path.display(), "generated the token-signing key");
        }
        let pem_text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        SigningKeys::from_pkcs8_pem(&pem_text)
            .with_context(|| format!("LT-KEY-LOAD: invalid token-signing key {}", path.display()))
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
