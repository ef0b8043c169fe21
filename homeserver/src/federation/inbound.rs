//! What other servers send us in transactions, applied: EDUs for now.

use serde_json::Value;

use super::FederationError;
use crate::state::AppState;
use crate::storage::{Recipient, now_ms};

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
        _ => Ok(()),
    }
}
