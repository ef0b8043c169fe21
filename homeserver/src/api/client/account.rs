//! The account itself: `GET /account/whoami`, `POST /account/password`.

use poem::Request;
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::login::Empty;
use crate::accounts::password;
use crate::api::Tag;
use crate::api::auth::{AuthedUser, client_ip};
use crate::api::error::{ApiResult, MatrixError};
use crate::api::uia::{self, AuthData, UiaError};
use crate::state::AppState;

/// Account endpoints.
#[derive(Default)]
pub struct AccountApi;

/// `GET /account/whoami` response.
#[derive(Debug, Object)]
pub struct WhoAmI {
    /// The user the token belongs to.
    pub user_id: String,
    /// The device the token was issued to.
    pub device_id: String,
    /// Whether the user is a guest (never, on this server).
    pub is_guest: bool,
}

/// `POST /account/password` request body.
#[derive(Debug, Object)]
pub struct ChangePassword {
    /// The new password.
    pub new_password: String,
    /// Whether to log out every other device of the user. Defaults to `true`.
    pub logout_devices: Option<bool>,
    /// User-interactive authentication: the current password.
    pub auth: Option<AuthData>,
}

#[OpenApi(tag = "Tag::AccountManagement")]
impl AccountApi {
    /// `GET /_matrix/client/v3/account/whoami`
    ///
    /// Who the access token belongs to.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3accountwhoami>
    #[oai(
        path = "/_matrix/client/v3/account/whoami",
        method = "get",
        operation_id = "getTokenOwner",
        tag = "Tag::SessionManagement"
    )]
    async fn whoami(&self, user: AuthedUser) -> ApiResult<Json<WhoAmI>> {
        Ok(Json(WhoAmI { user_id: user.user_id, device_id: user.device_id, is_guest: false }))
    }

    /// `POST /_matrix/client/v3/account/password`
    ///
    /// Changes the password, authenticated with the current one (`m.login.password`), and by
    /// default logs out every other device.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3accountpassword>
    #[oai(path = "/_matrix/client/v3/account/password", method = "post", operation_id = "changePassword")]
    async fn change_password(
        &self,
        state: Data<&AppState>,
        req: &Request,
        user: AuthedUser,
        body: Json<ChangePassword>,
    ) -> Result<Json<Empty>, UiaError> {
        let body = body.0;
        if body.new_password.is_empty() || body.new_password.len() > password::MAX_PASSWORD_BYTES {
            return Err(MatrixError::invalid_param("The new password must be 1 to 512 bytes").into());
        }
        let uia_request = uia::Request {
            purpose: "change_password",
            flows: &[&[uia::PASSWORD]],
            user_id: Some(&user.user_id),
            ip: client_ip(req),
        };
        let completed = uia::authenticate(&state, uia_request, body.auth.as_ref()).await?;
        let hash = password::hash(body.new_password).await?;
        let keep = body.logout_devices.unwrap_or(true).then_some(user.device_id.as_str());
        if let Some(position) = state.storage.set_password_hash(&user.user_id, &hash, keep).await? {
            state.notify(position);
        }
        completed.finish(&state).await?;
        tracing::info!(user_id = %user.user_id, "password changed");
        Ok(Json(Empty {}))
    }
}
