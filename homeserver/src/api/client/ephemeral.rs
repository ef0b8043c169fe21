//! Typing notices, receipts and read markers.

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::login::Empty;
use super::rooms::parse_room;
use crate::api::Tag;
use crate::api::auth::AuthedUser;
use crate::api::error::{ApiResult, MatrixError};
use crate::state::AppState;
use crate::storage::{Receipt, now_ms};

/// Typing and receipt endpoints.
#[derive(Default)]
pub struct EphemeralApi;

/// The longest a typing notice lasts, whatever the client asks.
const MAX_TYPING_MS: u64 = 120_000;
/// How long a typing notice lasts without a `timeout`.
const DEFAULT_TYPING_MS: u64 = 30_000;

/// `PUT /typing` request body.
#[derive(Debug, Object)]
pub struct TypingBody {
    /// Whether the user is typing.
    pub typing: bool,
    /// How long, in milliseconds, the notice lasts.
    pub timeout: Option<u64>,
}

/// `POST /receipt` request body.
#[derive(Debug, Default, Object)]
pub struct ReceiptBody {
    /// The thread the receipt is for: `main` or a thread root; absent for unthreaded.
    pub thread_id: Option<String>,
}

/// `POST /read_markers` request body.
#[derive(Debug, Object)]
pub struct ReadMarkers {
    /// The fully-read marker.
    #[oai(rename = "m.fully_read")]
    pub fully_read: Option<String>,
    /// A public read receipt.
    #[oai(rename = "m.read")]
    pub read: Option<String>,
    /// A private read receipt.
    #[oai(rename = "m.read.private")]
    pub read_private: Option<String>,
}

#[OpenApi(tag = "Tag::Rooms")]
impl EphemeralApi {
    /// `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}`
    ///
    /// Starts or stops a typing notice.
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3roomsroomidtypinguserid>
    #[oai(path = "/_matrix/client/v3/rooms/:roomId/typing/:userId", method = "put", operation_id = "setTyping")]
    async fn typing(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// The user typing: the caller.
        #[oai(name = "userId")]
        user_id: Path<String>,
        body: Json<TypingBody>,
    ) -> ApiResult<Json<Empty>> {
        if user.user_id != user_id.0 {
            return Err(MatrixError::forbidden("You may only set your own typing state"));
        }
        let room_id = parse_room(&room_id)?;
        require_joined(&state, room_id.as_str(), &user.user_id).await?;
        let timeout = body.timeout.unwrap_or(DEFAULT_TYPING_MS).min(MAX_TYPING_MS);
        let expires = body.typing.then(|| now_ms() + i64::try_from(timeout).unwrap_or(0));
        let position = state.storage.set_typing(room_id.as_str(), &user.user_id, expires).await?;
        state.notify(position);
        crate::federation::edus::typing(&state, room_id.as_str(), &user.user_id, body.typing).await;
        if let Some(expires) = expires {
            // Other users' clients learn that the notice ended when it times out, not only
            // when the typist says so.
            let (state, room_id, user_id) = (state.clone(), room_id.to_string(), user.user_id.clone());
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(timeout)).await;
                match state.storage.expire_typing(&room_id, &user_id, expires).await {
                    Ok(Some(position)) => state.notify(position),
                    Ok(None) => {}
                    Err(err) => tracing::warn!(error = %err, "could not expire a typing notice"),
                }
            });
        }
        Ok(Json(Empty {}))
    }

    /// `POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}`
    ///
    /// Marks an event read (`m.read`, `m.read.private`, or the fully-read marker).
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidreceiptreceipttypeeventid>
    #[oai(
        path = "/_matrix/client/v3/rooms/:roomId/receipt/:receiptType/:eventId",
        method = "post",
        operation_id = "postReceipt"
    )]
    async fn receipt(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// `m.read`, `m.read.private` or `m.fully_read`.
        #[oai(name = "receiptType")]
        receipt_type: Path<String>,
        /// The event read up to.
        #[oai(name = "eventId")]
        event_id: Path<String>,
        body: Json<ReceiptBody>,
    ) -> ApiResult<Json<Empty>> {
        let room_id = parse_room(&room_id)?;
        if !matches!(receipt_type.as_str(), "m.read" | "m.read.private" | "m.fully_read") {
            return Err(MatrixError::invalid_param("Unknown receipt type"));
        }
        if let Some(thread) = &body.thread_id
            && (thread.is_empty() || receipt_type.as_str() == "m.fully_read")
        {
            return Err(MatrixError::invalid_param("thread_id must be a non-empty string, and not on m.fully_read"));
        }
        mark(&state, &user, room_id.as_str(), &receipt_type, &event_id, body.0.thread_id).await?;
        Ok(Json(Empty {}))
    }

    /// `POST /_matrix/client/v3/rooms/{roomId}/read_markers`
    ///
    /// Sets the fully-read marker and read receipts at once.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidread_markers>
    #[oai(path = "/_matrix/client/v3/rooms/:roomId/read_markers", method = "post", operation_id = "setReadMarker")]
    async fn read_markers(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        body: Json<ReadMarkers>,
    ) -> ApiResult<Json<Empty>> {
        let room_id = parse_room(&room_id)?;
        let body = body.0;
        for (kind, event_id) in
            [("m.fully_read", body.fully_read), ("m.read", body.read), ("m.read.private", body.read_private)]
        {
            if let Some(event_id) = event_id {
                mark(&state, &user, room_id.as_str(), kind, &event_id, None).await?;
            }
        }
        Ok(Json(Empty {}))
    }
}

async fn require_joined(state: &AppState, room_id: &str, user_id: &str) -> Result<(), MatrixError> {
    match state.storage.membership(room_id, user_id).await? {
        Some((m, _)) if m == "join" => Ok(()),
        _ => Err(MatrixError::forbidden("You are not in this room")),
    }
}

async fn mark(
    state: &AppState,
    user: &AuthedUser,
    room_id: &str,
    kind: &str,
    event_id: &str,
    thread_id: Option<String>,
) -> Result<(), MatrixError> {
    require_joined(state, room_id, &user.user_id).await?;
    if state.storage.event(event_id).await?.is_none_or(|e| e.room_id != room_id) {
        return Err(MatrixError::not_found("Unknown event"));
    }
    let position = if kind == "m.fully_read" {
        // The fully-read marker is the room's `m.fully_read` account data.
        let content = serde_json::json!({"event_id": event_id}).to_string();
        state.storage.set_account_data(&user.user_id, room_id, "m.fully_read", &content).await?
    } else {
        let receipt = Receipt {
            receipt_type: kind.to_owned(),
            user_id: user.user_id.clone(),
            thread_id: thread_id.unwrap_or_default(),
            event_id: event_id.to_owned(),
            ts: now_ms(),
        };
        let position = state.storage.set_receipt(room_id, &receipt).await?;
        if kind == "m.read" {
            let (thread, ts) = (&receipt.thread_id, receipt.ts);
            crate::federation::edus::receipt(state, room_id, &user.user_id, event_id, thread, ts).await;
        }
        position
    };
    state.notify(position);
    Ok(())
}
