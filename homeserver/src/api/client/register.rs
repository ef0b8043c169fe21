//! Account registration: `POST /register`, `GET /register/available` and registration token
//! validity.

use poem::Request;
use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use crate::accounts::{password, tokens, user_ids};
use crate::api::Tag;
use crate::api::auth::client_ip;
use crate::api::error::{ApiResult, ErrCode, MatrixError};
use crate::api::uia::{self, AuthData, UiaError};
use crate::state::AppState;
use crate::storage::{self, NewLogin, now_ms};

/// Registration endpoints.
#[derive(Default)]
pub struct RegisterApi;

/// The kind of account to register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum AccountKind {
    /// A full account.
    User,
    /// A guest account (not offered by this server).
    Guest,
}

/// `POST /register` request body.
#[derive(Debug, Object)]
pub struct RegisterRequest {
    /// User-interactive authentication for the registration itself.
    pub auth: Option<AuthData>,
    /// The basis for the localpart of the new user ID; generated when omitted.
    pub username: Option<String>,
    /// The password of the new account.
    pub password: Option<String>,
    /// The device to log in on; generated when omitted.
    pub device_id: Option<String>,
    /// Display name of a newly created device.
    pub initial_device_display_name: Option<String>,
    /// If true, register without logging in (no access token or device).
    pub inhibit_login: Option<bool>,
    /// Whether the client supports refresh tokens. This server issues non-expiring access
    /// tokens, so it never returns one.
    pub refresh_token: Option<bool>,
}

/// `POST /register` response.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct RegisterResponse {
    /// The new user ID.
    pub user_id: String,
    /// An access token, unless `inhibit_login` was set.
    pub access_token: Option<String>,
    /// The device logged in on, unless `inhibit_login` was set.
    pub device_id: Option<String>,
    /// Deprecated: the server name.
    #[oai(deprecated)]
    pub home_server: Option<String>,
}

/// Whether a username is available.
#[derive(Debug, Object)]
pub struct Availability {
    /// Always `true` with a 200 response.
    pub available: bool,
}

/// Whether a registration token is valid.
#[derive(Debug, Object)]
pub struct TokenValidity {
    /// `true` if the token can be used to register now.
    pub valid: bool,
}

/// How often to draw a new generated user ID after a collision before giving up.
const GENERATED_ID_ATTEMPTS: usize = 8;

#[OpenApi(tag = "Tag::AccountManagement")]
impl RegisterApi {
    /// `POST /_matrix/client/v3/register`
    ///
    /// Registers an account, through user-interactive authentication (`m.login.dummy`, or
    /// `m.login.registration_token` when the server requires tokens).
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3register>
    #[oai(path = "/_matrix/client/v3/register", method = "post", operation_id = "register")]
    async fn register(
        &self,
        state: Data<&AppState>,
        req: &Request,
        /// The kind of account to register. Defaults to `user`.
        kind: Query<Option<AccountKind>>,
        body: Json<RegisterRequest>,
    ) -> Result<Json<RegisterResponse>, UiaError> {
        let state = *state;
        let body = body.0;
        if kind.0 == Some(AccountKind::Guest) {
            return Err(MatrixError::new(
                ErrCode::GuestAccessForbidden,
                StatusCode::FORBIDDEN,
                "Guest accounts are not supported",
            )
            .into());
        }
        registration_allowed(state, req)?;
        if body.password.as_ref().is_some_and(|p| p.len() > password::MAX_PASSWORD_BYTES) {
            return Err(MatrixError::invalid_param("Password too long").into());
        }
        if let Some(device_id) = &body.device_id {
            super::devices::check_device_id(device_id)?;
        }
        // The spec: username checks come before user-interactive authentication.
        let chosen = match &body.username {
            Some(username) => Some(available_user_id(state, username).await?),
            None => None,
        };

        let flow: &[&str] =
            if state.config.registration.token.is_some() { &[uia::REGISTRATION_TOKEN] } else { &[uia::DUMMY] };
        let uia_request = uia::Request { purpose: "register", flows: &[flow], user_id: None, ip: client_ip(req) };
        let completed = uia::authenticate(state, uia_request, body.auth.as_ref()).await?;

        let password_hash = match body.password {
            Some(p) => Some(password::hash(p).await?),
            None => None,
        };
        let inhibit_login = body.inhibit_login.unwrap_or(false);
        let device_id = body.device_id.unwrap_or_else(tokens::new_device_id);
        let access_token = tokens::new_access_token();
        let token_hash = tokens::hash_token(&access_token);
        let ip = client_ip(req).map(|ip| ip.to_string());
        let now = now_ms();
        let login = (!inhibit_login).then(|| NewLogin {
            device_id: &device_id,
            initial_display_name: body.initial_device_display_name.as_deref(),
            token_hash: &token_hash,
            ip: ip.as_deref(),
            now,
        });
        let mut attempts = 0;
        let user_id = loop {
            attempts += 1;
            let user_id = match &chosen {
                Some(user_id) => user_id.clone(),
                None => user_ids::generated_user_id(&state.config.server_name),
            };
            match state.storage.create_user(&user_id, password_hash.as_deref(), now, login.clone()).await {
                Ok(()) => break user_id,
                // Someone took a generated ID first: draw another.
                Err(storage::Error::Conflict { .. }) if chosen.is_none() && attempts < GENERATED_ID_ATTEMPTS => {}
                // Someone registered the chosen name while this client was authenticating.
                Err(storage::Error::Conflict { .. }) => return Err(user_in_use().into()),
                Err(err) => return Err(err.into()),
            }
        };
        completed.finish(state).await?;
        tracing::info!(%user_id, "registered");

        Ok(Json(RegisterResponse {
            user_id,
            access_token: (!inhibit_login).then_some(access_token),
            device_id: (!inhibit_login).then_some(device_id),
            home_server: Some(state.config.server_name.clone()),
        }))
    }

    /// `GET /_matrix/client/v3/register/available`
    ///
    /// Checks that a username is valid and not taken.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3registeravailable>
    #[oai(path = "/_matrix/client/v3/register/available", method = "get", operation_id = "checkUsernameAvailability")]
    async fn available(
        &self,
        state: Data<&AppState>,
        req: &Request,
        /// The username to check.
        username: Query<String>,
    ) -> ApiResult<Json<Availability>> {
        registration_allowed(&state, req)?;
        available_user_id(&state, &username).await?;
        Ok(Json(Availability { available: true }))
    }

    /// `GET /_matrix/client/v1/register/m.login.registration_token/validity`
    ///
    /// Checks whether a registration token would be accepted.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1registermloginregistration_tokenvalidity>
    #[oai(
        path = "/_matrix/client/v1/register/m.login.registration_token/validity",
        method = "get",
        operation_id = "registrationTokenValidity"
    )]
    async fn token_validity(
        &self,
        state: Data<&AppState>,
        req: &Request,
        /// The token to check.
        token: Query<String>,
    ) -> ApiResult<Json<TokenValidity>> {
        registration_allowed(&state, req)?;
        let valid = state
            .config
            .registration
            .token
            .as_deref()
            .is_some_and(|t| uia::constant_time_eq(t.as_bytes(), token.as_bytes()));
        Ok(Json(TokenValidity { valid }))
    }
}

/// Refuses when registration is off, and rate-limits by client address.
fn registration_allowed(state: &AppState, req: &Request) -> Result<(), MatrixError> {
    if !state.config.registration.enabled {
        return Err(MatrixError::forbidden("Registration is disabled"));
    }
    state.limits.registration(client_ip(req))?;
    Ok(())
}

/// The user ID a username maps to, if it is valid and free.
async fn available_user_id(state: &AppState, username: &str) -> Result<String, MatrixError> {
    let user_id = user_ids::user_id_for_username(username, &state.config.server_name)?;
    if state.storage.user_exists(&user_id).await? {
        return Err(user_in_use());
    }
    Ok(user_id)
}

fn user_in_use() -> MatrixError {
    MatrixError::new(ErrCode::UserInUse, StatusCode::BAD_REQUEST, "Desired user ID is already taken")
}
