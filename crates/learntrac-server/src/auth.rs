//! Tokens: issuing the built-in provider's JWTs and validating bearer
//! tokens on every API request, from the built-in provider or an external
//! one, with the reason for each rejection logged on the security target.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, Header, Validation};
use learntrac_store::{Group, User};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::idp::settings::ExternalIssuer;
use crate::keys::{SigningKeys, VerifyingKey};

/// The first-party public client that scripts use with the password grant.
pub const CLI_CLIENT_ID: &str = "learntrac-cli";

/// Scope a client needs for a user's token to call the API as that user.
pub const SCOPE_API: &str = "learntrac/api";
/// Scope a client needs, besides [`SCOPE_API`], for the administration API.
pub const SCOPE_ADMIN: &str = "learntrac/admin";
/// Scope of service accounts that read the library and search it.
pub const SCOPE_READ: &str = "learntrac/read";
/// Scope of service accounts that add books.
pub const SCOPE_WRITE: &str = "learntrac/write";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenUse {
    Access,
    Id,
}

/// Claims of the tokens the built-in provider signs. Access tokens carry
/// `client_id` and `scope` and no `aud`, as a managed user pool's do; ID
/// tokens carry `aud` and the profile.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IssuedClaims {
    pub iss: String,
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub token_use: Option<TokenUse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<Group>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The refresh-token family the token was issued from; revoking the
    /// family revokes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_jti: Option<String>,
    /// The user's token version at issue; signing out everywhere raises it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ver: Option<i64>,
}

/// The client, scope and family that a grant issues tokens for.
pub struct Grant<'a> {
    pub client_id: &'a str,
    pub scope: &'a str,
    pub auth_time: i64,
    pub family: &'a str,
    pub nonce: Option<&'a str>,
}

fn sign(keys: &SigningKeys, claims: &IssuedClaims) -> anyhow::Result<String> {
    let mut header = Header::new(keys.current.algorithm);
    header.kid = Some(keys.current.kid.clone());
    jsonwebtoken::encode(&header, claims, &keys.current.encoding).map_err(|e| anyhow::anyhow!("LT-TOKEN-SIGN: {e}"))
}

fn base_claims(issuer: &str, sub: String, lifetime: i64, now: i64) -> IssuedClaims {
    IssuedClaims {
        iss: issuer.to_string(),
        sub,
        exp: now + lifetime,
        iat: now,
        nbf: now,
        jti: crate::random_token(12),
        ..IssuedClaims::default()
    }
}

/// Signs an access token for `user`.
pub fn issue_access(
    keys: &SigningKeys,
    issuer: &str,
    user: &User,
    grant: &Grant<'_>,
    lifetime: i64,
    now: i64,
) -> anyhow::Result<String> {
    let claims = IssuedClaims {
        token_use: Some(TokenUse::Access),
        client_id: Some(grant.client_id.to_string()),
        scope: Some(grant.scope.to_string()),
        auth_time: Some(grant.auth_time),
        email: Some(user.email.clone()),
        name: Some(user.name.clone()),
        groups: Some(user.groups.clone()),
        origin_jti: Some(grant.family.to_string()),
        ver: Some(user.token_version),
        ..base_claims(issuer, user.id.to_string(), lifetime, now)
    };
    sign(keys, &claims)
}

/// Signs an ID token for `user`, for the client of `grant`. The address
/// needs the `email` scope and the name the `profile` scope.
pub fn issue_id(
    keys: &SigningKeys,
    issuer: &str,
    user: &User,
    grant: &Grant<'_>,
    lifetime: i64,
    now: i64,
) -> anyhow::Result<String> {
    let scopes: Vec<&str> = grant.scope.split(' ').collect();
    let email = scopes.contains(&"email");
    let claims = IssuedClaims {
        aud: Some(grant.client_id.to_string()),
        token_use: Some(TokenUse::Id),
        auth_time: Some(grant.auth_time),
        email: email.then(|| user.email.clone()),
        email_verified: email.then_some(user.email_verified),
        name: scopes.contains(&"profile").then(|| user.name.clone()),
        groups: Some(user.groups.clone()),
        nonce: grant.nonce.filter(|n| !n.is_empty()).map(str::to_string),
        ..base_claims(issuer, user.id.to_string(), lifetime, now)
    };
    sign(keys, &claims)
}

/// Signs an access token for a service account: its subject is the client.
pub fn issue_service(
    keys: &SigningKeys,
    issuer: &str,
    client_id: &str,
    scope: &str,
    lifetime: i64,
    now: i64,
) -> anyhow::Result<String> {
    let claims = IssuedClaims {
        token_use: Some(TokenUse::Access),
        client_id: Some(client_id.to_string()),
        scope: Some(scope.to_string()),
        auth_time: Some(now),
        ..base_claims(issuer, client_id.to_string(), lifetime, now)
    };
    sign(keys, &claims)
}

/// The reason a token was rejected; logged, never sent to the client.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("algorithm {0} is not allowed; only RS256 and ES256 are")]
    Algorithm(String),
    #[error("the header names algorithm {header}, but the key it names is for {key}")]
    KeyMismatch { header: String, key: String },
    #[error("the header names a key outside the key set ({0}), which is never followed")]
    KeyReference(&'static str),
    #[error("unknown key id {}", .0.as_deref().unwrap_or("(no kid in the header)"))]
    UnknownKey(Option<String>),
    #[error("invalid signature or claims: {0}")]
    Invalid(String),
    #[error("expired at {exp}, now {now}")]
    Expired { exp: i64, now: i64 },
    #[error("not valid before {nbf}, now {now}")]
    NotYetValid { nbf: i64, now: i64 },
    #[error("token_use is {0:?}, expected access")]
    WrongUse(String),
    #[error("issued to client {0:?}, which is not accepted")]
    WrongClient(String),
    #[error("the key set cannot be fetched: {0}")]
    KeySet(String),
}

/// The verified content of an access token.
#[derive(Clone, Debug)]
pub struct TokenClaims {
    pub issuer: String,
    pub sub: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub groups: Vec<Group>,
    pub jti: String,
    /// The refresh-token family, or the jti when there is none.
    pub origin: String,
    pub exp: i64,
    pub nbf: i64,
    pub ver: i64,
    pub email: Option<String>,
    pub name: Option<String>,
    pub username: Option<String>,
}

/// The source of the keys that verify a token.
pub enum KeySource<'a> {
    BuiltIn(&'a SigningKeys),
    External(&'a [VerifyingKey]),
}

/// The issuer, clients and groups claim that a verifier accepts.
pub struct Expectations<'a> {
    pub issuer: &'a str,
    /// Empty accepts any client.
    pub clients: &'a [String],
    pub groups_claim: &'a str,
    pub group_map: Option<&'a std::collections::BTreeMap<String, Group>>,
}

/// Checks the header before anything else: RS256 or ES256 only, no key
/// given or referenced by the token itself, a key id.
pub fn check_header(token: &str) -> Result<(Algorithm, String), TokenRejection> {
    // The algorithm is read first by hand: jsonwebtoken cannot parse a
    // header with "alg": "none", which deserves its own reason in the log.
    let raw = token.split('.').next().unwrap_or_default();
    let named = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|header| header.get("alg").and_then(|alg| alg.as_str()).map(str::to_string));
    if let Some(alg) = named.filter(|alg| alg != "RS256" && alg != "ES256") {
        return Err(TokenRejection::Algorithm(alg));
    }
    let header = jsonwebtoken::decode_header(token).map_err(|e| TokenRejection::Malformed(e.to_string()))?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
        return Err(TokenRejection::Algorithm(format!("{:?}", header.alg)));
    }
    if header.jku.is_some() {
        return Err(TokenRejection::KeyReference("jku"));
    }
    if header.x5u.is_some() {
        return Err(TokenRejection::KeyReference("x5u"));
    }
    if header.jwk.is_some() {
        return Err(TokenRejection::KeyReference("jwk"));
    }
    if header.x5c.is_some() {
        return Err(TokenRejection::KeyReference("x5c"));
    }
    let kid = header.kid.ok_or(TokenRejection::UnknownKey(None))?;
    Ok((header.alg, kid))
}

/// Verifies an access token's signature with `key` and checks its claims.
pub fn verify_with(
    token: &str,
    algorithm: Algorithm,
    key: &VerifyingKey,
    expect: &Expectations<'_>,
    skew: i64,
    now: i64,
) -> Result<TokenClaims, TokenRejection> {
    if key.algorithm != algorithm {
        return Err(TokenRejection::KeyMismatch {
            header: format!("{algorithm:?}"),
            key: format!("{:?}", key.algorithm),
        });
    }
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[expect.issuer]);
    validation.validate_aud = false;
    validation.required_spec_claims = HashSet::from(["exp".into(), "iss".into(), "sub".into()]);
    // Time is checked below against the caller's clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key.decoding, &validation)
        .map_err(|e| TokenRejection::Invalid(e.to_string()))?
        .claims;

    let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_string);
    let number = |name: &str| claims.get(name).and_then(serde_json::Value::as_i64);
    let exp = number("exp").ok_or_else(|| TokenRejection::Invalid("exp is not a number".into()))?;
    let nbf = number("nbf").or_else(|| number("iat")).unwrap_or(i64::MIN);
    check_time(exp, nbf, skew, now)?;
    let token_use = text("token_use").unwrap_or_default();
    if token_use != "access" {
        return Err(TokenRejection::WrongUse(token_use));
    }
    let audience = match claims.get("aud") {
        Some(serde_json::Value::String(aud)) => vec![aud.clone()],
        Some(serde_json::Value::Array(list)) => list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    };
    let client_id = text("client_id").or_else(|| audience.first().cloned()).unwrap_or_default();
    let presented: Vec<&String> = std::iter::once(&client_id).chain(audience.iter()).collect();
    if !expect.clients.is_empty() && !presented.iter().all(|c| expect.clients.contains(c)) {
        let wrong = presented.iter().find(|c| !expect.clients.contains(c)).map_or(String::new(), |c| c.to_string());
        return Err(TokenRejection::WrongClient(wrong));
    }
    let groups = claims
        .get(expect.groups_claim)
        .and_then(|v| v.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|v| v.as_str())
                .filter_map(|name| {
                    expect.group_map.and_then(|map| map.get(name).copied()).or_else(|| name.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    let jti = text("jti").unwrap_or_default();
    Ok(TokenClaims {
        issuer: expect.issuer.to_string(),
        sub: text("sub").unwrap_or_default(),
        client_id,
        scopes: text("scope").map(|s| s.split(' ').map(str::to_string).collect()).unwrap_or_default(),
        groups,
        origin: text("origin_jti").unwrap_or_else(|| jti.clone()),
        jti,
        exp,
        nbf,
        ver: number("ver").unwrap_or(0),
        email: text("email"),
        name: text("name"),
        username: text("username").or_else(|| text("cognito:username")),
    })
}

/// Validates an access token of the built-in provider.
pub fn validate_builtin(
    keys: &SigningKeys,
    expect: &Expectations<'_>,
    token: &str,
    skew: i64,
    now: i64,
) -> Result<TokenClaims, TokenRejection> {
    let (algorithm, kid) = check_header(token)?;
    let key = keys.find(&kid).ok_or(TokenRejection::UnknownKey(Some(kid)))?;
    verify_with(token, algorithm, key, expect, skew, now)
}

/// Checks `exp` and `nbf` against `now`, allowing `skew` seconds.
fn check_time(exp: i64, nbf: i64, skew: i64, now: i64) -> Result<(), TokenRejection> {
    if exp.saturating_add(skew) <= now {
        return Err(TokenRejection::Expired { exp, now });
    }
    if nbf.saturating_sub(skew) > now {
        return Err(TokenRejection::NotYetValid { nbf, now });
    }
    Ok(())
}

/// The minimum time between two fetches of an external key set, so that
/// tokens with made-up key ids cannot make LearnTrac flood the provider.
const JWKS_REFETCH: Duration = Duration::from_secs(30);

/// An external provider's key set, fetched when a token names a key id
/// it does not hold, at most once per [`JWKS_REFETCH`].
pub struct ExternalKeys {
    settings: ExternalIssuer,
    client: reqwest::Client,
    keys: tokio::sync::RwLock<std::sync::Arc<Vec<VerifyingKey>>>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl ExternalKeys {
    pub fn new(settings: ExternalIssuer, egress: &crate::egress::EgressSettings) -> anyhow::Result<ExternalKeys> {
        let mut egress = egress.clone();
        if let Some(ca) = &settings.ca_file {
            egress.ca_file = Some(ca.clone());
        }
        egress.timeout = Duration::from_secs(10);
        let client = crate::egress::client(&egress)?;
        Ok(ExternalKeys {
            settings,
            client,
            keys: tokio::sync::RwLock::new(std::sync::Arc::new(Vec::new())),
            last_fetch: tokio::sync::Mutex::new(None),
        })
    }

    pub fn settings(&self) -> &ExternalIssuer {
        &self.settings
    }

    /// Returns the key `kid`, fetching the key set again if it is unknown
    /// and the last fetch is old enough.
    async fn key(&self, kid: &str) -> Result<std::sync::Arc<Vec<VerifyingKey>>, TokenRejection> {
        let keys = self.keys.read().await.clone();
        if keys.iter().any(|k| k.kid == kid) {
            return Ok(keys);
        }
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < JWKS_REFETCH) {
            return Ok(self.keys.read().await.clone());
        }
        *last = Some(Instant::now());
        let fetched = self.fetch().await.map_err(|e| TokenRejection::KeySet(format!("{e:#}")))?;
        tracing::info!(target: "learntrac::security", url = %self.settings.jwks_url, keys = fetched.len(), "fetched the external key set");
        let fetched = std::sync::Arc::new(fetched);
        *self.keys.write().await = fetched.clone();
        Ok(fetched)
    }

    async fn fetch(&self) -> anyhow::Result<Vec<VerifyingKey>> {
        let response = self.client.get(&self.settings.jwks_url).send().await?.error_for_status()?;
        let set: jsonwebtoken::jwk::JwkSet = response.json().await?;
        let mut keys = Vec::new();
        for jwk in set.keys {
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            let algorithm = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(ec)
                    if ec.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                // Symmetric and other keys never verify tokens here.
                _ => continue,
            };
            let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk)?;
            keys.push(VerifyingKey { kid, algorithm, decoding });
        }
        Ok(keys)
    }

    /// Validates an access token of this provider.
    pub async fn validate(&self, token: &str, skew: i64, now: i64) -> Result<TokenClaims, TokenRejection> {
        let (algorithm, kid) = check_header(token)?;
        let keys = self.key(&kid).await?;
        let key = keys.iter().find(|k| k.kid == kid).ok_or(TokenRejection::UnknownKey(Some(kid)))?;
        let expect = Expectations {
            issuer: &self.settings.issuer,
            clients: &self.settings.client_ids,
            groups_claim: &self.settings.groups_claim,
            group_map: Some(&self.settings.group_map),
        };
        verify_with(token, algorithm, key, &expect, skew, now)
    }
}

/// The caller of a request, from a session or a validated token.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: i64,
    pub email: String,
    pub name: String,
    pub groups: Vec<Group>,
    /// Set on the session of a user who must change a one-time password
    /// before doing anything else.
    pub password_change_required: bool,
    /// Set on the session of a user whose group requires TOTP that is not
    /// set up yet.
    pub mfa_setup_required: bool,
    /// The token forms of this session must carry; `None` for API callers.
    pub csrf: Option<String>,
    /// The scopes of a built-in provider's access token; `None` for a
    /// browser session or an external provider's token, which scopes do
    /// not limit.
    pub scopes: Option<Vec<String>>,
}

impl Principal {
    pub fn from_user(user: &User) -> Principal {
        Principal {
            user_id: user.id,
            email: user.email.clone(),
            name: user.name.clone(),
            groups: user.groups.clone(),
            password_change_required: user.must_change_password,
            mfa_setup_required: false,
            csrf: None,
            scopes: None,
        }
    }

    /// Returns whether the caller may act with `scope`: always in a browser
    /// session, and with a token only when the token was granted it.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.as_ref().is_none_or(|scopes| scopes.iter().any(|s| s == scope))
    }

    pub fn is(&self, group: Group) -> bool {
        self.groups.contains(&group)
    }

    /// Instructors and admins see expected answers and every learner's progress.
    pub fn is_staff(&self) -> bool {
        self.is(Group::Admins) || self.is(Group::Instructors)
    }

    /// Admins, and operators with read-only rights, use the administration screens.
    pub fn is_administrator(&self) -> bool {
        self.is(Group::Admins) || self.is(Group::Operators)
    }
}

/// How long a token's revocation check is reused before the database is
/// asked again. Within one process, a sign-out clears the cache at once;
/// other processes notice within this time.
const REVOCATION_CHECK_SECONDS: u64 = 5;

/// Cached answers to "is this token id still accepted?".
#[derive(Default)]
pub struct RevocationCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (Instant, bool)>>,
    /// Raised by [`RevocationCache::clear`]; an answer read from the database
    /// before a clear is not stored after it.
    generation: std::sync::atomic::AtomicU64,
}

impl RevocationCache {
    fn get(&self, jti: &str) -> Option<bool> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (checked, accepted) = entries.get(jti)?;
        (checked.elapsed().as_secs() < REVOCATION_CHECK_SECONDS).then_some(*accepted)
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stores an answer read from the database while the cache was at
    /// `generation`, unless a sign-out cleared it since.
    fn put(&self, jti: &str, accepted: bool, generation: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation() != generation {
            return;
        }
        if entries.len() >= 100_000 {
            entries.clear();
        }
        entries.insert(jti.to_string(), (Instant::now(), accepted));
    }

    /// Forgets every cached result, after a sign-out or a change of rights.
    pub fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        entries.clear();
    }
}

/// Verified claims with the user id of a user's token.
type VerifiedEntry = (TokenClaims, Option<i64>);

/// Most tokens whose verified claims are kept; the cache is emptied when full.
const VERIFIED_TOKENS_MAX: usize = 10_000;

/// Claims of tokens whose signature and claims were already verified, by
/// the SHA-256 of the whole token, so that repeated requests skip the
/// signature check. Time is still checked on every use.
#[derive(Default)]
pub struct VerifiedTokens {
    entries: std::sync::RwLock<std::collections::HashMap<[u8; 32], VerifiedEntry>>,
}

impl VerifiedTokens {
    fn key(token: &str) -> [u8; 32] {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    fn get(&self, token: &str, skew: i64, now: i64) -> Option<Result<(TokenClaims, Option<i64>), TokenRejection>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let (claims, user_id) = entries.get(&VerifiedTokens::key(token))?;
        Some(check_time(claims.exp, claims.nbf, skew, now).map(|()| (claims.clone(), *user_id)))
    }

    fn put(&self, token: &str, claims: TokenClaims, user_id: Option<i64>) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= VERIFIED_TOKENS_MAX {
            entries.clear();
        }
        entries.insert(VerifiedTokens::key(token), (claims, user_id));
    }

    /// Returns the scopes of a token verified before and still in time.
    pub(crate) fn cached_scopes(&self, token: &str, skew: i64, now: i64) -> Option<Vec<String>> {
        Some(self.get(token, skew, now)?.ok()?.0.scopes)
    }

    /// Returns the user id of a token verified before and still in time,
    /// without verifying anything new; the gateway's per-user limits use it.
    pub(crate) fn cached_user(&self, token: &str, skew: i64, now: i64) -> Option<i64> {
        self.get(token, skew, now)?.ok()?.1
    }
}

/// The caller behind a bearer token: a user, or a service account.
#[derive(Clone, Debug)]
pub enum Caller {
    User(Principal),
    Service { client_id: String, scopes: Vec<String> },
}

/// Validates a bearer `token` (signature and claims, then revocation and
/// the user's state) and logs the reason when it is rejected. `Ok(None)`
/// means rejected.
pub async fn authenticate(state: &AppState, token: &str, source: &str) -> Result<Option<Caller>, ApiError> {
    let skew = state.config.identity.clock_skew_seconds;
    let now = state.now();
    let verified = match state.verified_tokens.get(token, skew, now) {
        Some(result) => result.map(|(claims, _)| claims),
        None => match &state.external_keys {
            Some(external) => external.validate(token, skew, now).await,
            None => validate_with_own_keys(state, token, skew, now),
        },
    };
    let claims = match verified {
        Ok(claims) => claims,
        Err(reason) => {
            tracing::warn!(target: "learntrac::security", source, reason = %reason, "token rejected");
            return Ok(None);
        }
    };

    let caller = if state.external_keys.is_some() {
        external_caller(state, &claims).await?
    } else if claims.sub == claims.client_id {
        Some(Caller::Service { client_id: claims.client_id.clone(), scopes: claims.scopes.clone() })
    } else {
        builtin_caller(&claims)?
    };
    let Some(caller) = caller else {
        return Ok(None);
    };
    if let Caller::Service { client_id, .. } = &caller
        && !service_token_accepted(state, client_id, &claims.jti).await?
    {
        tracing::warn!(
            target: "learntrac::security",
            source,
            client_id,
            "token rejected: revoked, or its client is no longer registered"
        );
        return Ok(None);
    }
    if let Caller::User(principal) = &caller {
        if !token_still_accepted(state, principal.user_id, &claims).await? {
            tracing::warn!(
                target: "learntrac::security",
                source,
                user_id = principal.user_id,
                "token rejected: revoked, signed out everywhere since, its client deleted, or user disabled or deleted"
            );
            return Ok(None);
        }
        crate::gateway::record_user(principal.user_id);
        state.verified_tokens.put(token, claims, Some(principal.user_id));
    } else {
        state.verified_tokens.put(token, claims, None);
    }
    Ok(Some(caller))
}

/// Returns the user of a built-in provider's token whose signature and
/// claims are valid, without logging, caching or querying the database.
/// Returns `None` for anything else, an external provider's tokens included.
pub(crate) fn builtin_user_quietly(state: &AppState, token: &str) -> Option<i64> {
    if state.external_keys.is_some() {
        return None;
    }
    let claims = validate_with_own_keys(state, token, state.config.identity.clock_skew_seconds, state.now()).ok()?;
    claims.sub.parse().ok()
}

/// Validates an access token of this server's provider against its
/// current keys and the accepted clients.
fn validate_with_own_keys(state: &AppState, token: &str, skew: i64, now: i64) -> Result<TokenClaims, TokenRejection> {
    let keys = state.keys();
    let expect = Expectations {
        issuer: &state.config.public_url,
        clients: &state.config.identity.accepted_clients,
        groups_claim: "groups",
        group_map: None,
    };
    validate_builtin(&keys, &expect, token, skew, now)
}

fn builtin_caller(claims: &TokenClaims) -> Result<Option<Caller>, ApiError> {
    let Ok(user_id) = claims.sub.parse::<i64>() else {
        tracing::warn!(target: "learntrac::security", sub = %claims.sub, "token rejected: subject is not a user id");
        return Ok(None);
    };
    Ok(Some(Caller::User(Principal {
        user_id,
        email: claims.email.clone().unwrap_or_default(),
        name: claims.name.clone().unwrap_or_default(),
        groups: claims.groups.clone(),
        password_change_required: false,
        mfa_setup_required: false,
        csrf: None,
        scopes: Some(claims.scopes.clone()),
    })))
}

/// Maps an external token to a local user, created on first sight; the
/// groups come from the token.
async fn external_caller(state: &AppState, claims: &TokenClaims) -> Result<Option<Caller>, ApiError> {
    let subject = format!("{} {}", claims.issuer, claims.sub);
    let host = claims.issuer.split("://").nth(1).unwrap_or("external").split('/').next().unwrap_or("external");
    let fallback = || format!("{}@{host}", claims.username.as_deref().unwrap_or(&claims.sub));
    let email = claims.email.clone().unwrap_or_else(fallback);
    let name = claims.name.clone().or_else(|| claims.username.clone()).unwrap_or_else(|| claims.sub.clone());
    let user = match state.store.external_user(&subject, &email, &name, state.now()).await {
        Ok(user) => user,
        Err(learntrac_store::StoreError::Conflict(_)) => {
            tracing::warn!(
                target: "learntrac::security",
                sub = %claims.sub,
                "token rejected: its email belongs to an account of the built-in user pool"
            );
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    };
    if user.disabled {
        tracing::warn!(target: "learntrac::security", user_id = user.id, "token rejected: the user is disabled");
        return Ok(None);
    }
    Ok(Some(Caller::User(Principal {
        user_id: user.id,
        email: user.email,
        name: user.name,
        groups: claims.groups.clone(),
        password_change_required: false,
        mfa_setup_required: false,
        csrf: None,
        scopes: None,
    })))
}

async fn service_token_accepted(state: &AppState, client_id: &str, jti: &str) -> Result<bool, ApiError> {
    if let Some(accepted) = state.revocations.get(jti) {
        return Ok(accepted);
    }
    let generation = state.revocations.generation();
    let accepted = state.store.service_token_accepted(client_id, jti).await?;
    state.revocations.put(jti, accepted, generation);
    Ok(accepted)
}

async fn token_still_accepted(state: &AppState, user_id: i64, claims: &TokenClaims) -> Result<bool, ApiError> {
    if let Some(accepted) = state.revocations.get(&claims.jti) {
        return Ok(accepted);
    }
    let generation = state.revocations.generation();
    // A deleted client's tokens stop with it; an external provider's
    // clients are not registered here.
    if state.external_keys.is_none() && !state.store.client_registered(&claims.client_id).await? {
        state.revocations.put(&claims.jti, false, generation);
        return Ok(false);
    }
    // External tokens carry no version: the provider that issued them
    // decides their sign-out, and LearnTrac checks the user and the jti.
    let version = if state.external_keys.is_some() {
        state.store.user_by_id(user_id).await?.map_or(-1, |user| user.token_version)
    } else {
        claims.ver
    };
    let accepted = state.store.token_accepted(user_id, &claims.jti, &claims.origin, version).await?;
    state.revocations.put(&claims.jti, accepted, generation);
    Ok(accepted)
}

pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Returns the value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The caller of an API request: a user or a service account with a
/// valid bearer token.
pub struct ApiCaller(pub Caller);

impl FromRequestParts<AppState> for ApiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<ApiCaller, ApiError> {
        let Some(token) = bearer_token(&parts.headers) else {
            tracing::info!(target: "learntrac::security", path = parts.uri.path(), "request without a bearer token");
            return Err(ApiError::Unauthorized);
        };
        let caller = authenticate(state, token, "bearer").await?.ok_or(ApiError::InvalidToken)?;
        Ok(ApiCaller(caller))
    }
}

impl ApiCaller {
    /// Allows a user, or a service account holding `scope`.
    pub fn require_scope(&self, scope: &str) -> Result<(), ApiError> {
        match &self.0 {
            Caller::User(principal) if principal.has_scope(SCOPE_API) => Ok(()),
            Caller::User(_) => Err(ApiError::Forbidden(format!("this token was not granted the scope {SCOPE_API}"))),
            Caller::Service { scopes, .. } if scopes.iter().any(|s| s == scope) => Ok(()),
            Caller::Service { client_id, .. } => {
                tracing::warn!(target: "learntrac::security", client_id, scope, "service account lacks a scope");
                Err(ApiError::Forbidden(format!("this needs the scope {scope}")))
            }
        }
    }
}

/// An API caller who is a user (not a service account).
pub struct ApiUser(pub Principal);

impl FromRequestParts<AppState> for ApiUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<ApiUser, ApiError> {
        match ApiCaller::from_request_parts(parts, state).await?.0 {
            Caller::User(principal) if principal.has_scope(SCOPE_API) => Ok(ApiUser(principal)),
            Caller::User(principal) => {
                tracing::warn!(target: "learntrac::security", user_id = principal.user_id, scope = SCOPE_API, "token lacks a scope");
                Err(ApiError::Forbidden(format!(
                    "this token was not granted the scope {SCOPE_API}; register the client with it and ask for it"
                )))
            }
            Caller::Service { .. } => {
                Err(ApiError::Forbidden("service accounts may not do this; sign in as a user".into()))
            }
        }
    }
}

/// The message of a 403 for a right that only instructors and admins have.
const STAFF_ONLY: &str = "only instructors and admins may do this";
const ADMIN_ONLY: &str = "only admins and operators may use the administration screens";

/// Records a request for an action the caller's groups do not allow.
async fn record_denied(state: &AppState, principal: &Principal, parts: &Parts, reason: &str) {
    // Nested routers see the path without their prefix; the original URI has it.
    let path = parts.extensions.get::<axum::extract::OriginalUri>().map_or(parts.uri.path(), |uri| uri.0.path());
    let target = format!("{} {path}", parts.method);
    let actor = crate::audit::Actor::User(principal.user_id);
    crate::audit::record(state, actor, "access.staff_only", &target, "denied", reason).await;
}

/// Extractors that require a group, for the API and for the pages.
macro_rules! group_extractor {
    ($name:ident, $base:ident, $check:ident, $message:expr, $rejection:ty, $wrap:expr) => {
        pub struct $name(pub Principal);

        impl FromRequestParts<AppState> for $name {
            type Rejection = $rejection;

            async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<$name, $rejection> {
                let $base(principal) = $base::from_request_parts(parts, state).await?;
                if !principal.$check() {
                    record_denied(state, &principal, parts, $message).await;
                    return Err($wrap(ApiError::Forbidden($message.into())));
                }
                Ok($name(principal))
            }
        }
    };
}

group_extractor!(StaffApiUser, ApiUser, is_staff, STAFF_ONLY, ApiError, |e| e);
group_extractor!(AdminApiUserWithoutScope, ApiUser, is_administrator, ADMIN_ONLY, ApiError, |e| e);

/// An admin or operator calling the administration API with a token
/// granted [`SCOPE_ADMIN`] (or from a browser session).
pub struct AdminApiUser(pub Principal);

impl FromRequestParts<AppState> for AdminApiUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<AdminApiUser, ApiError> {
        let AdminApiUserWithoutScope(principal) = AdminApiUserWithoutScope::from_request_parts(parts, state).await?;
        if !principal.has_scope(SCOPE_ADMIN) {
            tracing::warn!(target: "learntrac::security", user_id = principal.user_id, scope = SCOPE_ADMIN, "token lacks a scope");
            return Err(ApiError::Forbidden(format!(
                "this token was not granted the scope {SCOPE_ADMIN}, which the administration API needs"
            )));
        }
        Ok(AdminApiUser(principal))
    }
}
group_extractor!(StaffPageUser, PageUser, is_staff, STAFF_ONLY, Response, |e| {
    crate::pages::PageError(e).into_response()
});
group_extractor!(AdminPageUser, PageUser, is_administrator, ADMIN_ONLY, Response, |e| {
    crate::pages::PageError(e).into_response()
});

/// A caller that may add books: an instructor or admin, or a service
/// account with [`SCOPE_WRITE`], as the audit trail names it.
pub struct LibraryWriter(pub crate::audit::Actor);

impl FromRequestParts<AppState> for LibraryWriter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<LibraryWriter, ApiError> {
        let caller = ApiCaller::from_request_parts(parts, state).await?;
        caller.require_scope(SCOPE_WRITE)?;
        match caller.0 {
            Caller::Service { client_id, .. } => Ok(LibraryWriter(crate::audit::Actor::Service(client_id))),
            Caller::User(principal) if principal.is_staff() => {
                Ok(LibraryWriter(crate::audit::Actor::User(principal.user_id)))
            }
            Caller::User(principal) => {
                record_denied(state, &principal, parts, STAFF_ONLY).await;
                Err(ApiError::Forbidden(STAFF_ONLY.into()))
            }
        }
    }
}

/// A signed-in browser user; anyone else is sent to the sign-in page.
pub struct PageUser(pub Principal);

impl FromRequestParts<AppState> for PageUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<PageUser, Response> {
        Ok(PageUser(crate::sessions::Session::from_request_parts(parts, state).await?.principal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: 7,
            email: "l@x.org".into(),
            name: "L".into(),
            password_hash: String::new(),
            groups: vec![Group::Students],
            must_change_password: false,
            disabled: false,
            created_at: 0,
            token_version: 0,
            email_verified: true,
            mfa_secret: None,
            mfa_last_step: None,
            external_subject: None,
        }
    }

    const ISS: &str = "https://lt.example";

    fn expect() -> Expectations<'static> {
        Expectations { issuer: ISS, clients: &[], groups_claim: "groups", group_map: None }
    }

    fn grant() -> Grant<'static> {
        Grant { client_id: CLI_CLIENT_ID, scope: "openid", auth_time: 990, family: "fam", nonce: None }
    }

    #[test]
    fn access_token_claims_are_checked() {
        let keys = crate::keys::generate_for_tests();
        let token = issue_access(&keys, ISS, &user(), &grant(), 60, 1000).expect("issue");
        let claims = validate_builtin(&keys, &expect(), &token, 30, 1010).expect("valid");
        assert_eq!(
            (claims.sub.as_str(), claims.client_id.as_str(), claims.origin.as_str()),
            ("7", CLI_CLIENT_ID, "fam")
        );
        assert_eq!(claims.groups, [Group::Students]);
        assert!(matches!(validate_builtin(&keys, &expect(), &token, 30, 1090), Err(TokenRejection::Expired { .. })));
        assert!(validate_builtin(&keys, &expect(), &token, 30, 1089).is_ok(), "within the skew");
        assert!(matches!(validate_builtin(&keys, &expect(), &token, 30, 900), Err(TokenRejection::NotYetValid { .. })));
        let other_issuer = Expectations { issuer: "https://other", ..expect() };
        assert!(matches!(validate_builtin(&keys, &other_issuer, &token, 30, 1010), Err(TokenRejection::Invalid(_))));
        let clients = ["web".to_string()];
        let only_web = Expectations { clients: &clients, ..expect() };
        assert!(matches!(validate_builtin(&keys, &only_web, &token, 30, 1010), Err(TokenRejection::WrongClient(_))));

        let id_token = issue_id(&keys, ISS, &user(), &grant(), 60, 1000).expect("issue");
        assert_eq!(
            validate_builtin(&keys, &expect(), &id_token, 30, 1010).err(),
            Some(TokenRejection::WrongUse("id".into()))
        );

        let other = crate::keys::generate_for_tests();
        assert!(matches!(validate_builtin(&other, &expect(), &token, 30, 1010), Err(TokenRejection::UnknownKey(_))));
        let mut tampered = token.clone();
        tampered.insert(tampered.len() - 5, 'A');
        assert!(validate_builtin(&keys, &expect(), &tampered, 30, 1010).is_err());
        assert!(matches!(
            validate_builtin(&keys, &expect(), "not.a.token", 30, 1010),
            Err(TokenRejection::Malformed(_))
        ));
    }

    #[test]
    fn cookie_parsing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=1; __Host-lt_session=tok; b=2".parse().expect("header"));
        assert_eq!(cookie(&headers, crate::sessions::SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&headers, "missing"), None);
    }
}
