//! The EDUs other servers send us in transactions, applied. (PDUs are `rooms`' business.)

use serde_json::Value;

use super::FederationError;
use crate::state::AppState;
use crate::storage::{Receipt, Recipient, now_ms};

/// Applies one EDU from `origin`. An EDU that speaks for users of another server, or that is
/// malformed, is refused; unknown types are ignored.
pub async fn edu(state: &AppState, origin: &str, edu: &Value) -> Result<(), FederationError> {
    let invalid = |reason: &str| FederationError::Invalid(reason.to_owned());
    let content = &edu["content"];
    match edu["edu_type"].as_str() {
        Some("m.direct_to_device") => {
            let sender = content["sender"].as_str().ok_or_else(|| invalid("no sender"))?;
            if super::e2ee::server_of(sender) != origin {
                return Err(invalid("the sender is not a user of the sending server"));
            }
            let event_type = content["type"].as_str().ok_or_else(|| invalid("no type"))?;
            let message_id = content["message_id"].as_str().ok_or_else(|| invalid("no message_id"))?;
            let mut recipients = Vec::new();
            for (user_id, devices) in content["messages"].as_object().into_iter().flatten() {
                if super::e2ee::server_of(user_id) != state.config.server_name {
                    continue;
                }
                for (device_id, message) in devices.as_object().into_iter().flatten() {
                    recipients.push(Recipient {
                        user_id: user_id.clone(),
                        device_id: device_id.clone(),
                        content: message.to_string(),
                    });
                }
            }
            // The message ID plays the client transaction ID: a resent EDU is stored once.
            let txn = (sender, "", message_id);
            if let Some(position) = state.storage.send_to_device(txn, event_type, &recipients, &[], now_ms()).await? {
                state.notify(position);
            }
            Ok(())
        }
        Some("m.typing") => {
            let (room_id, user_id) = (str_field(content, "room_id")?, str_field(content, "user_id")?);
            joined_user_of(state, origin, room_id, user_id).await?;
            let typing = content["typing"].as_bool().unwrap_or(false);
            let expires = typing.then(|| now_ms() + REMOTE_TYPING_MS);
            state.notify(state.storage.set_typing(room_id, user_id, expires).await?);
            if let Some(expires) = expires {
                // The typing server may never say it stopped: the notice times out here.
                let (state, room_id, user_id) = (state.clone(), room_id.to_owned(), user_id.to_owned());
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(REMOTE_TYPING_MS as u64)).await;
                    if let Ok(Some(position)) = state.storage.expire_typing(&room_id, &user_id, expires).await {
                        state.notify(position);
                    }
                });
            }
            Ok(())
        }
        Some("m.receipt") => {
            for (room_id, kinds) in content.as_object().into_iter().flatten() {
                for (user_id, receipt) in kinds["m.read"].as_object().into_iter().flatten() {
                    if joined_user_of(state, origin, room_id, user_id).await.is_err() {
                        continue;
                    }
                    let Some(event_id) = receipt["event_ids"].as_array().and_then(|ids| ids.last()?.as_str()) else {
                        continue;
                    };
                    if state.storage.event(event_id).await?.is_none_or(|e| &e.room_id != room_id) {
                        continue;
                    }
                    let receipt = Receipt {
                        receipt_type: "m.read".to_owned(),
                        user_id: user_id.clone(),
                        thread_id: receipt["data"]["thread_id"].as_str().unwrap_or_default().to_owned(),
                        event_id: event_id.to_owned(),
                        ts: receipt["data"]["ts"].as_i64().unwrap_or_else(now_ms),
                    };
                    state.notify(state.storage.set_receipt(room_id, &receipt).await?);
                }
            }
            Ok(())
        }
        Some("m.presence") => {
            for update in content["push"].as_array().into_iter().flatten() {
                let Some(user_id) = update["user_id"].as_str() else { continue };
                let Some(presence) = update["presence"].as_str() else { continue };
                if super::e2ee::server_of(user_id) != origin
                    || !matches!(presence, "online" | "offline" | "unavailable")
                {
                    continue;
                }
                // Only users someone here shares a room with: nobody else can see it.
                let sharing = state.storage.users_sharing_rooms(user_id).await?;
                if !sharing.iter().any(|u| super::e2ee::server_of(u) == state.config.server_name) {
                    continue;
                }
                let last_active = now_ms() - update["last_active_ago"].as_i64().unwrap_or(0).max(0);
                let status = update["status_msg"].as_str();
                state.notify(state.storage.set_presence(user_id, presence, status, last_active).await?);
            }
            Ok(())
        }
        Some("m.device_list_update" | "m.signing_key_update") => {
            let user_id = str_field(content, "user_id")?;
            if super::e2ee::server_of(user_id) != origin {
                return Err(invalid("the user is not a user of the sending server"));
            }
            // Keys are fetched from the user's server whenever a client asks: noting the change
            // makes the clients of users sharing a room with them ask again.
            state.notify(state.storage.note_device_list_change(user_id).await?);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// How long a typing notice from another server lasts unless renewed or ended.
const REMOTE_TYPING_MS: i64 = 30_000;

fn str_field<'v>(content: &'v Value, name: &str) -> Result<&'v str, FederationError> {
    content[name].as_str().ok_or_else(|| FederationError::Invalid(format!("no {name}")))
}

/// Checks that `user_id` belongs to `origin` and is joined to the room.
async fn joined_user_of(state: &AppState, origin: &str, room_id: &str, user_id: &str) -> Result<(), FederationError> {
    if super::e2ee::server_of(user_id) != origin {
        return Err(FederationError::Invalid("the user is not a user of the sending server".into()));
    }
    match state.storage.membership(room_id, user_id).await? {
        Some((membership, _)) if membership == "join" => Ok(()),
        _ => Err(FederationError::Invalid("the user is not in that room".into())),
    }
}
