//! Tokens: issuing RS256 JWTs and validating them on every trac and api
//! request, with the reason for each rejection logged on the security target.

use std::collections::HashSet;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use jsonwebtoken::{Algorithm, Header, Validation};
use learntrac_store::{Group, User};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::keys::SigningKeys;

/// Audience of access tokens; ID tokens name the client instead.
pub const ACCESS_AUDIENCE: &str = "learntrac";
/// The public client that scripts use with the password grant.
pub const CLI_CLIENT_ID: &str = "learntrac-cli";
/// Name of the browser session cookie, whose value is an access token.
pub const SESSION_COOKIE: &str = "lt_session";
/// Tolerance for clock differences when checking `exp` and `nbf`, in seconds.
pub const LEEWAY: i64 = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenUse {
    Access,
    Id,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub token_use: TokenUse,
    pub email: String,
    pub name: String,
    pub groups: Vec<Group>,
    /// Set on the session of a user who must change a one-time password
    /// before doing anything else.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub password_change_required: bool,
    /// The user's token version at issue; a password change raises it.
    #[serde(default)]
    pub ver: i64,
}

/// The authenticated user of a request, from a validated token.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: i64,
    pub email: String,
    pub name: String,
    pub groups: Vec<Group>,
    pub password_change_required: bool,
}

impl Principal {
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

/// Signs a token of `token_use` for `user`, valid for `lifetime` seconds from `now`.
pub fn issue(
    keys: &SigningKeys,
    issuer: &str,
    audience: &str,
    token_use: TokenUse,
    user: &User,
    lifetime: i64,
    now: i64,
) -> anyhow::Result<String> {
    let claims = Claims {
        iss: issuer.to_string(),
        sub: user.id.to_string(),
        aud: audience.to_string(),
        exp: now + lifetime,
        iat: now,
        nbf: now,
        jti: crate::random_token(12),
        token_use,
        email: user.email.clone(),
        name: user.name.clone(),
        groups: user.groups.clone(),
        password_change_required: user.must_change_password,
        ver: user.token_version,
    };
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(keys.kid.clone());
    jsonwebtoken::encode(&header, &claims, &keys.encoding).map_err(|e| anyhow::anyhow!("LT-TOKEN-SIGN: {e}"))
}

/// The reason a token was rejected; logged, never sent to the client.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("unknown key id {0:?}")]
    UnknownKey(Option<String>),
    #[error("invalid signature or claims: {0}")]
    Invalid(String),
    #[error("expired at {exp}, now {now}")]
    Expired { exp: i64, now: i64 },
    #[error("not valid before {nbf}, now {now}")]
    NotYetValid { nbf: i64, now: i64 },
    #[error("token_use is {0:?}, expected access")]
    WrongUse(TokenUse),
}

/// Validates an access token: RS256 only, the signing key's id, the
/// signature, `iss`, `aud`, `exp` and `nbf` against `now`, and `token_use`.
pub fn validate_access(keys: &SigningKeys, issuer: &str, token: &str, now: i64) -> Result<Claims, TokenRejection> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| TokenRejection::Malformed(e.to_string()))?;
    if header.alg != Algorithm::RS256 {
        return Err(TokenRejection::Invalid(format!("algorithm {:?} is not allowed", header.alg)));
    }
    if header.kid.as_deref() != Some(keys.kid.as_str()) {
        return Err(TokenRejection::UnknownKey(header.kid));
    }

    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[ACCESS_AUDIENCE]);
    validation.required_spec_claims =
        HashSet::from(["exp".into(), "iss".into(), "aud".into(), "sub".into(), "nbf".into()]);
    // Time is checked below against the caller's clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let claims = jsonwebtoken::decode::<Claims>(token, &keys.decoding, &validation)
        .map_err(|e| TokenRejection::Invalid(e.to_string()))?
        .claims;

    check_time(&claims, now)?;
    if claims.token_use != TokenUse::Access {
        return Err(TokenRejection::WrongUse(claims.token_use));
    }
    Ok(claims)
}

/// Checks `exp` and `nbf` against `now`, with [`LEEWAY`].
fn check_time(claims: &Claims, now: i64) -> Result<(), TokenRejection> {
    if claims.exp + LEEWAY <= now {
        return Err(TokenRejection::Expired { exp: claims.exp, now });
    }
    if claims.nbf - LEEWAY > now {
        return Err(TokenRejection::NotYetValid { nbf: claims.nbf, now });
    }
    Ok(())
}

fn principal_from(claims: Claims) -> Option<Principal> {
    Some(Principal {
        user_id: claims.sub.parse().ok()?,
        email: claims.email,
        name: claims.name,
        groups: claims.groups,
        password_change_required: claims.password_change_required,
    })
}

/// How long a token's revocation check is reused before the database is
/// asked again. Within one process, a password change or sign-out clears
/// the cache at once; other processes notice within this time.
const REVOCATION_CHECK_SECONDS: u64 = 5;

/// Cached answers to "is this token id still accepted?".
#[derive(Default)]
pub struct RevocationCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, bool)>>,
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
    /// `generation`, unless a sign-out or password change cleared it since.
    fn put(&self, jti: &str, accepted: bool, generation: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation() != generation {
            return;
        }
        if entries.len() >= 100_000 {
            entries.clear();
        }
        entries.insert(jti.to_string(), (std::time::Instant::now(), accepted));
    }

    /// Forgets every cached answer, after a sign-out or password change.
    pub fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        entries.clear();
    }
}

/// Most tokens whose verified claims are kept; the cache is emptied when full.
const VERIFIED_TOKENS_MAX: usize = 10_000;

/// Claims of tokens whose signature and claims were already verified, by
/// the SHA-256 of the whole token, so that a session's repeated requests
/// skip the RSA verification. Time is still checked on every use.
#[derive(Default)]
pub struct VerifiedTokens {
    entries: std::sync::RwLock<std::collections::HashMap<[u8; 32], Claims>>,
}

impl VerifiedTokens {
    fn key(token: &str) -> [u8; 32] {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    /// Returns the user id of `token` when its signature and claims are
    /// valid, like [`VerifiedTokens::validate`] but without copying the claims.
    pub(crate) fn user_id(&self, keys: &SigningKeys, issuer: &str, token: &str, now: i64) -> Option<i64> {
        let key = VerifiedTokens::key(token);
        if let Some(claims) = self.entries.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return check_time(claims, now).ok().and_then(|()| claims.sub.parse().ok());
        }
        self.validate(keys, issuer, token, now).ok().and_then(|claims| claims.sub.parse().ok())
    }

    /// Returns the claims of `token`, verifying it only if it is not cached.
    pub(crate) fn validate(
        &self,
        keys: &SigningKeys,
        issuer: &str,
        token: &str,
        now: i64,
    ) -> Result<Claims, TokenRejection> {
        let key = VerifiedTokens::key(token);
        let cached = self.entries.read().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        if let Some(claims) = cached {
            check_time(&claims, now)?;
            return Ok(claims);
        }
        let claims = validate_access(keys, issuer, token, now)?;
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= VERIFIED_TOKENS_MAX {
            entries.clear();
        }
        entries.insert(key, claims.clone());
        Ok(claims)
    }
}

/// Validates `token` (signature and claims, then revocation) and logs the
/// reason when it is rejected. `Ok(None)` means rejected.
pub async fn authenticate(
    state: &AppState,
    token: &str,
    source: &str,
) -> Result<Option<(Principal, Claims)>, ApiError> {
    let claims = match state.verified_tokens.validate(&state.keys, &state.config.public_url, token, state.now()) {
        Ok(claims) => claims,
        Err(reason) => {
            tracing::warn!(target: "learntrac::security", source, reason = %reason, "token rejected");
            return Ok(None);
        }
    };
    let Some(principal) = principal_from(claims.clone()) else {
        tracing::warn!(target: "learntrac::security", source, sub = %claims.sub, "token rejected: subject is not a user id");
        return Ok(None);
    };

    let accepted = match state.revocations.get(&claims.jti) {
        Some(accepted) => accepted,
        None => {
            let generation = state.revocations.generation();
            let accepted = state.store.token_accepted(principal.user_id, &claims.jti, claims.ver).await?;
            state.revocations.put(&claims.jti, accepted, generation);
            accepted
        }
    };
    if !accepted {
        tracing::warn!(
            target: "learntrac::security",
            source,
            user_id = principal.user_id,
            "token rejected: signed out, password changed since, or user disabled or deleted"
        );
        return Ok(None);
    }
    crate::gateway::record_user(principal.user_id);
    Ok(Some((principal, claims)))
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

/// An API caller with a valid bearer access token.
pub struct ApiUser(pub Principal);

impl FromRequestParts<AppState> for ApiUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<ApiUser, ApiError> {
        let Some(token) = bearer_token(&parts.headers) else {
            tracing::info!(target: "learntrac::security", path = parts.uri.path(), "request without a bearer token");
            return Err(ApiError::Unauthorized);
        };
        let (principal, _) = authenticate(state, token, "bearer").await?.ok_or(ApiError::InvalidToken)?;
        if principal.password_change_required {
            return Err(ApiError::Forbidden("the password must be changed first; sign in at /login".into()));
        }
        Ok(ApiUser(principal))
    }
}

/// The message of a 403 for a right that only instructors and admins have.
const STAFF_ONLY: &str = "only instructors and admins may do this";

/// An API caller in the instructors or admins group.
/// Records a learner's request for a staff-only action in the audit trail.
async fn record_denied(state: &AppState, principal: &Principal, parts: &Parts, reason: &str) {
    // Nested routers see the path without their prefix; the original URI has it.
    let path = parts.extensions.get::<axum::extract::OriginalUri>().map_or(parts.uri.path(), |uri| uri.0.path());
    let target = format!("{} {path}", parts.method);
    let actor = crate::audit::Actor::User(principal.user_id);
    crate::audit::record(state, actor, "access.staff_only", &target, "denied", reason).await;
}

pub struct StaffApiUser(pub Principal);

impl FromRequestParts<AppState> for StaffApiUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<StaffApiUser, ApiError> {
        let ApiUser(principal) = ApiUser::from_request_parts(parts, state).await?;
        if !principal.is_staff() {
            record_denied(state, &principal, parts, STAFF_ONLY).await;
            return Err(ApiError::Forbidden(STAFF_ONLY.into()));
        }
        Ok(StaffApiUser(principal))
    }
}

/// A signed-in instructor or admin on the pages.
pub struct StaffPageUser(pub Principal);

impl FromRequestParts<AppState> for StaffPageUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<StaffPageUser, Response> {
        let PageUser(principal) = PageUser::from_request_parts(parts, state).await?;
        if !principal.is_staff() {
            record_denied(state, &principal, parts, STAFF_ONLY).await;
            return Err(crate::pages::PageError(ApiError::Forbidden(STAFF_ONLY.into())).into_response());
        }
        Ok(StaffPageUser(principal))
    }
}

/// A signed-in admin or operator on the pages, for the administration
/// screens (operators may only read them).
pub struct AdminPageUser(pub Principal);

impl FromRequestParts<AppState> for AdminPageUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<AdminPageUser, Response> {
        let PageUser(principal) = PageUser::from_request_parts(parts, state).await?;
        if !principal.is_administrator() {
            record_denied(state, &principal, parts, ADMIN_ONLY).await;
            return Err(crate::pages::PageError(ApiError::Forbidden(ADMIN_ONLY.into())).into_response());
        }
        Ok(AdminPageUser(principal))
    }
}

/// An admin or operator calling the administration API.
pub struct AdminApiUser(pub Principal);

impl FromRequestParts<AppState> for AdminApiUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<AdminApiUser, ApiError> {
        let ApiUser(principal) = ApiUser::from_request_parts(parts, state).await?;
        if !principal.is_administrator() {
            record_denied(state, &principal, parts, ADMIN_ONLY).await;
            return Err(ApiError::Forbidden(ADMIN_ONLY.into()));
        }
        Ok(AdminApiUser(principal))
    }
}

const ADMIN_ONLY: &str = "only admins and operators may use the administration screens";

/// A signed-in browser user; anyone else is sent to the sign-in page.
pub struct PageUser(pub Principal);

/// The session of a signed-in browser user, with its token's claims.
pub struct Session {
    pub principal: Principal,
    pub claims: Claims,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Session, Response> {
        let next = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let to_sign_in = || Redirect::to(&format!("/login?next={}", crate::pages::url_encode(next))).into_response();
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_sign_in());
        };
        let authenticated = authenticate(state, token, "session")
            .await
            .map_err(|error| crate::pages::PageError(error).into_response())?;
        let Some((principal, claims)) = authenticated else {
            return Err(to_sign_in());
        };
        if principal.password_change_required && parts.uri.path() != "/account/password" {
            return Err(Redirect::to("/account/password").into_response());
        }
        Ok(Session { principal, claims })
    }
}

impl FromRequestParts<AppState> for PageUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<PageUser, Response> {
        Ok(PageUser(Session::from_request_parts(parts, state).await?.principal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SigningKeys {
        crate::keys::generate_for_tests()
    }

    fn user() -> User {
        learntrac_store::User {
            id: 7,
            email: "l@x.org".into(),
            name: "L".into(),
            password_hash: String::new(),
            groups: vec![Group::Students],
            must_change_password: false,
            disabled: false,
            created_at: 0,
            token_version: 0,
        }
    }

    #[test]
    fn access_token_claims_are_checked() {
        let keys = keys();
        let iss = "https://lt.example";
        let token = issue(&keys, iss, ACCESS_AUDIENCE, TokenUse::Access, &user(), 60, 1000).expect("issue");
        assert_eq!(validate_access(&keys, iss, &token, 1010).map(|c| c.sub), Ok("7".to_string()));
        assert!(matches!(validate_access(&keys, iss, &token, 2000), Err(TokenRejection::Expired { .. })));
        assert!(matches!(validate_access(&keys, iss, &token, 100), Err(TokenRejection::NotYetValid { .. })));
        assert!(matches!(validate_access(&keys, "https://other", &token, 1010), Err(TokenRejection::Invalid(_))));

        let id_token = issue(&keys, iss, CLI_CLIENT_ID, TokenUse::Id, &user(), 60, 1000).expect("issue");
        assert!(
            matches!(validate_access(&keys, iss, &id_token, 1010), Err(TokenRejection::Invalid(_))),
            "wrong audience"
        );
        let id_as_access = issue(&keys, iss, ACCESS_AUDIENCE, TokenUse::Id, &user(), 60, 1000).expect("issue");
        assert_eq!(
            validate_access(&keys, iss, &id_as_access, 1010).err(),
            Some(TokenRejection::WrongUse(TokenUse::Id))
        );

        let other = self::keys();
        assert!(matches!(validate_access(&other, iss, &token, 1010), Err(TokenRejection::UnknownKey(_))));
        let mut tampered = token.clone();
        tampered.insert(tampered.len() - 5, 'A');
        assert!(validate_access(&keys, iss, &tampered, 1010).is_err());
        assert!(matches!(validate_access(&keys, iss, "not.a.token", 1010), Err(TokenRejection::Malformed(_))));
    }

    #[test]
    fn verified_tokens_still_expire() {
        let keys = keys();
        let iss = "https://lt.example";
        let cache = VerifiedTokens::default();
        let token = issue(&keys, iss, ACCESS_AUDIENCE, TokenUse::Access, &user(), 60, 1000).expect("issue");
        assert!(cache.validate(&keys, iss, &token, 1010).is_ok());
        assert!(cache.validate(&keys, iss, &token, 1020).is_ok(), "served from the cache");
        assert!(matches!(cache.validate(&keys, iss, &token, 2000), Err(TokenRejection::Expired { .. })));
        let mut tampered = token.clone();
        tampered.push('x');
        assert!(cache.validate(&keys, iss, &tampered, 1010).is_err(), "another token string is verified afresh");
    }

    #[test]
    fn cookie_parsing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=1; lt_session=tok; b=2".parse().expect("header"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&headers, "missing"), None);
    }
}
