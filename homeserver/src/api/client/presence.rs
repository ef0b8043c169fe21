//! Presence: `GET/PUT /presence/{userId}/status`.

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use super::login::Empty;
use crate::api::Tag;
use crate::api::auth::AuthedUser;
use crate::api::error::{ApiResult, MatrixError};
use crate::state::AppState;
use crate::storage::now_ms;

/// Presence endpoints.
#[derive(Default)]
pub struct PresenceApi;

/// A presence state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum PresenceState {
    /// Online.
    Online,
    /// Offline.
    Offline,
    /// Away or idle.
    Unavailable,
}

/// `PUT /presence/{userId}/status` request body.
#[derive(Debug, Object)]
pub struct SetPresence {
    /// The new state.
    pub presence: PresenceState,
    /// A status message.
    pub status_msg: Option<String>,
}

/// `GET /presence/{userId}/status` response.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct PresenceStatus {
    /// The state.
    pub presence: String,
    /// Milliseconds since the user was last active.
    pub last_active_ago: Option<i64>,
    /// The status message.
    pub status_msg: Option<String>,
    /// Whether the user is active now.
    pub currently_active: Option<bool>,
}

/// The longest status message accepted, in bytes.
const MAX_STATUS_BYTES: usize = 1024;

#[OpenApi(tag = "Tag::UserData")]
impl PresenceApi {
    /// `PUT /_matrix/client/v3/presence/{userId}/status`
    ///
    /// Sets the caller's presence.
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3presenceuseridstatus>
    #[oai(path = "/_matrix/client/v3/presence/:userId/status", method = "put", operation_id = "setPresence")]
    async fn set(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The user: the caller.
        #[oai(name = "userId")]
        user_id: Path<String>,
        body: Json<SetPresence>,
    ) -> ApiResult<Json<Empty>> {
        if user.user_id != user_id.0 {
            return Err(MatrixError::forbidden("You may only set your own presence"));
        }
        if body.status_msg.as_ref().is_some_and(|m| m.len() > MAX_STATUS_BYTES) {
            return Err(MatrixError::invalid_param("Status message too long"));
        }
        let presence = match body.presence {
            PresenceState::Online => "online",
            PresenceState::Offline => "offline",
            PresenceState::Unavailable => "unavailable",
        };
        let position =
            state.storage.set_presence(&user.user_id, presence, body.status_msg.as_deref(), now_ms()).await?;
        state.notify(position);
        crate::federation::edus::presence(&state, &user.user_id, presence, body.status_msg.as_deref()).await;
        Ok(Json(Empty {}))
    }

    /// `GET /_matrix/client/v3/presence/{userId}/status`
    ///
    /// A user's presence, visible to users who share a room with them.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3presenceuseridstatus>
    #[oai(path = "/_matrix/client/v3/presence/:userId/status", method = "get", operation_id = "getPresence")]
    async fn get(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The user.
        #[oai(name = "userId")]
        user_id: Path<String>,
    ) -> ApiResult<Json<PresenceStatus>> {
        if user.user_id != user_id.0 && !state.storage.users_sharing_rooms(&user.user_id).await?.contains(&user_id.0) {
            return Err(MatrixError::forbidden("You do not share a room with this user"));
        }
        if !state.storage.user_exists(&user_id).await? {
            return Err(MatrixError::not_found("Unknown user"));
        }
        let status = match state.storage.presence(&user_id).await? {
            Some(p) => PresenceStatus {
                currently_active: Some(p.presence == "online"),
                last_active_ago: Some((now_ms() - p.last_active_ts).max(0)),
                presence: p.presence,
                status_msg: p.status_msg,
            },
            None => PresenceStatus {
                presence: "offline".into(),
                last_active_ago: None,
                status_msg: None,
                currently_active: None,
            },
        };
        Ok(Json(status))
    }
}
