//! Matrix error responses: `{"errcode": …, "error": …}` with the spec's HTTP status.
//!
//! This file holds the only conversions from lower layers' errors into [`MatrixError`]: one
//! place decides which errcode and status each failure gets. Internal failures become
//! `M_UNKNOWN`/500 with the details logged, never returned.

use poem::http::{HeaderValue, StatusCode, header};
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::{ApiResponse, Object};

use crate::accounts::password::PasswordError;
use crate::accounts::user_ids::InvalidUsername;
use crate::rate_limit::RetryAfter;
use crate::rooms::RoomError;
use crate::storage;

/// The Matrix error codes this server returns, in alphabetical order.
///
/// See <https://spec.matrix.org/v1.19/client-server-api/#standard-error-response>.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrCode {
    /// `M_BAD_JSON`: valid JSON, but not the shape the endpoint takes.
    BadJson,
    /// `M_CANNOT_OVERWRITE_MEDIA`: the reserved media ID was uploaded to already.
    CannotOverwriteMedia,
    /// `M_FORBIDDEN`: not allowed, e.g. a wrong password.
    Forbidden,
    /// `M_GUEST_ACCESS_FORBIDDEN`: guests may not do this.
    GuestAccessForbidden,
    /// `M_INCOMPATIBLE_ROOM_VERSION` (federation): the asking server does not support the
    /// room's version; comes with `room_version`.
    IncompatibleRoomVersion,
    /// `M_INVALID_PARAM`: a parameter has the wrong value.
    InvalidParam,
    /// `M_INVALID_ROOM_STATE`: `initial_state` of `createRoom` is invalid.
    InvalidRoomState,
    /// `M_INVALID_SIGNATURE`: a signature on uploaded keys does not verify.
    InvalidSignature,
    /// `M_INVALID_USERNAME`: the requested user ID is not valid.
    InvalidUsername,
    /// `M_KEY_TOO_LARGE`: a profile key over 255 bytes.
    KeyTooLarge,
    /// `M_LIMIT_EXCEEDED`: rate limited; comes with `retry_after_ms` and `Retry-After`.
    LimitExceeded,
    /// `M_MISSING_PARAM`: a required parameter is missing.
    MissingParam,
    /// `M_MISSING_TOKEN`: no access token was given.
    MissingToken,
    /// `M_NOT_FOUND`: no such resource.
    NotFound,
    /// `M_NOT_JSON`: the body is not JSON at all.
    NotJson,
    /// `M_NOT_YET_UPLOADED`: the media ID was reserved but nothing was uploaded yet.
    NotYetUploaded,
    /// `M_PROFILE_TOO_LARGE`: the profile would exceed 64 KiB.
    ProfileTooLarge,
    /// `M_ROOM_IN_USE`: the room alias is taken.
    RoomInUse,
    /// `M_TOO_LARGE`: the request is too large.
    TooLarge,
    /// `M_UNAUTHORIZED`: the request was not correctly authorised, e.g. a bad registration token.
    Unauthorized,
    /// `M_UNKNOWN`: anything else, including internal failures.
    Unknown,
    /// `M_UNKNOWN_TOKEN`: the access token is not (or no longer) valid.
    UnknownToken,
    /// `M_UNRECOGNIZED`: unknown endpoint (404) or method (405).
    Unrecognized,
    /// `M_UNSUPPORTED_ROOM_VERSION`: the server does not support the requested room version.
    UnsupportedRoomVersion,
    /// `M_USER_IN_USE`: the requested user ID is taken.
    UserInUse,
    /// `M_WRONG_ROOM_KEYS_VERSION`: keys were sent for a backup version that is not the current
    /// one; comes with `current_version`.
    WrongRoomKeysVersion,
}

impl ErrCode {
    const ALL: [ErrCode; 26] = [
        Self::BadJson,
        Self::CannotOverwriteMedia,
        Self::Forbidden,
        Self::GuestAccessForbidden,
        Self::IncompatibleRoomVersion,
        Self::InvalidParam,
        Self::InvalidRoomState,
        Self::InvalidSignature,
        Self::InvalidUsername,
        Self::KeyTooLarge,
        Self::LimitExceeded,
        Self::MissingParam,
        Self::MissingToken,
        Self::NotFound,
        Self::NotJson,
        Self::NotYetUploaded,
        Self::ProfileTooLarge,
        Self::RoomInUse,
        Self::TooLarge,
        Self::Unauthorized,
        Self::Unknown,
        Self::UnknownToken,
        Self::Unrecognized,
        Self::UnsupportedRoomVersion,
        Self::UserInUse,
        Self::WrongRoomKeysVersion,
    ];

    /// The code a literal names, if it is one of ours (another server's answer, say).
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// The literal code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "M_BAD_JSON",
            Self::CannotOverwriteMedia => "M_CANNOT_OVERWRITE_MEDIA",
            Self::Forbidden => "M_FORBIDDEN",
            Self::GuestAccessForbidden => "M_GUEST_ACCESS_FORBIDDEN",
            Self::IncompatibleRoomVersion => "M_INCOMPATIBLE_ROOM_VERSION",
            Self::InvalidParam => "M_INVALID_PARAM",
            Self::InvalidRoomState => "M_INVALID_ROOM_STATE",
            Self::InvalidSignature => "M_INVALID_SIGNATURE",
            Self::InvalidUsername => "M_INVALID_USERNAME",
            Self::KeyTooLarge => "M_KEY_TOO_LARGE",
            Self::LimitExceeded => "M_LIMIT_EXCEEDED",
            Self::MissingParam => "M_MISSING_PARAM",
            Self::MissingToken => "M_MISSING_TOKEN",
            Self::NotFound => "M_NOT_FOUND",
            Self::NotJson => "M_NOT_JSON",
            Self::NotYetUploaded => "M_NOT_YET_UPLOADED",
            Self::ProfileTooLarge => "M_PROFILE_TOO_LARGE",
            Self::RoomInUse => "M_ROOM_IN_USE",
            Self::TooLarge => "M_TOO_LARGE",
            Self::Unauthorized => "M_UNAUTHORIZED",
            Self::Unknown => "M_UNKNOWN",
            Self::UnknownToken => "M_UNKNOWN_TOKEN",
            Self::Unrecognized => "M_UNRECOGNIZED",
            Self::UnsupportedRoomVersion => "M_UNSUPPORTED_ROOM_VERSION",
            Self::UserInUse => "M_USER_IN_USE",
            Self::WrongRoomKeysVersion => "M_WRONG_ROOM_KEYS_VERSION",
        }
    }
}

/// A Matrix error: errcode, HTTP status and a human-readable message.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{status} {}: {message}", errcode.as_str())]
pub struct MatrixError {
    /// The error code.
    pub errcode: ErrCode,
    /// The HTTP status.
    pub status: StatusCode,
    /// The message for humans.
    pub message: String,
    /// For `M_LIMIT_EXCEEDED`: how long to wait.
    pub retry_after_ms: Option<u64>,
    /// For `M_UNKNOWN_TOKEN`: whether the client may keep its keys (soft logout).
    pub soft_logout: Option<bool>,
    /// For `M_WRONG_ROOM_KEYS_VERSION`: the current backup version.
    pub current_version: Option<String>,
    /// For `M_INCOMPATIBLE_ROOM_VERSION`: the room's version.
    pub room_version: Option<String>,
}

impl MatrixError {
    /// An error with the given code, status and message.
    pub fn new(errcode: ErrCode, status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            errcode,
            status,
            message: message.into(),
            retry_after_ms: None,
            soft_logout: None,
            current_version: None,
            room_version: None,
        }
    }

    /// 400 `M_INCOMPATIBLE_ROOM_VERSION` for a room of `version`.
    pub fn incompatible_room_version(version: &str) -> Self {
        let mut error = Self::new(
            ErrCode::IncompatibleRoomVersion,
            StatusCode::BAD_REQUEST,
            format!("Your server does not support room version {version}"),
        );
        error.room_version = Some(version.to_owned());
        error
    }

    /// 400 `M_BAD_JSON`.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(ErrCode::BadJson, StatusCode::BAD_REQUEST, message)
    }

    /// 400 `M_INVALID_PARAM`.
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(ErrCode::InvalidParam, StatusCode::BAD_REQUEST, message)
    }

    /// 403 `M_FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrCode::Forbidden, StatusCode::FORBIDDEN, message)
    }

    /// 404 `M_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrCode::NotFound, StatusCode::NOT_FOUND, message)
    }

    /// 500 `M_UNKNOWN`; the caller logs the details, the client only learns that it failed.
    pub fn internal() -> Self {
        Self::new(ErrCode::Unknown, StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            errcode: self.errcode.as_str().to_owned(),
            error: self.message.clone(),
            retry_after_ms: self.retry_after_ms,
            soft_logout: self.soft_logout,
            current_version: self.current_version.clone(),
            room_version: self.room_version.clone(),
        }
    }
}

/// A Matrix error response body.
#[derive(Clone, Debug, Object)]
#[oai(rename = "Error", skip_serializing_if_is_none)]
pub struct ErrorBody {
    /// The error code, e.g. `M_FORBIDDEN`.
    pub errcode: String,
    /// A human-readable error message.
    pub error: String,
    /// With `M_LIMIT_EXCEEDED`: milliseconds to wait before retrying (the `Retry-After`
    /// header carries the same in seconds).
    pub retry_after_ms: Option<u64>,
    /// With `M_UNKNOWN_TOKEN`: `true` if the client may log in again without losing its
    /// device and keys.
    pub soft_logout: Option<bool>,
    /// With `M_WRONG_ROOM_KEYS_VERSION`: the current backup version.
    pub current_version: Option<String>,
    /// With `M_INCOMPATIBLE_ROOM_VERSION`: the room's version.
    pub room_version: Option<String>,
}

impl poem::error::ResponseError for MatrixError {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn as_response(&self) -> Response {
        json_response(self.status, self.body().to_json_string(), self.retry_after_ms)
    }
}

/// Builds a JSON response, adding `Retry-After` (whole seconds, rounded up) when rate limited.
pub(crate) fn json_response(status: StatusCode, body: String, retry_after_ms: Option<u64>) -> Response {
    let mut response = Response::builder().status(status).content_type("application/json").body(body);
    if let Some(ms) = retry_after_ms
        && let Ok(value) = HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

impl IntoResponse for MatrixError {
    fn into_response(self) -> Response {
        poem::error::ResponseError::as_response(&self)
    }
}

/// The error statuses every operation documents, with the errcodes each may carry.
pub(crate) const ERROR_STATUSES: &[(u16, &str)] = &[
    (
        400,
        "Bad request: `M_BAD_JSON`, `M_NOT_JSON`, `M_INVALID_PARAM`, `M_MISSING_PARAM`, or an endpoint-specific code such as `M_USER_IN_USE`, `M_INVALID_USERNAME`.",
    ),
    (401, "Missing or invalid access token: `M_MISSING_TOKEN`, `M_UNKNOWN_TOKEN` (with `soft_logout`)."),
    (403, "Not allowed: `M_FORBIDDEN`."),
    (404, "Not found: `M_NOT_FOUND`, or `M_UNRECOGNIZED` for an unknown endpoint."),
    (405, "Method not allowed: `M_UNRECOGNIZED`."),
    (413, "Request too large: `M_TOO_LARGE`."),
    (429, "Rate limited: `M_LIMIT_EXCEEDED` with `retry_after_ms` and a `Retry-After` header."),
    (500, "Internal error: `M_UNKNOWN`."),
];

/// Documents every status in [`ERROR_STATUSES`] with schema `T`, except those in `except`.
pub(crate) fn error_meta<T: Type>(except: &[u16]) -> MetaResponses {
    MetaResponses {
        responses: ERROR_STATUSES
            .iter()
            .filter(|(status, _)| !except.contains(status))
            .map(|&(status, description)| MetaResponse {
                description,
                status: Some(status),
                status_range: None,
                content: vec![MetaMediaType { content_type: "application/json", schema: T::schema_ref() }],
                headers: vec![],
            })
            .collect(),
    }
}

impl ApiResponse for MatrixError {
    fn meta() -> MetaResponses {
        error_meta::<ErrorBody>(&[])
    }

    fn register(registry: &mut Registry) {
        ErrorBody::register(registry);
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, MatrixError>;

impl From<storage::Error> for MatrixError {
    fn from(err: storage::Error) -> Self {
        match err {
            storage::Error::NotFound => Self::not_found("Not found"),
            storage::Error::Conflict { constraint } => {
                Self::new(ErrCode::Unknown, StatusCode::CONFLICT, format!("Conflict on {constraint}"))
            }
            storage::Error::Backend(_) | storage::Error::Corrupt(_) | storage::Error::Aborted(_) => {
                tracing::error!(error = %err, "storage failure");
                Self::internal()
            }
        }
    }
}

impl From<RoomError> for MatrixError {
    fn from(err: RoomError) -> Self {
        match err {
            RoomError::NotFound => Self::not_found("Room or event not found"),
            RoomError::Forbidden(reason) => Self::forbidden(capitalize(&reason)),
            RoomError::UnsupportedVersion(version) => Self::new(
                ErrCode::UnsupportedRoomVersion,
                StatusCode::BAD_REQUEST,
                format!("Room version {version} is not supported"),
            ),
            RoomError::InvalidEvent(reason) => Self::bad_json(capitalize(&reason)),
            RoomError::AliasInUse => Self::new(ErrCode::RoomInUse, StatusCode::BAD_REQUEST, "Room alias already taken"),
            RoomError::TooLarge(reason) => Self::new(ErrCode::TooLarge, StatusCode::PAYLOAD_TOO_LARGE, reason),
            RoomError::MissingEvents(ids) => Self::new(
                ErrCode::Unknown,
                StatusCode::BAD_REQUEST,
                format!("Events this one refers to are unknown here: {ids:?}"),
            ),
            RoomError::Storage(err) => err.into(),
            RoomError::Corrupt(reason) => {
                tracing::error!(%reason, "room data failure");
                Self::internal()
            }
        }
    }
}

impl From<crate::e2ee::E2eeError> for MatrixError {
    fn from(err: crate::e2ee::E2eeError) -> Self {
        use crate::e2ee::E2eeError;
        match err {
            E2eeError::Invalid(reason) => Self::invalid_param(capitalize(&reason)),
            E2eeError::InvalidSignature(reason) => {
                Self::new(ErrCode::InvalidSignature, StatusCode::BAD_REQUEST, capitalize(&reason))
            }
            E2eeError::Missing(reason) => {
                Self::new(ErrCode::MissingParam, StatusCode::BAD_REQUEST, capitalize(&reason))
            }
            E2eeError::Forbidden(reason) => Self::forbidden(capitalize(&reason)),
            E2eeError::Storage(err) => err.into(),
        }
    }
}

impl From<crate::federation::FederationError> for MatrixError {
    fn from(err: crate::federation::FederationError) -> Self {
        use crate::federation::FederationError;
        match err {
            FederationError::Disabled => Self::forbidden("Federation is disabled on this server"),
            FederationError::BadServerName(name) => {
                Self::invalid_param(format!("Not a server to federate with: {name}"))
            }
            FederationError::Remote { server, status, body } => {
                // The other server's answer, passed on where it speaks of the request itself.
                let errcode = body["errcode"].as_str().and_then(ErrCode::parse).unwrap_or(ErrCode::Unknown);
                let message = body["error"].as_str().unwrap_or("no reason given");
                let status = match status {
                    400 | 403 | 404 | 429 => StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    _ => StatusCode::BAD_GATEWAY,
                };
                Self::new(errcode, status, format!("{server}: {message}"))
            }
            FederationError::Unreachable { .. } | FederationError::Invalid(_) => {
                Self::new(ErrCode::Unknown, StatusCode::BAD_GATEWAY, capitalize(&err.to_string()))
            }
            FederationError::Setup(_) => {
                tracing::error!(error = %err, "federation failure");
                Self::internal()
            }
            FederationError::Storage(err) => err.into(),
            FederationError::Room(err) => err.into(),
        }
    }
}

impl From<crate::media::MediaError> for MatrixError {
    fn from(err: crate::media::MediaError) -> Self {
        use crate::media::MediaError;
        match err {
            MediaError::TooLarge(limit) => Self::new(
                ErrCode::TooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Uploads may be at most {limit} bytes"),
            ),
            MediaError::Read(reason) => {
                Self::new(ErrCode::Unknown, StatusCode::BAD_REQUEST, format!("Could not read the upload: {reason}"))
            }
            MediaError::TimedOut(reason) => {
                Self::new(ErrCode::Unknown, StatusCode::REQUEST_TIMEOUT, format!("Could not read the upload: {reason}"))
            }
            MediaError::NotFound => Self::not_found("Media not found"),
            MediaError::Store(_) | MediaError::Config(_) => {
                tracing::error!(error = %err, "media store failure");
                Self::internal()
            }
        }
    }
}

impl From<crate::media::thumbnail::ThumbnailError> for MatrixError {
    fn from(err: crate::media::thumbnail::ThumbnailError) -> Self {
        use crate::media::thumbnail::ThumbnailError;
        match err {
            ThumbnailError::TooLarge => {
                Self::new(ErrCode::TooLarge, StatusCode::PAYLOAD_TOO_LARGE, "Content is too large to thumbnail")
            }
            ThumbnailError::Unsupported(reason) => Self::new(
                ErrCode::Unknown,
                StatusCode::BAD_REQUEST,
                format!("Cannot generate thumbnails for the requested content: {reason}"),
            ),
        }
    }
}

impl From<PasswordError> for MatrixError {
    fn from(err: PasswordError) -> Self {
        tracing::error!(error = %err, "password hashing failure");
        Self::internal()
    }
}

impl From<InvalidUsername> for MatrixError {
    fn from(err: InvalidUsername) -> Self {
        Self::new(ErrCode::InvalidUsername, StatusCode::BAD_REQUEST, capitalize(&err.to_string()))
    }
}

impl From<RetryAfter> for MatrixError {
    fn from(RetryAfter(wait): RetryAfter) -> Self {
        let mut err = Self::new(ErrCode::LimitExceeded, StatusCode::TOO_MANY_REQUESTS, "Too many requests");
        err.retry_after_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
        err
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}
