//! Server administration, for users listed in the `admins` setting.

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::Tag;
use super::auth::AuthedUser;
use super::client::rooms::parse_user;
use super::error::{ApiResult, MatrixError};
use crate::rooms::notices;
use crate::state::AppState;

/// Administration endpoints.
#[derive(Default)]
pub struct AdminApi;

/// `POST /_myelin/admin/v1/server_notice` request body.
#[derive(Debug, Object)]
pub struct ServerNotice {
    /// The notice's text.
    pub body: String,
    /// One local user to notify; every local user when absent.
    pub user_id: Option<String>,
}

/// How many users were notified.
#[derive(Debug, Object)]
pub struct NoticeSent {
    /// Users the notice went to.
    pub sent: i64,
}

/// The longest notice accepted, in bytes.
const MAX_NOTICE_BYTES: usize = 16 * 1024;

#[OpenApi(tag = "Tag::Admin")]
impl AdminApi {
    /// `POST /_myelin/admin/v1/server_notice`
    ///
    /// Sends a server notice (`m.server_notice`) to one local user or to all of them, each in
    /// their own server notices room.
    #[oai(path = "/_myelin/admin/v1/server_notice", method = "post", operation_id = "sendServerNotice")]
    async fn server_notice(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        body: Json<ServerNotice>,
    ) -> ApiResult<Json<NoticeSent>> {
        if !state.config.admins.contains(&user.user_id) {
            return Err(MatrixError::forbidden("Only server administrators may send server notices"));
        }
        if body.body.is_empty() || body.body.len() > MAX_NOTICE_BYTES {
            return Err(MatrixError::invalid_param("The notice must be 1 to 16384 bytes"));
        }
        let recipients = match &body.user_id {
            Some(user_id) => {
                if !state.storage.user_exists(user_id).await? {
                    return Err(MatrixError::not_found("Unknown local user"));
                }
                vec![user_id.clone()]
            }
            None => state.storage.all_user_ids().await?,
        };
        for recipient in &recipients {
            notices::send(&state, &parse_user(recipient)?, &body.body).await?;
        }
        tracing::info!(admin = %user.user_id, recipients = recipients.len(), "server notice sent");
        Ok(Json(NoticeSent { sent: recipients.len() as i64 }))
    }
}
