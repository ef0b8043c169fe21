//! Server notices: messages from the server to its users, in a room per user created by a
//! system account. <https://spec.matrix.org/v1.19/client-server-api/#server-notices>

use ruma_common::{RoomId, UserId};
use ruma_events::TimelineEventType;
use serde_json::json;

use super::RoomError;
use super::create::{self, NewRoom};
use super::pdu::PduTemplate;
use super::timeline::{self, Target};
use crate::state::AppState;

/// The system account's localpart: a leading underscore is reserved, so no one can register it.
pub const SENDER_LOCALPART: &str = "_server";

/// Sends a notice to one local user, creating their notices room on first use.
pub async fn send(state: &AppState, recipient: &UserId, body: &str) -> Result<(), RoomError> {
    let sender = UserId::parse(format!("@{SENDER_LOCALPART}:{}", state.config.server_name))
        .map_err(|e| RoomError::Corrupt(e.to_string()))?;
    let room_id = match state.storage.server_notice_room(recipient.as_str()).await? {
        Some(room_id) => RoomId::parse(&room_id).map_err(|e| RoomError::Corrupt(e.to_string()))?,
        None => {
            let new = NewRoom {
                name: Some("Server Notices".into()),
                invite: vec![recipient.to_owned()],
                ..Default::default()
            };
            let room_id = create::create_room(state, &sender, new).await?;
            state.storage.set_server_notice_room(recipient.as_str(), room_id.as_str()).await?;
            // The spec's tag tells clients to show the room as the server's.
            let tag = json!({"tags": {"m.server_notice": {}}}).to_string();
            let position = state.storage.set_account_data(recipient.as_str(), room_id.as_str(), "m.tag", &tag).await?;
            state.notify(position);
            room_id
        }
    };
    let template = PduTemplate {
        kind: TimelineEventType::RoomMessage,
        state_key: None,
        content: json!({"msgtype": "m.server_notice", "body": body}),
    };
    timeline::append(state, Target::Room(&room_id), &sender, template, None).await?;
    Ok(())
}
