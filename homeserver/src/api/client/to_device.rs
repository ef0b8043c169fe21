//! `PUT /sendToDevice/{eventType}/{txnId}`: messages straight to devices, outside rooms (key
//! exchange, verification).

use std::collections::BTreeMap;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::login::Empty;
use super::rooms::JsonObject;
use crate::api::Tag;
use crate::api::auth::AuthedUser;
use crate::api::error::{ApiResult, MatrixError};
use crate::state::AppState;
use crate::storage::{Outgoing, Recipient, now_ms};

/// To-device endpoints.
#[derive(Default)]
pub struct ToDeviceApi;

/// `PUT /sendToDevice` request body.
#[derive(Debug, Object)]
pub struct SendToDeviceRequest {
    /// User → device ID (or `*` for all the user's devices) → message content.
    pub messages: BTreeMap<String, BTreeMap<String, JsonObject>>,
}

#[OpenApi(tag = "Tag::EndToEndEncryption")]
impl ToDeviceApi {
    /// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`
    ///
    /// Sends messages to devices; each is delivered once, in the recipient device's next
    /// syncs until a later sync acknowledges it. A repeated transaction ID sends nothing again.
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3sendtodeviceeventtypetxnid>
    #[oai(path = "/_matrix/client/v3/sendToDevice/:eventType/:txnId", method = "put", operation_id = "sendToDevice")]
    async fn send(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The type of the messages.
        #[oai(name = "eventType")]
        event_type: Path<String>,
        /// The client's transaction ID.
        #[oai(name = "txnId")]
        txn_id: Path<String>,
        body: Json<SendToDeviceRequest>,
    ) -> ApiResult<Json<Empty>> {
        let mut recipients = Vec::new();
        // Other servers' users: one `m.direct_to_device` EDU per server.
        let mut remote: BTreeMap<String, BTreeMap<String, BTreeMap<String, JsonObject>>> = BTreeMap::new();
        for (user_id, devices) in body.0.messages {
            let Ok(parsed) = ruma_common::UserId::parse(&user_id) else {
                return Err(MatrixError::invalid_param(format!("{user_id:?} is not a user ID")));
            };
            let server = parsed.server_name().as_str();
            if server != state.config.server_name {
                // What cannot be signed cannot travel: refused now rather than stuck in the queue.
                if let Err(err) =
                    ruma_common::CanonicalJsonValue::try_from(serde_json::to_value(&devices).unwrap_or_default())
                {
                    return Err(MatrixError::bad_json(format!(
                        "Messages for other servers must be canonical JSON: {err}"
                    )));
                }
                remote.entry(server.to_owned()).or_default().insert(user_id, devices);
                continue;
            }
            for (device_id, content) in devices {
                let content = serde_json::to_string(&content).map_err(|e| MatrixError::bad_json(e.to_string()))?;
                recipients.push(Recipient { user_id: user_id.clone(), device_id, content });
            }
        }
        if !remote.is_empty() {
            // Fails with M_FORBIDDEN when federation is off, rather than dropping messages.
            state.federation()?;
        }
        let outgoing: Vec<Outgoing> = remote
            .into_iter()
            .map(|(destination, messages)| {
                let edu = serde_json::json!({
                    "edu_type": "m.direct_to_device",
                    "content": {
                        "sender": user.user_id,
                        "type": event_type.as_str(),
                        "message_id": uuid::Uuid::new_v4().simple().to_string(),
                        "messages": messages,
                    },
                });
                Outgoing { destination, kind: "edu", json: edu.to_string() }
            })
            .collect();
        let sender = (user.user_id.as_str(), user.device_id.as_str(), txn_id.0.as_str());
        let position = state.storage.send_to_device(sender, &event_type, &recipients, &outgoing, now_ms()).await?;
        if let Some(position) = position {
            state.notify(position);
            if !outgoing.is_empty() {
                state.outbox_ready.notify_one();
            }
        }
        Ok(Json(Empty {}))
    }
}
