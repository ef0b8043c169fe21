//! Messages: send, dm, history, listen.

use anyhow::Context;
use serde_json::{Value, json};

use super::rooms;
use crate::client::Client;
use crate::output;
use crate::view::{self, Message, RoomNames};

/// Sends a room event, Megolm-encrypted when the room is encrypted. Returns the event ID.
pub async fn send_event(
    client: &mut Client,
    room_id: &str,
    event_type: &str,
    content: &Value,
) -> anyhow::Result<String> {
    let txn = uuid::Uuid::new_v4().to_string();
    let response: Value = match rooms::encryption(client, room_id).await? {
        Some(encryption) => {
            // Room keys others sent us and key-count top-ups come first.
            client.catch_up().await?;
            let encrypted = client.encrypt_room_event(room_id, &encryption, event_type, content).await?;
            client.api.put(&["rooms", room_id, "send", "m.room.encrypted", &txn], &encrypted).await?
        }
        None => client.api.put(&["rooms", room_id, "send", event_type, &txn], content).await?,
    };
    response["event_id"].as_str().map(str::to_owned).context("the homeserver returned no event ID")
}

pub async fn send(
    client: &mut Client,
    json: bool,
    room: &str,
    text: Option<String>,
    msgtype: &str,
) -> anyhow::Result<()> {
    let room_id = rooms::resolve(client, room).await?;
    let body = super::text_or_stdin(text).await?;
    let event_id = send_event(client, &room_id, "m.room.message", &json!({ "msgtype": msgtype, "body": body })).await?;
    output::emit(json, &json!({ "room_id": room_id, "event_id": event_id }), |r| {
        r["event_id"].as_str().unwrap_or_default().to_owned()
    })
}

/// Sends to `user`'s direct room with us, creating an encrypted one (and recording it in
/// `m.direct`) when none is usable.
pub async fn dm(client: &mut Client, json: bool, user: &str, text: Option<String>) -> anyhow::Result<()> {
    anyhow::ensure!(user.starts_with('@') && user.contains(':'), "{user:?} is not a user ID (like @alice:example.org)");
    let body = super::text_or_stdin(text).await?;
    let room_id = match direct_room(client, user).await? {
        Some(room_id) => room_id,
        None => {
            let room_id = rooms::create(client, None, false, None, None, &[user.to_owned()], true, true).await?;
            remember_direct(client, user, &room_id).await?;
            room_id
        }
    };
    let event_id =
        send_event(client, &room_id, "m.room.message", &json!({ "msgtype": "m.text", "body": body })).await?;
    output::emit(json, &json!({ "room_id": room_id, "event_id": event_id }), |r| {
        format!("{} (in {})", r["event_id"].as_str().unwrap_or_default(), r["room_id"].as_str().unwrap_or_default())
    })
}

async fn direct_rooms(client: &Client) -> anyhow::Result<Value> {
    match client.api.get::<Value>(&["user", &client.profile.user_id, "account_data", "m.direct"], &[]).await {
        Ok(direct) => Ok(direct),
        Err(err) if crate::api::errcode(&err) == Some("M_NOT_FOUND") => Ok(json!({})),
        Err(err) => Err(err),
    }
}

/// A room listed in `m.direct` for `user` that we are in and they are in or invited to.
async fn direct_room(client: &Client, user: &str) -> anyhow::Result<Option<String>> {
    let direct = direct_rooms(client).await?;
    let joined = rooms::joined_rooms(client).await?;
    for room_id in direct[user].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if !joined.iter().any(|joined| joined == room_id) {
            continue;
        }
        let member = client.state_event(room_id, "m.room.member", user).await?;
        if member.is_some_and(|m| m["membership"] == "join" || m["membership"] == "invite") {
            return Ok(Some(room_id.to_owned()));
        }
    }
    Ok(None)
}

async fn remember_direct(client: &Client, user: &str, room_id: &str) -> anyhow::Result<()> {
    let mut direct = direct_rooms(client).await?;
    let rooms = direct.as_object_mut().context("m.direct is not an object")?.entry(user).or_insert_with(|| json!([]));
    if let Some(rooms) = rooms.as_array_mut() {
        rooms.push(json!(room_id));
    }
    let _: Value = client.api.put(&["user", &client.profile.user_id, "account_data", "m.direct"], &direct).await?;
    Ok(())
}

pub async fn history(client: &mut Client, json: bool, room: &str, limit: u32) -> anyhow::Result<()> {
    let room_id = rooms::resolve(client, room).await?;
    client.catch_up().await?;
    let response: Value = client
        .api
        .get(&["rooms", &room_id, "messages"], &[("dir", "b".to_owned()), ("limit", limit.to_string())])
        .await?;
    let mut names = RoomNames::default();
    let mut messages = Vec::new();
    for event in response["chunk"].as_array().into_iter().flatten().rev() {
        let message = view::message(client, &mut names, &room_id, event).await;
        if json || message.is_chat() {
            messages.push(message);
        }
    }
    output::emit(json, &messages, |messages| messages.iter().map(Message::line).collect::<Vec<_>>().join("\n"))
}

/// How many undecryptable events `listen --follow` keeps retrying.
const MAX_WAITING: usize = 1000;

/// Prints what arrived since the last `listen` (as one JSON object per line with `--json`);
/// with `follow`, keeps syncing and printing, and prints messages whose key arrives late once
/// it does.
pub async fn listen(client: &mut Client, json: bool, room: Option<&str>, follow: bool) -> anyhow::Result<()> {
    let only = match room {
        Some(room) => Some(rooms::resolve(client, room).await?),
        None => None,
    };
    let mut names = RoomNames::default();
    let mut waiting: Vec<(String, Value)> = Vec::new();
    let mut timeout = 0;
    loop {
        let synced = client.sync_once(timeout).await?;
        // Keys come by sync or by `myelin keys import` in another process: retry every time.
        if !waiting.is_empty() {
            let mut still = Vec::new();
            for (room_id, event) in waiting.drain(..) {
                let message = view::message(client, &mut names, &room_id, &event).await;
                if message.waiting_for_key {
                    still.push((room_id, event));
                } else {
                    print_message(json, &message)?;
                }
            }
            waiting = still;
        }
        for invite in &synced.invites {
            if !json {
                println!("-- you are invited to {invite} (myelin join {invite})");
            }
        }
        for entry in client.inbox().await? {
            if only.as_ref().is_none_or(|only| *only == entry.room_id) {
                let message = view::message(client, &mut names, &entry.room_id, &entry.event).await;
                if message.waiting_for_key && follow && waiting.len() < MAX_WAITING {
                    waiting.push((entry.room_id.clone(), entry.event.clone()));
                }
                if json || message.is_chat() {
                    print_message(json, &message)?;
                }
            }
            client.inbox_done(entry.position).await?;
        }
        if !follow {
            return Ok(());
        }
        // While messages wait for keys, sync more often: a key imported by another process
        // arrives without a sync to wake us.
        timeout = if waiting.is_empty() { 30_000 } else { 3_000 };
    }
}

pub fn print_message(json: bool, message: &Message) -> anyhow::Result<()> {
    output::emit_line(json, message, Message::line)
}
