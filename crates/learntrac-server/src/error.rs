//! The one place where failures become HTTP responses. Clients get a short
//! message and the request id; internal causes go to the log only.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::gateway::current_request_id;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A malformed or invalid request; `code` is stable and greppable.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// No credentials were sent.
    #[error("authentication required; send an access token as Authorization: Bearer TOKEN")]
    Unauthorized,
    /// Invalid or expired credentials. The exact reason has been logged on
    /// the security target; the client sees a generic message.
    #[error("the access token is invalid or expired; get a new one from /oauth2/token")]
    InvalidToken,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("too many requests; retry after {retry_after} seconds")]
    TooManyRequests { retry_after: u64 },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request headers are larger than {limit} bytes; send fewer or shorter headers (cookies included)")]
    HeadersTooLarge { limit: usize },
    #[error("the request was not received within {0} seconds")]
    RequestTimeout(u64),
    /// The gateway received no valid response from the upstream.
    #[error("the service behind the gateway failed to answer; try again")]
    BadGateway,
    /// No instance of the upstream is healthy.
    #[error("the service is unavailable; try again shortly")]
    ServiceUnavailable,
    #[error("the service did not answer within {0} seconds")]
    GatewayTimeout(u64),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest { code, message: message.into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::InvalidToken => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::BadGateway => StatusCode::BAD_GATEWAY,
            ApiError::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::Unauthorized => "unauthorized",
            ApiError::InvalidToken => "invalid_token",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::HeadersTooLarge { .. } => "headers_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::BadGateway => "bad_gateway",
            ApiError::ServiceUnavailable => "service_unavailable",
            ApiError::GatewayTimeout(_) => "gateway_timeout",
            ApiError::Internal(_) => "internal",
        }
    }

    /// Returns the message shown to the client. Internal errors are logged
    /// here with their whole cause chain.
    pub fn public_message(&self) -> String {
        if let ApiError::Internal(error) = self {
            tracing::error!(request_id = %current_request_id(), error = format!("{error:#}"), "request failed");
            return format!("internal error; quote request id {} when reporting it", current_request_id());
        }
        self.to_string()
    }
}

impl From<learntrac_store::StoreError> for ApiError {
    fn from(error: learntrac_store::StoreError) -> ApiError {
        match error {
            learntrac_store::StoreError::Conflict(what) => ApiError::Conflict(format!("{what} already exists")),
            other => ApiError::Internal(anyhow::Error::new(other)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({
            "error": self.code(),
            "message": self.public_message(),
            "request_id": current_request_id(),
        });
        let mut response = (status, Json(body)).into_response();
        add_challenge(&self, &mut response);
        response
    }
}

/// Adds `WWW-Authenticate` to a 401 (with `error="invalid_token"` only
/// when a token was sent, as RFC 6750 section 3.1 asks) and `Retry-After`
/// to a 429.
pub fn add_challenge(error: &ApiError, response: &mut Response) {
    match error {
        ApiError::Unauthorized => {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"learntrac\""));
        }
        ApiError::InvalidToken => {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"learntrac\", error=\"invalid_token\""),
            );
        }
        ApiError::TooManyRequests { retry_after } => {
            if let Ok(value) = HeaderValue::from_str(&retry_after.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        _ => {}
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
