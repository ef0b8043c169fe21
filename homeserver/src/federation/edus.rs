//! Ephemeral data our users produce, queued for the servers that must hear of it: typing and
//! read receipts for a room's other servers, presence and device list changes for the servers
//! of everyone sharing a room with the user.
//!
//! EDUs ride the same durable queue as PDUs: they reach a server that was down, in order.
//! Queueing failures are logged, never returned: the local change has happened already.

use serde_json::{Value, json};

use super::e2ee::server_of;
use crate::state::AppState;
use crate::storage::{Outgoing, now_ms};

/// Queues one EDU for `servers` (ours left out).
async fn queue(state: &AppState, servers: impl IntoIterator<Item = String>, edu_type: &str, content: Value) {
    if state.federation_client.is_none() {
        return;
    }
    let json = json!({ "edu_type": edu_type, "content": content }).to_string();
    let mut servers: Vec<String> = servers.into_iter().filter(|s| *s != state.config.server_name).collect();
    servers.sort_unstable();
    servers.dedup();
    if servers.is_empty() {
        return;
    }
    let items: Vec<Outgoing> =
        servers.into_iter().map(|destination| Outgoing { destination, kind: "edu", json: json.clone() }).collect();
    match state.storage.enqueue_federation(&items, now_ms()).await {
        Ok(()) => state.outbox_ready.notify_one(),
        Err(err) => tracing::warn!(%edu_type, error = %err, "could not queue an EDU"),
    }
}

/// The servers with joined members in a room.
async fn room_servers(state: &AppState, room_id: &str) -> Vec<String> {
    match state.storage.members(room_id).await {
        Ok(members) => members
            .into_iter()
            .filter(|(_, membership)| membership == "join")
            .map(|(user, _)| server_of(&user).to_owned())
            .collect(),
        Err(err) => {
            tracing::warn!(error = %err, "reading a room's servers");
            Vec::new()
        }
    }
}

/// The servers of everyone sharing a room with `user_id`.
async fn servers_sharing_rooms(state: &AppState, user_id: &str) -> Vec<String> {
    match state.storage.users_sharing_rooms(user_id).await {
        Ok(users) => users.iter().map(|u| server_of(u).to_owned()).collect(),
        Err(err) => {
            tracing::warn!(error = %err, "reading who shares rooms with a user");
            Vec::new()
        }
    }
}

/// A local user started or stopped typing (`m.typing`).
pub async fn typing(state: &AppState, room_id: &str, user_id: &str, typing: bool) {
    let servers = room_servers(state, room_id).await;
    queue(state, servers, "m.typing", json!({ "room_id": room_id, "user_id": user_id, "typing": typing })).await;
}

/// A local user's public read receipt (`m.receipt`).
pub async fn receipt(state: &AppState, room_id: &str, user_id: &str, event_id: &str, thread_id: &str, ts: i64) {
    let mut data = json!({ "ts": ts });
    if !thread_id.is_empty() {
        data["thread_id"] = thread_id.into();
    }
    let content = json!({ room_id: { "m.read": { user_id: { "event_ids": [event_id], "data": data } } } });
    let servers = room_servers(state, room_id).await;
    queue(state, servers, "m.receipt", content).await;
}

/// A local user's presence changed (`m.presence`).
pub async fn presence(state: &AppState, user_id: &str, presence: &str, status_msg: Option<&str>) {
    let mut update = json!({
        "user_id": user_id,
        "presence": presence,
        "last_active_ago": 0,
        "currently_active": presence == "online",
    });
    if let Some(status_msg) = status_msg {
        update["status_msg"] = status_msg.into();
    }
    let servers = servers_sharing_rooms(state, user_id).await;
    queue(state, servers, "m.presence", json!({ "push": [update] })).await;
}

/// A local user's devices or device keys changed (`m.device_list_update`, one per device, with
/// its keys; deleted devices say so). Receivers that cannot apply it refetch the whole list.
pub async fn device_list_changed(state: &AppState, user_id: &str, changed: &[String], deleted: &[String]) {
    if state.federation_client.is_none() {
        return;
    }
    let servers = servers_sharing_rooms(state, user_id).await;
    let stream_id = state.storage.device_list_stream_id(user_id).await.unwrap_or_default();
    let keys = state.storage.device_keys(user_id).await.unwrap_or_default();
    for device_id in changed {
        let mut update = json!({ "user_id": user_id, "device_id": device_id, "stream_id": stream_id, "prev_id": [] });
        if let Some(stored) = keys.iter().find(|k| &k.device_id == device_id) {
            update["keys"] = serde_json::from_str(&stored.key_json).unwrap_or(Value::Null);
        }
        queue(state, servers.clone(), "m.device_list_update", update).await;
    }
    for device_id in deleted {
        let update = json!({
            "user_id": user_id, "device_id": device_id, "stream_id": stream_id, "prev_id": [], "deleted": true,
        });
        queue(state, servers.clone(), "m.device_list_update", update).await;
    }
}

/// A local user's cross-signing keys changed (`m.signing_key_update`).
pub async fn signing_keys_changed(state: &AppState, user_id: &str) {
    if state.federation_client.is_none() {
        return;
    }
    let keys = state.storage.cross_signing_keys(user_id).await.unwrap_or_default();
    let mut content = json!({ "user_id": user_id });
    for (kind, field) in [("master", "master_key"), ("self_signing", "self_signing_key")] {
        if let Some(key) = keys.get(kind).and_then(|json| serde_json::from_str::<Value>(json).ok()) {
            content[field] = key;
        }
    }
    let servers = servers_sharing_rooms(state, user_id).await;
    queue(state, servers, "m.signing_key_update", content).await;
}
