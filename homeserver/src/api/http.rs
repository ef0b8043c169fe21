//! The HTTP edge shared by every endpoint: CORS, request body limits and JSON checks, and the
//! mapping of every failure into a Matrix error body.
//!
//! Hand-written rather than poem's `Cors` middleware because the spec asks for the same fixed
//! headers on every response (errors included) and for `OPTIONS` on every path, whatever the
//! origin; poem's middleware reflects and checks origins instead.

use std::time::Duration;

use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::{Body, Endpoint, IntoResponse, Request, Response};
use poem_openapi::error::{ContentTypeError, ParseParamError, ParsePathError, ParseRequestPayloadError};

use super::error::{ErrCode, MatrixError};
use super::uia::UiaError;
use crate::connections::BodyDeadline;
use crate::state::AppState;

/// Wraps every request: answers `OPTIONS`, bounds and checks JSON bodies, turns errors into
/// Matrix errors and adds CORS headers.
pub async fn matrix_edge<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
    strip_empty_state_key(&mut req);
    let mut response = if req.method() == Method::OPTIONS {
        // The spec: answer pre-flight requests without running the endpoint's logic.
        StatusCode::OK.into_response()
    } else if req.uri().to_string().to_ascii_lowercase().contains("%00") {
        // Identifiers never contain NUL, and PostgreSQL cannot store it in text.
        MatrixError::invalid_param("Null characters are not allowed").into_response()
    } else {
        match prepare_body(&mut req).await {
            Err(err) => err.into_response(),
            Ok(()) => match next.call(req).await {
                Ok(resp) => resp.into_response(),
                Err(err) => error_response(err),
            },
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
    );
    Ok(response)
}

/// `…/state/{eventType}/` addresses the state event with an empty state key; clients send the
/// trailing slash, and the router serves that event at `…/state/{eventType}`.
fn strip_empty_state_key(req: &mut Request) {
    let path = req.uri().path();
    let Some((prefix, last)) = path.strip_suffix('/').and_then(|p| p.rsplit_once('/')) else { return };
    if !(path.starts_with("/_matrix/client/") && prefix.ends_with("/state") && !last.is_empty()) {
        return;
    }
    let rewritten = match req.uri().query() {
        Some(query) => format!("{}?{query}", &path[..path.len() - 1]),
        None => path[..path.len() - 1].to_owned(),
    };
    if let Ok(uri) = rewritten.parse() {
        *req.uri_mut() = uri;
    }
}

/// The body limit of the federation listener's requests (at least).
pub const FEDERATION_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Bounds the time between a body's chunks (every body, uploads too); reads a JSON request body
/// up to the configured limit and checks that it is JSON.
///
/// The body is then handed on as `application/json` whatever the client's `Content-Type`
/// said: like other homeservers we judge the body, not the header, because widespread clients
/// (and `curl -d`) send JSON with other content types.
async fn prepare_body(req: &mut Request) -> Result<(), MatrixError> {
    if !matches!(*req.method(), Method::POST | Method::PUT | Method::DELETE | Method::PATCH) {
        return Ok(());
    }
    let timeout = req.data::<AppState>().map_or(60_000, |s| s.config.limits.body_timeout_ms);
    let body = Box::pin(req.take_body().into_bytes_stream());
    req.set_body(Body::from_bytes_stream(BodyDeadline::new(body, Duration::from_millis(timeout))));
    if is_media_upload(req) {
        if !req.headers().contains_key(header::CONTENT_TYPE) {
            // The type is optional for uploads; without one, the content is plain bytes.
            req.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        }
        return Ok(());
    }
    let mut limit = req.data::<AppState>().map_or(1024 * 1024, |s| s.config.limits.max_request_body);
    if req.uri().path().starts_with("/_matrix/federation/") {
        // A transaction holds up to 50 PDUs of 64 KiB and 100 EDUs.
        limit = limit.max(FEDERATION_BODY_LIMIT);
    }
    let too_large = || MatrixError::new(ErrCode::TooLarge, StatusCode::PAYLOAD_TOO_LARGE, "Request body too large");
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let bytes = req.take_body().into_bytes_limit(limit).await.map_err(|err| match err {
        poem::error::ReadBodyError::PayloadTooLarge => too_large(),
        poem::error::ReadBodyError::Io(err) if err.kind() == std::io::ErrorKind::TimedOut => {
            MatrixError::new(ErrCode::Unknown, StatusCode::REQUEST_TIMEOUT, format!("Request body: {err}"))
        }
        other => MatrixError::new(
            ErrCode::Unknown,
            StatusCode::BAD_REQUEST,
            format!("Could not read the request body: {other}"),
        ),
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        // Clients commonly send no body where every field is optional (join, leave, logout,
        // DELETE requests, whose bodies many HTTP libraries drop): an absent body is `{}`.
        // Endpoints with required fields then answer `M_BAD_JSON` naming the missing one.
        req.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        req.set_body(Body::from_bytes(bytes::Bytes::from_static(b"{}")));
        return Ok(());
    }
    if bytes.windows(6).any(|w| w == b"\\u0000") {
        return Err(MatrixError::bad_json("Null characters are not allowed in JSON strings"));
    }
    if let Err(err) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        return Err(MatrixError::new(ErrCode::NotJson, StatusCode::BAD_REQUEST, format!("Content not JSON: {err}")));
    }
    req.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    req.set_body(Body::from_bytes(bytes));
    Ok(())
}

/// Uploads are not JSON: they stream to the media store, which enforces its own size limit.
fn is_media_upload(req: &Request) -> bool {
    let path = req.uri().path();
    match *req.method() {
        Method::POST => path == "/_matrix/media/v3/upload",
        Method::PUT => path.starts_with("/_matrix/media/v3/upload/"),
        _ => false,
    }
}

/// Maps any error that escaped an endpoint to a Matrix error response.
fn error_response(err: poem::Error) -> Response {
    if err.is::<MatrixError>() || err.is::<UiaError>() {
        return err.into_response();
    }
    let matrix = if err.is::<poem::error::NotFoundError>() {
        MatrixError::new(ErrCode::Unrecognized, StatusCode::NOT_FOUND, "Unrecognized request")
    } else if err.is::<poem::error::MethodNotAllowedError>() {
        MatrixError::new(ErrCode::Unrecognized, StatusCode::METHOD_NOT_ALLOWED, "Method not allowed for this endpoint")
    } else if err.is::<ParseRequestPayloadError>()
        || err.is::<ContentTypeError>()
        || err.is::<poem::error::ParseJsonError>()
    {
        MatrixError::bad_json(payload_reason(&err))
    } else if let Some(param) = err.downcast_ref::<ParseParamError>() {
        // poem-openapi reports a missing parameter only through its message.
        if param.reason.contains("expects an input value") || param.reason.contains("required") {
            MatrixError::new(
                ErrCode::MissingParam,
                StatusCode::BAD_REQUEST,
                format!("Missing parameter `{}`", param.name),
            )
        } else {
            MatrixError::invalid_param(format!("Invalid parameter `{}`: {}", param.name, param.reason))
        }
    } else if let Some(query) = err.downcast_ref::<poem::error::ParseQueryError>() {
        // Plain poem handlers (the federation listener's) read queries with serde.
        let reason = query.to_string();
        if reason.contains("missing field") {
            MatrixError::new(ErrCode::MissingParam, StatusCode::BAD_REQUEST, format!("Missing parameter: {reason}"))
        } else {
            MatrixError::invalid_param(format!("Invalid parameter: {reason}"))
        }
    } else if let Some(path) = err.downcast_ref::<ParsePathError>() {
        MatrixError::invalid_param(format!("Invalid path parameter `{}`: {}", path.name, path.reason))
    } else if err.is::<poem::error::ParsePathError>() {
        // The router could not percent-decode the path into UTF-8.
        MatrixError::invalid_param("Invalid path")
    } else if err.status().is_server_error() {
        tracing::error!(error = %err, "request failed");
        MatrixError::internal()
    } else {
        MatrixError::new(ErrCode::Unknown, err.status(), err.to_string())
    };
    matrix.into_response()
}

/// poem-openapi's reason, minus its prefix, for the client to see which field was wrong.
fn payload_reason(err: &poem::Error) -> String {
    match err.downcast_ref::<ParseRequestPayloadError>() {
        Some(p) => format!("Malformed request body: {}", p.reason),
        None => "Malformed request body".to_owned(),
    }
}

/// Turns a panic into a Matrix 500 instead of a dropped connection.
pub fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("request handler panicked");
    MatrixError::internal().into_response()
}
