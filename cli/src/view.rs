//! Room events as the user sees them: decrypted where possible, one line of text or one JSON
//! object each.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use crate::client::Client;
use crate::crypto::megolm::DecryptError;

/// One timeline event, decrypted if it was encrypted.
#[derive(Serialize)]
pub struct Message {
    pub room_id: String,
    pub room: String,
    pub event_id: String,
    pub sender: String,
    pub origin_server_ts: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub encrypted: bool,
    /// The Megolm session of an encrypted event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The sending device, for decrypted events whose device we know.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    pub content: Value,
    /// The state key of state events (the member of membership events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_key: Option<String>,
    /// Why an encrypted event could not be decrypted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The room key has not arrived yet; it may decrypt later.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub waiting_for_key: bool,
}

impl Message {
    /// `[time] room <sender> text`.
    pub fn line(&self) -> String {
        let time = crate::output::time(self.origin_server_ts);
        let lock = if self.encrypted { "🔒" } else { "" };
        format!("[{time}] {} {lock}<{}> {}", self.room, self.sender, self.text())
    }

    pub fn text(&self) -> String {
        if let Some(error) = &self.error {
            return format!("** unable to decrypt: {error} **");
        }
        let content = &self.content;
        let body = content["body"].as_str().unwrap_or_default();
        match self.event_type.as_str() {
            "m.room.message" => match content["msgtype"].as_str().unwrap_or_default() {
                "m.emote" => format!("* {} {body}", self.sender),
                "m.file" | "m.image" | "m.video" | "m.audio" => {
                    let size = content["info"]["size"].as_u64().map(|s| format!(", {}", crate::output::bytes(s)));
                    let encrypted = if content.get("file").is_some() { "encrypted " } else { "" };
                    format!(
                        "[{encrypted}{} {body}{}] (myelin download {})",
                        content["msgtype"].as_str().unwrap_or_default().trim_start_matches("m."),
                        size.unwrap_or_default(),
                        self.event_id
                    )
                }
                _ => body.to_owned(),
            },
            "m.room.member" => {
                let target = self.state_key.as_deref().unwrap_or_default();
                let by_self = target == self.sender;
                match content["membership"].as_str().unwrap_or_default() {
                    "join" => "-- joined".to_owned(),
                    "invite" => format!("-- invited {target}"),
                    "leave" if by_self => "-- left".to_owned(),
                    "leave" => format!("-- removed {target}"),
                    "ban" => format!("-- banned {target}"),
                    "knock" => "-- knocked".to_owned(),
                    other => format!("-- membership of {target}: {other}"),
                }
            }
            "m.room.name" => format!("-- room name: {}", content["name"].as_str().unwrap_or_default()),
            "m.room.topic" => format!("-- topic: {}", content["topic"].as_str().unwrap_or_default()),
            "m.room.encryption" => "-- encryption enabled".to_owned(),
            crate::sync::GAP => {
                format!("-- earlier messages were skipped (myelin history {} shows them)", self.room_id)
            }
            other => format!("-- {other}"),
        }
    }

    /// Whether a user would want to see this in a chat view.
    pub fn is_chat(&self) -> bool {
        self.error.is_some()
            || matches!(
                self.event_type.as_str(),
                "m.room.message" | "m.room.member" | "m.room.name" | "m.room.topic" | crate::sync::GAP
            )
    }
}

/// Room display names, looked up once per command.
#[derive(Default)]
pub struct RoomNames(HashMap<String, String>);

impl RoomNames {
    pub async fn get(&mut self, client: &Client, room_id: &str) -> String {
        if let Some(name) = self.0.get(room_id) {
            return name.clone();
        }
        let name = crate::commands::rooms::display_name(client, room_id).await;
        self.0.insert(room_id.to_owned(), name.clone());
        name
    }
}

/// Decrypts (if needed) and describes a timeline event.
pub async fn message(client: &Client, names: &mut RoomNames, room_id: &str, event: &Value) -> Message {
    let encrypted = event["type"] == "m.room.encrypted";
    let mut message = Message {
        room_id: room_id.to_owned(),
        room: names.get(client, room_id).await,
        event_id: event["event_id"].as_str().unwrap_or_default().to_owned(),
        sender: event["sender"].as_str().unwrap_or_default().to_owned(),
        origin_server_ts: event["origin_server_ts"].as_i64().unwrap_or_default(),
        event_type: event["type"].as_str().unwrap_or_default().to_owned(),
        encrypted,
        session_id: event["content"]["session_id"].as_str().filter(|_| encrypted).map(str::to_owned),
        device_id: None,
        content: event["content"].clone(),
        state_key: event["state_key"].as_str().map(str::to_owned),
        error: None,
        waiting_for_key: false,
    };
    if encrypted {
        match client.decrypt_room_event(room_id, event).await {
            Ok(decrypted) => {
                message.event_type = decrypted.event_type;
                message.content = decrypted.content;
                message.device_id = decrypted.device_id;
            }
            Err(err) => {
                message.waiting_for_key = matches!(err, DecryptError::UnknownSession(_));
                message.error = Some(err.to_string());
            }
        }
    }
    message
}
