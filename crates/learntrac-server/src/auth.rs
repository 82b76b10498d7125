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
/// Name of the browser session cookie, which holds an access token.
pub const SESSION_COOKIE: &str = "lt_session";
/// Tolerance for clock differences when checking `exp` and `nbf`, in seconds.
const LEEWAY: i64 = 30;

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
    };
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(keys.kid.clone());
    jsonwebtoken::encode(&header, &claims, &keys.encoding).map_err(|e| anyhow::anyhow!("LT-TOKEN-SIGN: {e}"))
}

/// Why a token was rejected; logged, never sent to the client.
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
    validation.required_spec_claims = HashSet::from(["exp".into(), "iss".into(), "aud".into(), "sub".into(), "nbf".into()]);
    // Time is checked below against the caller's clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let claims = jsonwebtoken::decode::<Claims>(token, &keys.decoding, &validation)
        .map_err(|e| TokenRejection::Invalid(e.to_string()))?
        .claims;

    if claims.exp + LEEWAY <= now {
        return Err(TokenRejection::Expired { exp: claims.exp, now });
    }
    if claims.nbf - LEEWAY > now {
        return Err(TokenRejection::NotYetValid { nbf: claims.nbf, now });
    }
    if claims.token_use != TokenUse::Access {
        return Err(TokenRejection::WrongUse(claims.token_use));
    }
    Ok(claims)
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

/// Validates `token` and logs the reason when it is rejected.
fn authenticate(state: &AppState, token: &str, source: &str) -> Option<Principal> {
    match validate_access(&state.keys, &state.config.public_url, token, state.now()) {
        Ok(claims) => principal_from(claims),
        Err(reason) => {
            tracing::warn!(target: "learntrac::security", source, reason = %reason, "token rejected");
            None
        }
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
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
        let principal = authenticate(state, token, "bearer").ok_or(ApiError::InvalidToken)?;
        if principal.password_change_required {
            return Err(ApiError::Forbidden("the password must be changed first; sign in at /login".into()));
        }
        Ok(ApiUser(principal))
    }
}

/// A signed-in browser user; anyone else is sent to the sign-in page.
pub struct PageUser(pub Principal);

/// Redirect to the sign-in page, coming back to the requested page after.
pub struct SignInRedirect(String);

impl IntoResponse for SignInRedirect {
    fn into_response(self) -> Response {
        Redirect::to(&self.0).into_response()
    }
}

impl FromRequestParts<AppState> for PageUser {
    type Rejection = SignInRedirect;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<PageUser, SignInRedirect> {
        let next = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let to_sign_in = || SignInRedirect(format!("/login?next={}", crate::pages::url_encode(next)));
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_sign_in());
        };
        let principal = authenticate(state, token, "session").ok_or_else(to_sign_in)?;
        if principal.password_change_required && parts.uri.path() != "/account/password" {
            return Err(SignInRedirect("/account/password".into()));
        }
        Ok(PageUser(principal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SigningKeys {
        let dir = std::env::temp_dir().join(format!("lt-keys-{}", crate::random_token(6)));
        let keys = SigningKeys::load_or_generate(&dir).expect("keys");
        let _ = std::fs::remove_dir_all(&dir);
        keys
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
        }
    }

    #[test]
    fn tokens_are_checked_for_time_issuer_audience_and_use() {
        let keys = keys();
        let iss = "https://lt.example";
        let token = issue(&keys, iss, ACCESS_AUDIENCE, TokenUse::Access, &user(), 60, 1000).expect("issue");
        assert_eq!(validate_access(&keys, iss, &token, 1010).map(|c| c.sub), Ok("7".to_string()));
        assert!(matches!(validate_access(&keys, iss, &token, 2000), Err(TokenRejection::Expired { .. })));
        assert!(matches!(validate_access(&keys, iss, &token, 100), Err(TokenRejection::NotYetValid { .. })));
        assert!(matches!(validate_access(&keys, "https://other", &token, 1010), Err(TokenRejection::Invalid(_))));

        let id_token = issue(&keys, iss, CLI_CLIENT_ID, TokenUse::Id, &user(), 60, 1000).expect("issue");
        assert!(matches!(validate_access(&keys, iss, &id_token, 1010), Err(TokenRejection::Invalid(_))), "wrong audience");
        let id_as_access = issue(&keys, iss, ACCESS_AUDIENCE, TokenUse::Id, &user(), 60, 1000).expect("issue");
        assert_eq!(validate_access(&keys, iss, &id_as_access, 1010).err(), Some(TokenRejection::WrongUse(TokenUse::Id)));

        let other = self::keys();
        assert!(matches!(validate_access(&other, iss, &token, 1010), Err(TokenRejection::UnknownKey(_))));
        let mut tampered = token.clone();
        tampered.insert(tampered.len() - 5, 'A');
        assert!(validate_access(&keys, iss, &tampered, 1010).is_err());
        assert!(matches!(validate_access(&keys, iss, "not.a.token", 1010), Err(TokenRejection::Malformed(_))));
    }

    #[test]
    fn cookie_parsing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=1; lt_session=tok; b=2".parse().expect("header"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&headers, "missing"), None);
    }
}
