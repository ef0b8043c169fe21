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
use crate::storage::{Recipient, now_ms};

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
        let own_server = format!(":{}", state.config.server_name);
        let mut recipients = Vec::new();
        for (user_id, devices) in body.0.messages {
            if !user_id.starts_with('@') || !user_id.contains(':') {
                return Err(MatrixError::invalid_param(format!("{user_id:?} is not a user ID")));
            }
            if !user_id.ends_with(&own_server) {
                // Delivery to other servers arrives with federation (m.direct_to_device).
                tracing::debug!(recipient = %user_id, "to-device message for another server not sent");
                continue;
            }
            for (device_id, content) in devices {
                let content = serde_json::to_string(&content).map_err(|e| MatrixError::bad_json(e.to_string()))?;
                recipients.push(Recipient { user_id: user_id.clone(), device_id, content });
            }
        }
        let sender = (user.user_id.as_str(), user.device_id.as_str(), txn_id.0.as_str());
        if let Some(position) = state.storage.send_to_device(sender, &event_type, &recipients, now_ms()).await? {
            state.notify(position);
        }
        Ok(Json(Empty {}))
    }
}
