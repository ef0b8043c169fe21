//! Rooms: list, create, name/topic, join, leave, membership changes, members, directory.

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::client::Client;
use crate::crypto::MEGOLM_ALGORITHM;
use crate::{RoomsCommand, output};

/// A room ID from `!id`, `#alias:server`, or the name of a joined room.
pub async fn resolve(client: &Client, room: &str) -> anyhow::Result<String> {
    if room.starts_with('!') {
        return Ok(room.to_owned());
    }
    if room.starts_with('#') {
        let found: Value = client
            .api
            .get(&["directory", "room", room], &[])
            .await
            .with_context(|| format!("no room has the alias {room}"))?;
        return found["room_id"].as_str().map(str::to_owned).context("the alias lookup returned no room ID");
    }
    let mut matches = Vec::new();
    for id in joined_rooms(client).await? {
        if display_name(client, &id).await == room {
            matches.push(id);
        }
    }
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => bail!("no joined room is called {room:?} (use its ID or alias)"),
        _ => bail!("several joined rooms are called {room:?}: use the ID ({})", matches.join(", ")),
    }
}

pub async fn joined_rooms(client: &Client) -> anyhow::Result<Vec<String>> {
    let rooms: Value = client.api.get(&["joined_rooms"], &[]).await?;
    Ok(rooms["joined_rooms"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect())
}

/// The name people see: `m.room.name`, else the canonical alias, else the other members,
/// else the room ID.
pub async fn display_name(client: &Client, room_id: &str) -> String {
    if let Ok(Some(name)) = client.state_event(room_id, "m.room.name", "").await
        && let Some(name) = name["name"].as_str().filter(|n| !n.is_empty())
    {
        return name.to_owned();
    }
    if let Ok(Some(alias)) = client.state_event(room_id, "m.room.canonical_alias", "").await
        && let Some(alias) = alias["alias"].as_str()
    {
        return alias.to_owned();
    }
    if let Ok(members) = client.api.get::<Value>(&["rooms", room_id, "joined_members"], &[]).await {
        let others: Vec<String> = members["joined"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(user, _)| **user != client.profile.user_id)
            .map(|(user, member)| member["display_name"].as_str().unwrap_or(user).to_owned())
            .take(3)
            .collect();
        if !others.is_empty() {
            return others.join(", ");
        }
    }
    room_id.to_owned()
}

/// The room's `m.room.encryption` content, if it is encrypted. Encryption, once seen, is
/// remembered: a server that later says otherwise does not get plaintext.
pub async fn encryption(client: &Client, room_id: &str) -> anyhow::Result<Option<Value>> {
    let pool = &client.store.pool;
    let remembered: Option<String> = sqlx::query_scalar("SELECT content FROM encrypted_rooms WHERE room_id = $1")
        .bind(room_id)
        .fetch_optional(pool)
        .await?;
    let current = client.state_event(room_id, "m.room.encryption", "").await?;
    match (current, remembered) {
        (Some(content), _) => {
            anyhow::ensure!(
                content["algorithm"] == MEGOLM_ALGORITHM,
                "the room uses an encryption algorithm this client does not support ({})",
                content["algorithm"]
            );
            sqlx::query(
                "INSERT INTO encrypted_rooms (room_id, content) VALUES ($1, $2)
                 ON CONFLICT (room_id) DO UPDATE SET content = excluded.content",
            )
            .bind(room_id)
            .bind(content.to_string())
            .execute(pool)
            .await?;
            Ok(Some(content))
        }
        (None, Some(remembered)) => Ok(Some(serde_json::from_str(&remembered)?)),
        (None, None) => Ok(None),
    }
}

pub async fn run(client: &mut Client, json: bool, command: RoomsCommand) -> anyhow::Result<()> {
    match command {
        RoomsCommand::List => list(client, json).await,
        RoomsCommand::Create { name, public, alias, topic, invite, unencrypted } => {
            let room_id =
                create(client, Some(&name), public, alias.as_deref(), topic.as_deref(), &invite, !unencrypted, false)
                    .await?;
            let shown = json!({ "room_id": room_id, "name": name, "encrypted": !unencrypted, "invited": invite });
            output::emit(json, &shown, |r| {
                let lock = if unencrypted { "unencrypted" } else { "end-to-end encrypted" };
                format!(
                    "Created {} ({lock}): {}",
                    r["name"].as_str().unwrap_or_default(),
                    r["room_id"].as_str().unwrap_or_default()
                )
            })
        }
        RoomsCommand::Name { room, name } => state_field(client, json, &room, "m.room.name", "name", name).await,
        RoomsCommand::Topic { room, topic } => state_field(client, json, &room, "m.room.topic", "topic", topic).await,
    }
}

async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let mut rooms = Vec::new();
    for room_id in joined_rooms(client).await? {
        let members: Value = client.api.get(&["rooms", &room_id, "joined_members"], &[]).await?;
        rooms.push(json!({
            "room_id": room_id,
            "name": display_name(client, &room_id).await,
            "members": members["joined"].as_object().map_or(0, |m| m.len()),
            "encrypted": encryption(client, &room_id).await?.is_some(),
        }));
    }
    output::emit(json, &rooms, |rooms| {
        if rooms.is_empty() {
            return "You have not joined any room.".to_owned();
        }
        rooms
            .iter()
            .map(|r| {
                format!(
                    "{} {:<30} {:>4} members  {}",
                    if r["encrypted"] == true { "🔒" } else { "  " },
                    r["name"].as_str().unwrap_or_default(),
                    r["members"],
                    r["room_id"].as_str().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Creates a room; encrypted rooms get `m.room.encryption` in their initial state, so no
/// message is ever sent in the clear.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    client: &Client,
    name: Option<&str>,
    public: bool,
    alias: Option<&str>,
    topic: Option<&str>,
    invite: &[String],
    encrypted: bool,
    direct: bool,
) -> anyhow::Result<String> {
    let preset = match (public, direct) {
        (true, _) => "public_chat",
        (false, true) => "trusted_private_chat",
        (false, false) => "private_chat",
    };
    let mut body = json!({
        "preset": preset,
        "visibility": if public { "public" } else { "private" },
        "invite": invite,
        "is_direct": direct,
    });
    if let Some(name) = name {
        body["name"] = json!(name);
    }
    if let Some(topic) = topic {
        body["topic"] = json!(topic);
    }
    if let Some(alias) = alias {
        let local = alias.trim_start_matches('#').split(':').next().unwrap_or_default();
        body["room_alias_name"] = json!(local);
    }
    if encrypted {
        body["initial_state"] = json!([{
            "type": "m.room.encryption",
            "state_key": "",
            "content": { "algorithm": MEGOLM_ALGORITHM },
        }]);
    }
    let created: Value = client.api.post(&["createRoom"], &body).await.context("creating the room")?;
    created["room_id"].as_str().map(str::to_owned).context("the homeserver returned no room ID")
}

async fn state_field(
    client: &Client,
    json: bool,
    room: &str,
    event_type: &str,
    field: &str,
    value: Option<String>,
) -> anyhow::Result<()> {
    let room_id = resolve(client, room).await?;
    let value = match value {
        Some(value) => {
            let _: Value = client.api.put(&["rooms", &room_id, "state", event_type], &json!({ field: value })).await?;
            Some(value)
        }
        None => client.state_event(&room_id, event_type, "").await?.and_then(|c| c[field].as_str().map(str::to_owned)),
    };
    let shown = json!({ "room_id": room_id, field: value });
    output::emit(json, &shown, |_| value.clone().unwrap_or_else(|| format!("(no {field})")))
}

pub async fn join(client: &mut Client, json: bool, room: &str) -> anyhow::Result<()> {
    let mut query = Vec::new();
    // A room ID alone does not say which server to join through; its own server is a good bet.
    if room.starts_with('!')
        && let Some((_, server)) = room.split_once(':')
    {
        query.push(("server_name", server.to_owned()));
    }
    let url = client.api.client_url(&["join", room])?;
    let joined: Value =
        client.api.send(reqwest::Method::POST, url, &query, Some(&json!({}))).await.context("joining")?;
    let room_id = joined["room_id"].as_str().context("no room ID in the join response")?.to_owned();
    let shown = json!({ "room_id": room_id, "name": display_name(client, &room_id).await });
    output::emit(json, &shown, |r| {
        format!("Joined {} ({})", r["name"].as_str().unwrap_or_default(), r["room_id"].as_str().unwrap_or_default())
    })
}

pub async fn leave(client: &mut Client, json: bool, room: &str) -> anyhow::Result<()> {
    let room_id = resolve(client, room).await?;
    let _: Value = client.api.post(&["rooms", &room_id, "leave"], &json!({})).await?;
    // Our outbound session is no longer ours to use if we come back.
    client.discard_outbound_session(&room_id).await?;
    output::emit(json, &json!({ "left": room_id }), |_| format!("Left {room_id}"))
}

/// invite, kick, ban, unban.
pub async fn membership(
    client: &mut Client,
    json: bool,
    action: &str,
    room: &str,
    user: &str,
    reason: Option<String>,
) -> anyhow::Result<()> {
    anyhow::ensure!(user.starts_with('@') && user.contains(':'), "{user:?} is not a user ID (like @alice:example.org)");
    let room_id = resolve(client, room).await?;
    let mut body = json!({ "user_id": user });
    if let Some(reason) = reason {
        body["reason"] = json!(reason);
    }
    let _: Value = client.api.post(&["rooms", &room_id, action], &body).await?;
    let past = match action {
        "invite" => "Invited",
        "kick" => "Removed",
        "ban" => "Banned",
        _ => "Unbanned",
    };
    output::emit(json, &json!({ "room_id": room_id, "user_id": user, "action": action }), |_| {
        format!("{past} {user} ({room_id})")
    })
}

pub async fn members(client: &Client, json: bool, room: &str) -> anyhow::Result<()> {
    let room_id = resolve(client, room).await?;
    let response: Value = client.api.get(&["rooms", &room_id, "members"], &[]).await?;
    let members: Vec<Value> = response["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|event| {
            json!({
                "user_id": event["state_key"],
                "membership": event["content"]["membership"],
                "displayname": event["content"]["displayname"],
            })
        })
        .collect();
    output::emit(json, &members, |members| {
        members
            .iter()
            .map(|m| {
                format!(
                    "{:<8} {} {}",
                    m["membership"].as_str().unwrap_or_default(),
                    m["user_id"].as_str().unwrap_or_default(),
                    m["displayname"].as_str().map(|n| format!("({n})")).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}

pub async fn directory(
    client: &Client,
    json: bool,
    search: Option<String>,
    server: Option<String>,
    limit: u32,
) -> anyhow::Result<()> {
    let mut body = json!({ "limit": limit });
    if let Some(search) = search {
        body["filter"] = json!({ "generic_search_term": search });
    }
    let url = client.api.client_url(&["publicRooms"])?;
    let query: Vec<(&str, String)> = server.into_iter().map(|s| ("server", s)).collect();
    let response: Value = client.api.send(reqwest::Method::POST, url, &query, Some(&body)).await?;
    let rooms: Vec<Value> = response["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|room| {
            json!({
                "room_id": room["room_id"],
                "name": room["name"],
                "alias": room["canonical_alias"],
                "topic": room["topic"],
                "members": room["num_joined_members"],
            })
        })
        .collect();
    output::emit(json, &rooms, |rooms| {
        if rooms.is_empty() {
            return "No public rooms found.".to_owned();
        }
        rooms
            .iter()
            .map(|r| {
                format!(
                    "{:<30} {:>4} members  {}  {}",
                    r["name"].as_str().unwrap_or("(unnamed)"),
                    r["members"],
                    r["alias"].as_str().unwrap_or_else(|| r["room_id"].as_str().unwrap_or_default()),
                    r["topic"].as_str().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}
