//! Sessions: `GET/POST /login`, `POST /logout`, `POST /logout/all`.

use poem::Request;
use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use tokio::sync::OnceCell;

use crate::accounts::{password, tokens, user_ids};
use crate::api::Tag;
use crate::api::auth::{AuthedUser, client_ip};
use crate::api::error::{ApiResult, ErrCode, MatrixError};
use crate::api::uia::UserIdentifier;
use crate::api::well_known::{BaseUrl, ClientWellKnown};
use crate::state::AppState;
use crate::storage::{NewLogin, now_ms};

/// Session endpoints.
#[derive(Default)]
pub struct LoginApi;

/// A supported login type.
#[derive(Debug, Object)]
pub struct LoginFlow {
    /// The login type, to pass as `type` to `POST /login`.
    #[oai(rename = "type")]
    pub kind: String,
}

/// `GET /login` response.
#[derive(Debug, Object)]
pub struct LoginFlows {
    /// The supported login types.
    pub flows: Vec<LoginFlow>,
}

/// `POST /login` request body.
#[derive(Debug, Object)]
pub struct LoginRequest {
    /// The login type; this server supports `m.login.password`.
    #[oai(rename = "type")]
    pub kind: String,
    /// Who is logging in.
    pub identifier: Option<UserIdentifier>,
    /// Deprecated: the user ID or localpart, in place of `identifier`.
    #[oai(deprecated)]
    pub user: Option<String>,
    /// The password, for `m.login.password`.
    pub password: Option<String>,
    /// The device to log in on; created if unknown, generated if omitted.
    pub device_id: Option<String>,
    /// Display name of a newly created device.
    pub initial_device_display_name: Option<String>,
    /// Whether the client supports refresh tokens; this server's tokens do not expire.
    pub refresh_token: Option<bool>,
}

/// `POST /login` response.
#[derive(Debug, Object)]
pub struct LoginResponse {
    /// The logged-in user.
    pub user_id: String,
    /// The new access token.
    pub access_token: String,
    /// The device logged in on.
    pub device_id: String,
    /// Deprecated: the server name.
    #[oai(deprecated)]
    pub home_server: String,
    /// Client configuration, as in `/.well-known/matrix/client`.
    pub well_known: ClientWellKnown,
}

/// An empty JSON object.
#[derive(Debug, Default, Object)]
pub struct Empty {}

#[OpenApi(tag = "Tag::SessionManagement")]
impl LoginApi {
    /// `GET /_matrix/client/v3/login`
    ///
    /// The login types the server supports.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3login>
    #[oai(path = "/_matrix/client/v3/login", method = "get", operation_id = "getLoginFlows")]
    async fn login_flows(&self) -> ApiResult<Json<LoginFlows>> {
        Ok(Json(LoginFlows { flows: vec![LoginFlow { kind: "m.login.password".to_owned() }] }))
    }

    /// `POST /_matrix/client/v3/login`
    ///
    /// Logs in with a password and issues an access token for a (new or given) device.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3login>
    #[oai(path = "/_matrix/client/v3/login", method = "post", operation_id = "login")]
    async fn login(
        &self,
        state: Data<&AppState>,
        req: &Request,
        body: Json<LoginRequest>,
    ) -> ApiResult<Json<LoginResponse>> {
        let body = body.0;
        let identifier = match &body.identifier {
            Some(identifier) => Some(identifier.user().ok_or_else(|| {
                MatrixError::new(ErrCode::Unknown, StatusCode::BAD_REQUEST, "Only m.id.user identifiers are supported")
            })?),
            None => body.user.as_deref(),
        };
        let ip = client_ip(req);
        state.limits.login(ip, identifier)?;
        if body.kind != "m.login.password" {
            return Err(MatrixError::new(ErrCode::Unknown, StatusCode::BAD_REQUEST, "Unknown login type"));
        }
        let identifier = identifier
            .ok_or_else(|| MatrixError::new(ErrCode::MissingParam, StatusCode::BAD_REQUEST, "Missing identifier"))?;
        let given = body
            .password
            .ok_or_else(|| MatrixError::new(ErrCode::MissingParam, StatusCode::BAD_REQUEST, "Missing password"))?;
        if given.len() > password::MAX_PASSWORD_BYTES {
            return Err(invalid_credentials());
        }
        if let Some(device_id) = &body.device_id {
            super::devices::check_device_id(device_id)?;
        }

        let user_id = user_ids::local_user_id(identifier, &state.config.server_name);
        let stored = match &user_id {
            Some(user_id) => state.storage.password_hash(user_id).await?.flatten(),
            None => None,
        };
        // Verify against a dummy hash when there is no account, so that response times do
        // not tell which user IDs exist.
        let (stored, exists) = match stored {
            Some(stored) => (stored, true),
            None => (dummy_hash().await?.to_owned(), false),
        };
        let (true, Some(user_id)) = (password::verify(given, stored).await? && exists, user_id) else {
            return Err(invalid_credentials());
        };

        let device_id = body.device_id.unwrap_or_else(tokens::new_device_id);
        let access_token = tokens::new_access_token();
        let ip = ip.map(|ip| ip.to_string());
        let login = NewLogin {
            device_id: &device_id,
            initial_display_name: body.initial_device_display_name.as_deref(),
            token_hash: &tokens::hash_token(&access_token),
            ip: ip.as_deref(),
            now: now_ms(),
        };
        state.storage.login(&user_id, login).await?;
        tracing::info!(%user_id, %device_id, "logged in");
        Ok(Json(LoginResponse {
            user_id,
            access_token,
            device_id,
            home_server: state.config.server_name.clone(),
            well_known: ClientWellKnown { homeserver: BaseUrl { base_url: state.config.public_baseurl() } },
        }))
    }

    /// `POST /_matrix/client/v3/logout`
    ///
    /// Invalidates the access token and deletes its device.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3logout>
    #[oai(path = "/_matrix/client/v3/logout", method = "post", operation_id = "logout")]
    async fn logout(&self, state: Data<&AppState>, user: AuthedUser) -> ApiResult<Json<Empty>> {
        let device = std::slice::from_ref(&user.device_id);
        let position = state.storage.delete_devices(&user.user_id, device).await?;
        state.notify(position);
        crate::federation::edus::device_list_changed(&state, &user.user_id, &[], device).await;
        Ok(Json(Empty {}))
    }

    /// `POST /_matrix/client/v3/logout/all`
    ///
    /// Invalidates every access token of the user and deletes all their devices.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3logoutall>
    #[oai(path = "/_matrix/client/v3/logout/all", method = "post", operation_id = "logout_all")]
    async fn logout_all(&self, state: Data<&AppState>, user: AuthedUser) -> ApiResult<Json<Empty>> {
        let devices: Vec<String> =
            state.storage.devices(&user.user_id).await?.into_iter().map(|d| d.device_id).collect();
        let position = state.storage.delete_all_devices(&user.user_id).await?;
        state.notify(position);
        crate::federation::edus::device_list_changed(&state, &user.user_id, &[], &devices).await;
        Ok(Json(Empty {}))
    }
}

fn invalid_credentials() -> MatrixError {
    MatrixError::forbidden("Invalid username or password")
}

/// An argon2id hash of a random password, computed once.
async fn dummy_hash() -> Result<&'static str, MatrixError> {
    static DUMMY: OnceCell<String> = OnceCell::const_new();
    let hash = DUMMY.get_or_try_init(|| password::hash(tokens::new_access_token())).await?;
    Ok(hash.as_str())
}
