//! Server administration, for users listed in the `admins` setting.

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::Tag;
use super::auth::AuthedUser;
use super::client::rooms::parse_user;
use super::error::{ApiResult, MatrixError};
use crate::rooms::notices;
use crate::state::AppState;
use crate::storage::MediaItem;

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

/// `DELETE /_myelin/admin/v1/media/…` response.
#[derive(Debug, Object)]
pub struct DeletedMedia {
    /// The media IDs deleted.
    pub deleted_media: Vec<String>,
    /// How many.
    pub total: i64,
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

    /// `DELETE /_myelin/admin/v1/media/{serverName}/{mediaId}`
    ///
    /// Deletes a media item of this server. Its bytes and thumbnails go with it unless another
    /// upload of the same bytes still uses them.
    #[oai(path = "/_myelin/admin/v1/media/:serverName/:mediaId", method = "delete", operation_id = "deleteMedia")]
    async fn delete_media(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// This server's name.
        #[oai(name = "serverName")]
        server_name: Path<String>,
        /// The media ID.
        #[oai(name = "mediaId")]
        media_id: Path<String>,
    ) -> ApiResult<Json<DeletedMedia>> {
        if !state.config.admins.contains(&user.user_id) {
            return Err(MatrixError::forbidden("Only server administrators may delete media"));
        }
        if server_name.0 != state.config.server_name {
            return Err(MatrixError::invalid_param("Only media of this server can be deleted"));
        }
        let Some(item) = state.storage.media(&media_id).await? else {
            return Err(MatrixError::not_found("Media not found"));
        };
        let deleted = delete_media_item(&state, item).await?;
        tracing::info!(admin = %user.user_id, media_id = %media_id.0, deleted, "media deleted");
        let deleted_media = if deleted { vec![media_id.0] } else { Vec::new() };
        Ok(Json(DeletedMedia { total: deleted_media.len() as i64, deleted_media }))
    }
}

/// Deletes a media item, and its bytes and thumbnails once nothing else uses them. The bytes
/// are removed under the content's lock (no upload can be counting on them then) and before
/// the commit: if that fails the item stays, without bytes, and deleting it again finishes.
async fn delete_media_item(state: &AppState, mut item: MediaItem) -> Result<bool, MatrixError> {
    loop {
        // A reservation has no bytes: its ID stands in for them as the lock's name.
        let content = item.sha256.clone().unwrap_or_else(|| item.media_id.clone());
        let mut write = state.storage.begin_media_write(&content, None).await?;
        let Some(deleted) = write.delete(&item.media_id).await? else { return Ok(false) };
        if deleted.sha256 != item.sha256 {
            // Its upload finished since it was read: lock its bytes instead.
            drop(write);
            item = deleted;
            continue;
        }
        if let Some(sha256) = &deleted.sha256
            && write.references(sha256).await? == 0
        {
            state.media.delete(sha256).await?;
        }
        write.commit().await?;
        return Ok(true);
    }
}
