//! The checks the gateway applies to a request before it forwards it:
//! administration address ranges, rate limits, upload type and size, body
//! size and time, filtering rules, and the forwarded headers.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::Response;

use super::settings::{self, GatewaySettings};
use super::{Gateway, REQUEST, current_request_id, enter_role, limits, log_role, record_user, upstream, waf};
use crate::AppState;
use crate::error::ApiError;

/// Most bytes of a rejected request's body that the gateway reads and
/// discards, and the time it spends on them.
const DRAIN_BYTES: usize = 8 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads and discards a rejected request's body, so that the client, which
/// may still be sending it, receives the error response. Returns the body
/// when it is longer than [`DRAIN_BYTES`] or slower than [`DRAIN_TIME`].
pub(super) async fn drain(mut body: Body) -> Option<Body> {
    use http_body_util::BodyExt;
    let mut read = 0usize;
    let reading = async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    read += frame.data_ref().map_or(0, |data| data.len());
                    if read > DRAIN_BYTES {
                        return false;
                    }
                }
                Err(_) => return true,
            }
        }
        true
    };
    match tokio::time::timeout(DRAIN_TIME, reading).await {
        Ok(true) => None,
        _ => Some(body),
    }
}

/// Keeps an unread request body until the error response has been sent.
/// Over HTTP/2, dropping it first would reset the stream (CANCEL) and the
/// client would lose the response. Dropped after it, the reset carries
/// NO_ERROR, which most clients accept.
pub(super) fn drop_after_response(response: Response, request_body: Body) -> Response {
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Body::new(AfterResponse { response: body, _request: request_body }))
}

struct AfterResponse {
    response: Body,
    _request: Body,
}

impl http_body::Body for AfterResponse {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.response).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.response.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.response.size_hint()
    }
}

pub(super) async fn checked_forward(
    gateway: &Gateway,
    mut parts: axum::http::request::Parts,
    unread: &mut Option<Body>,
) -> Result<Response, ApiError> {
    let settings = &gateway.settings;
    let state = &gateway.app;
    let path = parts.uri.path().to_string();
    let client = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|connect| connect.0.ip())
        .ok_or_else(|| anyhow::anyhow!("the request has no client address"))?;

    if settings.is_admin_path(&path) && !settings.admin_allowed(client) {
        let masked = state.masker.mask(client);
        tracing::warn!(
            target: "learntrac::security",
            client = masked,
            path,
            request_id = %current_request_id(),
            "administration request rejected: client address outside admin_networks"
        );
        let actor = match signed_in_user(state, &parts.headers).await {
            Some(user_id) => crate::audit::Actor::User(user_id),
            None => crate::audit::Actor::Anonymous,
        };
        let details = "client address outside admin_networks";
        crate::audit::record(state, actor, "admin.access", &path, "denied", details).await;
        return Err(ApiError::Forbidden("administration is not allowed from this address".into()));
    }

    check_rate_limits(gateway, &parts, client, &path).await?;

    let body = if settings.is_upload_path(&path) && parts.method == axum::http::Method::POST {
        inspect(gateway, &parts, &[])?;
        check_upload(gateway, &parts)?;
        let body = unread.take().unwrap_or_default();
        upstream::ForwardBody::Streamed(Body::new(http_body_util::Limited::new(body, state.config.max_upload_bytes)))
    } else {
        let limit = settings.max_body_bytes;
        if declared_length(&parts).is_some_and(|length| length > limit as u64) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        let bytes = read_body(settings, unread).await?;
        inspect(gateway, &parts, &bytes)?;
        upstream::ForwardBody::Buffered(bytes)
    };

    let Some(route) = gateway.table.lookup(&path) else {
        return Err(ApiError::NotFound("page".into()));
    };
    // The events of a role in this process go to its log group; the
    // gateway's own events about a remote upstream stay in the gateway's.
    if matches!(*route.upstream, upstream::Upstream::Local(_)) {
        enter_role(log_role(&route.name));
    }
    set_forwarded_headers(&mut parts, client);
    let timeout = Duration::from_secs(settings.request_seconds);
    let result = upstream::forward(
        &route.upstream,
        &route.name,
        &gateway.client,
        &state.metrics,
        axum::http::Request::from_parts(parts, body),
        timeout,
    )
    .await;
    let mut response = match result {
        Ok(response) => response,
        Err(upstream::ForwardError::Unavailable) => {
            tracing::error!(upstream = %route.name, request_id = %current_request_id(), "no healthy instance for the request");
            return Err(ApiError::ServiceUnavailable);
        }
        Err(upstream::ForwardError::Timeout) => return Err(ApiError::GatewayTimeout(settings.request_seconds)),
        Err(upstream::ForwardError::Failed(cause)) => {
            tracing::error!(
                upstream = %route.name,
                request_id = %current_request_id(),
                cause,
                "the upstream returned no valid response"
            );
            return Err(ApiError::BadGateway);
        }
    };
    take_role_report(&mut response);
    Ok(response)
}

/// Takes one token from each bucket the request counts against.
async fn check_rate_limits(
    gateway: &Gateway,
    request: &axum::http::request::Parts,
    client: std::net::IpAddr,
    path: &str,
) -> Result<(), ApiError> {
    let limits = &gateway.settings.rate_limits;
    let now = Instant::now();
    let mut checks = vec![("address", limits::BucketKey::Address(client), limits.address)];
    if request.method == axum::http::Method::POST && gateway.settings.is_auth_path(path) {
        checks.push(("auth", limits::BucketKey::Auth(client), limits.auth));
    }
    if let Some(user_id) = signed_in_user(&gateway.app, &request.headers).await {
        checks.push(("user", limits::BucketKey::User(user_id), limits.user));
    }
    for (scope, key, bucket) in checks {
        if let Err(retry_after) = gateway.buckets.take(key, bucket, now) {
            let state = &gateway.app;
            state.metrics.observe_rate_limited(scope);
            let masked = state.masker.mask(client);
            tracing::warn!(
                target: "learntrac::security",
                client = masked,
                scope,
                path,
                retry_after,
                request_id = %current_request_id(),
                "rate limit exceeded"
            );
            return Err(ApiError::TooManyRequests { retry_after });
        }
    }
    Ok(())
}

/// Returns the user id of the request's bearer token or session cookie
/// when it is valid, so that one user's sessions share a bucket and no
/// client can spend another user's. Both lookups are cached, so the role
/// that handles the request finds the result ready.
async fn signed_in_user(state: &AppState, headers: &axum::http::HeaderMap) -> Option<i64> {
    if let Some(token) = crate::auth::bearer_token(headers) {
        let skew = state.config.identity.clock_skew_seconds;
        if let Some(user_id) = state.verified_tokens.cached_user(token, skew, state.now()) {
            return Some(user_id);
        }
        // The role validates and logs the token; this check stays quiet so
        // that a rejected token is logged once.
        return crate::auth::builtin_user_quietly(state, token);
    }
    if let Some(user_id) = state.sessions.cached_user(headers) {
        return Some(user_id);
    }
    let found = crate::sessions::current(state, headers, learntrac_store::SessionStage::Active).await;
    found.ok().flatten().map(|(_, user)| user.id)
}

/// Content types a raw upload may declare: the file formats the library
/// reads, or none in particular.
const RAW_UPLOAD_TYPES: &[&str] = &[
    "application/pdf",
    "text/html",
    "application/xhtml+xml",
    "text/markdown",
    "text/x-markdown",
    "text/plain",
    "application/octet-stream",
];

/// File name endings the library reads.
const UPLOAD_ENDINGS: &[&str] = &[".pdf", ".html", ".htm", ".xhtml", ".md", ".markdown"];

/// Checks an upload's declared content type, its file name and its
/// declared size. The body is then streamed to the role, and the size
/// limit is enforced as it goes. The JSON API takes the raw file (with
/// `?name=`), and the pages take a `multipart/form-data` form.
fn check_upload(gateway: &Gateway, parts: &axum::http::request::Parts) -> Result<(), ApiError> {
    let limit = gateway.app.config.max_upload_bytes;
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if parts.uri.path().starts_with("/api/") {
        if !essence.is_empty() && !RAW_UPLOAD_TYPES.contains(&essence.as_str()) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "an upload of type {content_type:?} is not accepted; send the PDF, HTML or Markdown file itself \
                 as the request body, with ?name=FILE"
            )));
        }
        let named =
            parts.uri.query().into_iter().flat_map(|q| q.split('&')).find_map(|pair| pair.strip_prefix("name="));
        if let Some(name) = named {
            let name = waf::percent_decode(&name.replace('+', " ")).unwrap_or_default().to_ascii_lowercase();
            if !UPLOAD_ENDINGS.iter().any(|ending| name.ends_with(ending)) {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "{name:?} is not a PDF, HTML or Markdown file name; name it .pdf, .html, .htm, .xhtml, .md or .markdown"
                )));
            }
        }
    } else if essence != "multipart/form-data" {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the upload form must be sent as multipart/form-data, not {content_type:?}"
        )));
    }
    if declared_length(parts).is_some_and(|length| length > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    Ok(())
}

fn declared_length(parts: &axum::http::request::Parts) -> Option<u64> {
    parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// Reads a whole request body within the size and time limits.
async fn read_body(settings: &GatewaySettings, unread: &mut Option<Body>) -> Result<bytes::Bytes, ApiError> {
    use http_body_util::BodyExt;
    let limit = settings.max_body_bytes;
    let Some(mut body) = unread.take() else { return Ok(bytes::Bytes::new()) };
    if axum::body::HttpBody::is_end_stream(&body) {
        return Ok(bytes::Bytes::new());
    }
    let mut collected = bytes::BytesMut::new();
    let reading = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                ApiError::bad_request("unreadable_body", "the request body could not be read; send it again")
            })?;
            if let Some(data) = frame.data_ref() {
                if collected.len() + data.len() > limit {
                    return Err(ApiError::PayloadTooLarge { limit });
                }
                collected.extend_from_slice(data);
            }
        }
        Ok(())
    };
    let result = match tokio::time::timeout(Duration::from_secs(settings.request_seconds), reading).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::RequestTimeout(settings.request_seconds)),
    };
    match result {
        Ok(()) => Ok(collected.freeze()),
        Err(error) => {
            // The rest of an over-long or slow body is drained before the
            // error response, like a body that was never read.
            *unread = Some(body);
            Err(error)
        }
    }
}

/// Runs the filtering rules; logs every match and refuses the request when
/// a rule in block mode matched.
fn inspect(gateway: &Gateway, parts: &axum::http::request::Parts, body: &[u8]) -> Result<(), ApiError> {
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let content_type = content_type.to_ascii_lowercase();
    let kind = if body.is_empty() {
        waf::BodyKind::None
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        waf::BodyKind::Form(body)
    } else if content_type.starts_with("application/json") || content_type.contains("+json") {
        waf::BodyKind::Json(body)
    } else {
        waf::BodyKind::Other(body)
    };
    let mut matches = gateway.waf.inspect_path(parts.uri.path());
    matches.extend(gateway.waf.inspect(parts.uri.query(), &parts.headers, kind));
    let mut blocked = false;
    for found in &matches {
        let mode = found.mode.as_str();
        gateway.app.metrics.observe_filter_match(found.rule, mode);
        tracing::warn!(
            target: "learntrac::security",
            rule = found.rule,
            location = %found.location,
            mode,
            path = parts.uri.path(),
            request_id = %current_request_id(),
            "filtering rule matched"
        );
        blocked |= found.mode == settings::RuleMode::Block;
    }
    if blocked {
        return Err(ApiError::Forbidden(format!(
            "the request was rejected by a filtering rule; if it was legitimate, give the administrator request id {}",
            current_request_id()
        )));
    }
    Ok(())
}

/// Sets the headers the roles rely on, replacing any a client sent: the
/// client's address and scheme, the host, and the request id. Headers the
/// roles use to report back are removed.
fn set_forwarded_headers(parts: &mut axum::http::request::Parts, client: std::net::IpAddr) {
    const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    let headers = &mut parts.headers;
    // `insert` replaces every value a client sent under the same name.
    for name in ["forwarded", "x-real-ip", upstream::USER_HEADER, upstream::ROUTE_HEADER] {
        headers.remove(name);
    }
    if let Ok(value) = HeaderValue::from_str(&client.to_string()) {
        headers.insert(X_FORWARDED_FOR, value);
    } else {
        headers.remove(X_FORWARDED_FOR);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    if !headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, value);
    }
    match headers.get(header::HOST).cloned() {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
    match HeaderValue::from_str(&current_request_id()) {
        Ok(value) => headers.insert(X_REQUEST_ID, value),
        Err(_) => headers.remove(X_REQUEST_ID),
    };
}

/// Moves what a role in another process reported about the request (its
/// user and route) from the response headers into the access log.
fn take_role_report(response: &mut Response) {
    let headers = response.headers_mut();
    if let Some(user) = headers.remove(upstream::USER_HEADER)
        && let Some(id) = user.to_str().ok().and_then(|v| v.parse::<i64>().ok())
    {
        record_user(id);
    }
    if let Some(route) = headers.remove(upstream::ROUTE_HEADER)
        && let Ok(route) = route.to_str()
    {
        let route = route.to_string();
        let _ = REQUEST.try_with(|r| *r.route.lock().unwrap_or_else(|p| p.into_inner()) = Some(route));
    }
}
