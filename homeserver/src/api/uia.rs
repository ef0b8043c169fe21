//! User-interactive authentication (UIA): the 401 dance of `/register`, `/account/password`
//! and device deletion.
//!
//! See <https://spec.matrix.org/v1.19/client-server-api/#user-interactive-authentication-api>.
//! Sessions are stored in the database so that any process can continue one.

use std::collections::BTreeMap;
use std::fmt;

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaResponses, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::{ApiResponse, Object};

use super::error::{ErrCode, MatrixError, error_meta, json_response};
use crate::accounts::{password, tokens, user_ids};
use crate::state::AppState;
use crate::storage::now_ms;

/// How long a UIA session stays usable.
const SESSION_LIFETIME_MS: i64 = 15 * 60 * 1000;

/// `m.login.dummy`: no check at all.
pub const DUMMY: &str = "m.login.dummy";
/// `m.login.password`: the account's password.
pub const PASSWORD: &str = "m.login.password";
/// `m.login.registration_token`: a pre-shared registration token.
pub const REGISTRATION_TOKEN: &str = "m.login.registration_token";

/// Authentication data submitted in a request's `auth` field.
#[derive(Clone, Debug, Default, Object)]
#[oai(rename = "AuthenticationData")]
pub struct AuthData {
    /// The stage the client attempts. May be omitted when only `session` is given.
    #[oai(rename = "type")]
    pub kind: Option<String>,
    /// The session ID the server handed out.
    pub session: Option<String>,
    /// `m.login.password`: who the password belongs to.
    pub identifier: Option<UserIdentifier>,
    /// `m.login.password`, deprecated form: the user ID or localpart.
    pub user: Option<String>,
    /// `m.login.password`: the password.
    pub password: Option<String>,
    /// `m.login.registration_token`: the token.
    pub token: Option<String>,
}

/// Identification of a user (`m.id.user`; third-party identifiers are not supported).
#[derive(Clone, Debug, Object)]
pub struct UserIdentifier {
    /// The identifier type, e.g. `m.id.user`.
    #[oai(rename = "type")]
    pub kind: String,
    /// For `m.id.user`: a user ID or a localpart.
    pub user: Option<String>,
}

impl UserIdentifier {
    /// The `m.id.user` identifier, if that is what this is.
    pub fn user(&self) -> Option<&str> {
        (self.kind == "m.id.user").then_some(self.user.as_deref()).flatten()
    }
}

/// One flow: stages to complete in order.
#[derive(Clone, Debug, Object)]
pub struct Flow {
    /// The stage types.
    pub stages: Vec<String>,
}

/// The body of a UIA 401 response, and of any other error of a UIA endpoint (then only
/// `errcode` and `error` are present).
#[derive(Clone, Debug, Object)]
#[oai(rename = "AuthenticationResponse", skip_serializing_if_is_none)]
pub struct AuthenticationResponse {
    /// Present when a stage failed, or on errors other than 401.
    pub errcode: Option<String>,
    /// Human-readable message accompanying `errcode`.
    pub error: Option<String>,
    /// With `M_LIMIT_EXCEEDED`: milliseconds to wait.
    pub retry_after_ms: Option<u64>,
    /// With `M_UNKNOWN_TOKEN`: whether the client may log in again keeping its device.
    pub soft_logout: Option<bool>,
    /// With `M_WRONG_ROOM_KEYS_VERSION`: the current backup version.
    pub current_version: Option<String>,
    /// The flows the client may follow.
    pub flows: Option<Vec<Flow>>,
    /// Per-stage parameters.
    pub params: Option<BTreeMap<String, serde_json::Value>>,
    /// The session to pass back in `auth.session`.
    pub session: Option<String>,
    /// Stages completed so far.
    pub completed: Option<Vec<String>>,
}

/// The error of a UIA endpoint: "authenticate further" (401) or a plain Matrix error.
#[derive(Debug)]
pub enum UiaError {
    /// More authentication is needed.
    AuthRequired(Box<AuthenticationResponse>),
    /// Any other failure.
    Matrix(MatrixError),
}

impl fmt::Display for UiaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AuthRequired(_) => f.write_str("additional authentication required"),
            Self::Matrix(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for UiaError {}

macro_rules! uia_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for UiaError {
            fn from(err: $t) -> Self {
                Self::Matrix(err.into())
            }
        }
    )*};
}
uia_error_from!(
    MatrixError,
    crate::storage::Error,
    password::PasswordError,
    crate::rate_limit::RetryAfter,
    user_ids::InvalidUsername
);

impl poem::error::ResponseError for UiaError {
    fn status(&self) -> StatusCode {
        match self {
            Self::AuthRequired(_) => StatusCode::UNAUTHORIZED,
            Self::Matrix(err) => err.status,
        }
    }

    fn as_response(&self) -> Response {
        match self {
            Self::AuthRequired(body) => json_response(StatusCode::UNAUTHORIZED, body.to_json_string(), None),
            Self::Matrix(err) => err.clone().into_response(),
        }
    }
}

impl ApiResponse for UiaError {
    fn meta() -> MetaResponses {
        // One schema for every error status: code generators (progenitor) require a single
        // error type per operation, and AuthenticationResponse is a superset of Error.
        error_meta::<AuthenticationResponse>(&[])
    }

    fn register(registry: &mut Registry) {
        AuthenticationResponse::register(registry);
    }
}

/// What a UIA-protected request authenticates.
pub struct Request<'a> {
    /// What the session authorises; a session of one purpose cannot complete another.
    pub purpose: &'static str,
    /// The flows offered.
    pub flows: &'a [&'a [&'static str]],
    /// The authenticated user, for endpoints behind an access token.
    pub user_id: Option<&'a str>,
    /// The client's address, for rate limiting password attempts.
    pub ip: Option<std::net::IpAddr>,
}

/// Authentication is complete; call [`Completed::finish`] once the operation succeeded.
#[must_use]
pub struct Completed {
    session: String,
}

impl Completed {
    /// Forgets the session so it cannot authorise a second operation.
    pub async fn finish(self, state: &AppState) -> Result<(), MatrixError> {
        state.storage.delete_uia_session(&self.session).await.map_err(Into::into)
    }
}

/// Runs one step of user-interactive authentication for `auth`.
pub async fn authenticate(state: &AppState, req: Request<'_>, auth: Option<&AuthData>) -> Result<Completed, UiaError> {
    let now = now_ms();
    let new_session = || async {
        let id = tokens::new_session_id();
        state
            .storage
            .create_uia_session(&id, req.purpose, req.user_id, now, now - SESSION_LIFETIME_MS)
            .await
            .map(|()| id)
    };
    // 1. No auth at all: hand out a session and the flows. The spec forbids succeeding here
    //    even when a flow has only `m.login.dummy`.
    let Some(auth) = auth else {
        return Err(auth_required(&req, new_session().await?, vec![], None));
    };
    // 2. Find the session, or start one for clients that skipped the initial request.
    let (session_id, mut completed) = match &auth.session {
        None => (new_session().await?, vec![]),
        Some(id) => {
            let session = state.storage.uia_session(id).await?;
            match session {
                Some(s)
                    if s.purpose == req.purpose
                        && s.user_id.as_deref() == req.user_id
                        && now - s.created_ts < SESSION_LIFETIME_MS =>
                {
                    (id.clone(), s.completed)
                }
                _ => {
                    return Err(
                        MatrixError::new(ErrCode::Unknown, StatusCode::BAD_REQUEST, "Unknown session ID").into()
                    );
                }
            }
        }
    };
    // 3. Attempt the stage, if one is named and not already done.
    if let Some(stage) = auth.kind.as_deref()
        && !completed.iter().any(|c| c == stage)
    {
        let expected_next = req.flows.iter().any(|flow| {
            flow.starts_with(&completed.iter().map(String::as_str).collect::<Vec<_>>())
                && flow.get(completed.len()) == Some(&stage)
        });
        if !expected_next {
            let err = MatrixError::new(
                ErrCode::Unknown,
                StatusCode::UNAUTHORIZED,
                format!("Stage {stage} is not expected now"),
            );
            return Err(auth_required(&req, session_id, completed, Some(err)));
        }
        if let Err(err) = check_stage(state, &req, stage, auth).await {
            if err.status != StatusCode::UNAUTHORIZED {
                return Err(err.into());
            }
            return Err(auth_required(&req, session_id, completed, Some(err)));
        }
        completed.push(stage.to_owned());
        state.storage.set_uia_completed(&session_id, &completed).await?;
    }
    // 4. Done when the completed stages make up a whole flow.
    if req.flows.iter().any(|flow| flow.iter().copied().eq(completed.iter().map(String::as_str))) {
        Ok(Completed { session: session_id })
    } else {
        Err(auth_required(&req, session_id, completed, None))
    }
}

/// Checks one stage; a 401 error means "this attempt failed, try again".
async fn check_stage(state: &AppState, req: &Request<'_>, stage: &str, auth: &AuthData) -> Result<(), MatrixError> {
    let failed = |errcode, message: &str| Err(MatrixError::new(errcode, StatusCode::UNAUTHORIZED, message));
    match stage {
        DUMMY => Ok(()),
        REGISTRATION_TOKEN => {
            let expected = state.config.registration.token.as_deref();
            match (auth.token.as_deref(), expected) {
                (Some(given), Some(expected)) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(()),
                _ => failed(ErrCode::Unauthorized, "Invalid registration token"),
            }
        }
        PASSWORD => {
            let Some(user_id) = req.user_id else {
                return failed(ErrCode::Forbidden, "Password authentication needs a logged-in user");
            };
            let claimed = auth.identifier.as_ref().and_then(UserIdentifier::user).or(auth.user.as_deref());
            let claimed = claimed.and_then(|c| user_ids::local_user_id(c, &state.config.server_name));
            if claimed.as_deref().is_some_and(|c| c != user_id) {
                return failed(ErrCode::Forbidden, "The identifier does not match the logged-in user");
            }
            state.limits.login(req.ip, Some(user_id))?;
            let Some(given) = auth.password.clone() else {
                return Err(MatrixError::new(ErrCode::MissingParam, StatusCode::BAD_REQUEST, "Missing password"));
            };
            let verified = match state.storage.password_hash(user_id).await? {
                Some(Some(stored)) => password::verify(given, stored).await?,
                _ => false,
            };
            if verified { Ok(()) } else { failed(ErrCode::Forbidden, "Invalid password") }
        }
        _ => failed(ErrCode::Unknown, "Unsupported authentication type"),
    }
}

fn auth_required(req: &Request<'_>, session: String, completed: Vec<String>, error: Option<MatrixError>) -> UiaError {
    UiaError::AuthRequired(Box::new(AuthenticationResponse {
        errcode: error.as_ref().map(|e| e.errcode.as_str().to_owned()),
        error: error.map(|e| e.message),
        retry_after_ms: None,
        soft_logout: None,
        current_version: None,
        flows: Some(
            req.flows.iter().map(|stages| Flow { stages: stages.iter().map(|s| (*s).to_owned()).collect() }).collect(),
        ),
        params: Some(BTreeMap::new()),
        session: Some(session),
        completed: (!completed.is_empty()).then_some(completed),
    }))
}

/// Compares secrets without revealing through timing how long a prefix matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
