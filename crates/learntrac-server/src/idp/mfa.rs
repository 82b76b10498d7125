//! TOTP multi-factor sign-in: enrolment with a QR code and recovery codes,
//! turning it off, and checking a second factor. Secrets are stored
//! encrypted with AES-256-GCM under the `mfa-key` secret.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use learntrac_identity::totp::{self, TotpSecret};
use learntrac_store::User;
use serde::Deserialize;

use super::signin::BROWSER;
use super::{Origin, alert, limit_sign_in, record_event};
use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::pages::{PageForm, escape, layout};
use crate::sessions::Session;

/// Recovery codes issued at enrolment.
const RECOVERY_CODES: usize = 10;
/// How long an enrolment form stays valid.
const ENROL_SECONDS: i64 = 600;

/// Encrypts and decrypts with a key derived from the `mfa-key` secret.
pub struct Sealer {
    key: LessSafeKey,
}

impl Sealer {
    pub fn new(secret: &str) -> anyhow::Result<Sealer> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
        let key = UnboundKey::new(&AES_256_GCM, digest.as_ref()).map_err(|_| anyhow::anyhow!("invalid MFA key"))?;
        Ok(Sealer { key: LessSafeKey::new(key) })
    }

    /// Encrypts `plain`, bound to `context`: it only opens with the same context.
    pub fn seal(&self, plain: &str, context: &str) -> anyhow::Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| anyhow::anyhow!("the random number generator failed"))?;
        let mut data = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    pub fn open(&self, sealed: &str, context: &str) -> Option<String> {
        let data = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if data.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = data.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut rest = rest.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::from(context.as_bytes()), &mut rest).ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

fn stored_context(user_id: i64) -> String {
    format!("totp:{user_id}")
}

fn user_secret(state: &AppState, user: &User) -> Option<TotpSecret> {
    let sealed = user.mfa_secret.as_deref()?;
    let Some(base32) = state.mfa_sealer.open(sealed, &stored_context(user.id)) else {
        tracing::error!(user_id = user.id, "the stored TOTP secret does not decrypt; was mfa-key replaced?");
        return None;
    };
    TotpSecret::from_base32(&base32).ok()
}

fn hash_recovery(code: &str) -> String {
    crate::sha256_hex(&totp::normalise_recovery_code(code))
}

/// Checks a TOTP code or an unused recovery code; each works once.
pub async fn check_second_factor(state: &AppState, user: &User, code: &str) -> Result<bool, ApiError> {
    let Some(secret) = user_secret(state, user) else {
        return Ok(false);
    };
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(match secret.verify(&digits, state.now(), user.mfa_last_step) {
            Some(step) => state.store.use_totp_step(user.id, step).await?,
            None => false,
        });
    }
    Ok(state.store.use_recovery_code(user.id, &hash_recovery(code), state.now()).await?)
}

fn enrol_body(state: &AppState, user: &Principal, message: Option<&str>) -> Result<String, ApiError> {
    let secret = TotpSecret::generate()?;
    let base32 = secret.to_base32();
    let issued = state.now();
    let sealed = state.mfa_sealer.seal(&base32, &format!("enrol:{}:{issued}", user.user_id))?;
    let uri = secret.otpauth_uri("LearnTrac", &user.email);
    let qr = totp::qr_svg(&uri)?;
    let required =
        if user.mfa_setup_required { "<p>Your group requires a second factor. Set it up to continue.</p>" } else { "" };
    Ok(format!(
        "<h1>Set up multi-factor sign-in</h1>{required}{}<p>Scan the code with an authenticator app, or enter the \
         key by hand, then type the six-digit code it shows.</p><div class=\"qr\">{qr}</div>\
         <p>Key: <code id=\"totp-secret\">{}</code></p>\
         <form method=\"post\" action=\"/account/mfa\" class=\"narrow\">\
         <input type=\"hidden\" name=\"sealed\" value=\"{}\"><input type=\"hidden\" name=\"issued\" value=\"{issued}\">\
         <label>Code <input type=\"text\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required></label>\
         <button type=\"submit\">Turn on</button></form>",
        alert(message),
        escape(&base32),
        escape(&sealed)
    ))
}

fn manage_body(state: &AppState, user: &User, left: i64, message: Option<&str>) -> String {
    let required = state.config.identity.mfa_required_groups.iter().any(|g| user.in_group(*g));
    let disable = if required {
        "<p>Your group requires a second factor, so it cannot be turned off.</p>".to_string()
    } else {
        "<form method=\"post\" action=\"/account/mfa/disable\" class=\"narrow\">\
         <label>Code or recovery code <input type=\"text\" name=\"code\" required></label>\
         <button type=\"submit\">Turn off</button></form>"
            .to_string()
    };
    format!(
        "<h1>Multi-factor sign-in</h1>{}<p id=\"mfa-on\">Multi-factor sign-in is on. {left} recovery codes are left.</p>{disable}",
        alert(message)
    )
}

pub async fn mfa_page(State(state): State<AppState>, session: Session) -> Result<Html<String>, ApiError> {
    let body = if session.user.mfa_secret.is_some() {
        let left = state.store.unused_recovery_codes(session.user.id).await?;
        manage_body(&state, &session.user, left, None)
    } else {
        enrol_body(&state, &session.principal, None)?
    };
    Ok(layout("Multi-factor sign-in", Some(&session.principal), &body))
}

#[derive(Deserialize)]
pub struct EnrolForm {
    sealed: String,
    issued: i64,
    code: String,
}

/// Turns TOTP on once the user proved they hold the secret, and shows the
/// recovery codes once.
pub async fn enable(
    State(state): State<AppState>,
    origin: Origin,
    session: Session,
    PageForm(form): PageForm<EnrolForm>,
) -> Result<Response, ApiError> {
    let principal = &session.principal;
    let retry = |message: &str| -> Result<Response, ApiError> {
        let body = enrol_body(&state, principal, Some(message))?;
        Ok((StatusCode::BAD_REQUEST, layout("Multi-factor sign-in", Some(principal), &body)).into_response())
    };
    if session.user.mfa_secret.is_some() {
        return retry("Multi-factor sign-in is on already.");
    }
    if let Err(error) = limit_sign_in(&state, origin.peer) {
        return retry(&error.to_string());
    }
    let context = format!("enrol:{}:{}", principal.user_id, form.issued);
    let secret = state
        .mfa_sealer
        .open(&form.sealed, &context)
        .filter(|_| state.now() - form.issued < ENROL_SECONDS)
        .and_then(|base32| TotpSecret::from_base32(&base32).ok());
    let Some(secret) = secret else {
        return retry("The form expired; scan the new code below.");
    };
    let Some(step) = secret.verify(form.code.trim(), state.now(), None) else {
        record_event(&state, &origin, Some(principal.user_id), "mfa_enable", Some("wrong_code"), BROWSER).await;
        return retry("The code does not match; check the device's clock and scan the new code below.");
    };
    let codes = totp::recovery_codes(RECOVERY_CODES)?;
    let hashes: Vec<String> = codes.iter().map(|c| hash_recovery(c)).collect();
    let sealed = state.mfa_sealer.seal(&secret.to_base32(), &stored_context(principal.user_id))?;
    state.store.set_mfa(principal.user_id, Some((&sealed, &hashes))).await?;
    state.store.use_totp_step(principal.user_id, step).await?;
    state.sessions.clear();
    record_event(&state, &origin, Some(principal.user_id), "mfa_enable", None, BROWSER).await;
    let list: String = codes.iter().map(|c| format!("<li><code>{c}</code></li>")).collect();
    let body = format!(
        "<h1>Multi-factor sign-in is on</h1><p>Keep these recovery codes somewhere safe. Each one signs you in \
         once if you lose your device; they are shown only now.</p><ul id=\"recovery-codes\">{list}</ul>\
         <p><a href=\"/account\">Back to your account</a></p>"
    );
    let mut shown = principal.clone();
    shown.mfa_setup_required = false;
    Ok(layout("Multi-factor sign-in", Some(&shown), &body).into_response())
}

#[derive(Deserialize)]
pub struct CodeForm {
    code: String,
}

pub async fn disable(
    State(state): State<AppState>,
    origin: Origin,
    session: Session,
    PageForm(form): PageForm<CodeForm>,
) -> Result<Response, ApiError> {
    let user = &session.user;
    let left = state.store.unused_recovery_codes(user.id).await?;
    let page = |status: StatusCode, message: &str| {
        (
            status,
            layout("Multi-factor sign-in", Some(&session.principal), &manage_body(&state, user, left, Some(message))),
        )
            .into_response()
    };
    if user.mfa_secret.is_none() {
        return Ok(axum::response::Redirect::to("/account/mfa").into_response());
    }
    if state.config.identity.mfa_required_groups.iter().any(|g| user.in_group(*g)) {
        return Ok(page(StatusCode::FORBIDDEN, "Your group requires a second factor."));
    }
    if let Err(error) = limit_sign_in(&state, origin.peer) {
        return Ok(page(error.status(), &error.to_string()));
    }
    if !check_second_factor(&state, user, &form.code).await? {
        record_event(&state, &origin, Some(user.id), "mfa_disable", Some("wrong_code"), BROWSER).await;
        return Ok(page(StatusCode::BAD_REQUEST, "The code is wrong or was used already."));
    }
    state.store.set_mfa(user.id, None).await?;
    state.sessions.clear();
    record_event(&state, &origin, Some(user.id), "mfa_disable", None, BROWSER).await;
    Ok(axum::response::Redirect::to("/account").into_response())
}

#[cfg(test)]
mod tests {
    use super::Sealer;

    #[test]
    fn sealed_values_open_only_in_their_context() {
        let sealer = Sealer::new("key").expect("sealer");
        let sealed = sealer.seal("JBSWY3DPEHPK3PXP", "totp:1").expect("seal");
        assert_eq!(sealer.open(&sealed, "totp:1").as_deref(), Some("JBSWY3DPEHPK3PXP"));
        assert_eq!(sealer.open(&sealed, "totp:2"), None);
        assert_eq!(Sealer::new("other").expect("sealer").open(&sealed, "totp:1"), None);
        assert_eq!(sealer.open("AAAA", "totp:1"), None);
    }
}
