//! The Server-Server API's room endpoints: membership handshakes (`make_join`/`send_join`,
//! `make_leave`/`send_leave`, `invite`) and the reads other servers fill gaps with (`event`,
//! `state`, `state_ids`, `event_auth`, `get_missing_events`, `backfill`).

use std::collections::{HashSet, VecDeque};

use poem::http::StatusCode;
use poem::web::{Data, Json, Path, Query};
use poem::{Request, handler};
use ruma_common::{RoomId, UserId};
use ruma_events::TimelineEventType;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Origin;
use crate::api::error::{ApiResult, ErrCode, MatrixError};
use crate::federation::FederationError;
use crate::federation::e2ee::server_of;
use crate::federation::rooms::{self as fed_rooms, pdu_values};
use crate::rooms::create::member_template;
use crate::rooms::timeline::{self, Incoming};
use crate::state::AppState;
use crate::storage::{StoredEvent, now_ms};

/// Errors about what another server sent: its fault (4xx), not a gateway failure.
fn refused(err: FederationError) -> MatrixError {
    match err {
        FederationError::Invalid(reason) => MatrixError::bad_json(reason),
        other => other.into(),
    }
}

/// The room, if the requesting server may see it: one of its users is joined (or, for
/// `joining`, the room simply exists and we are in it).
async fn room_for(state: &AppState, room_id: &str, origin: &str) -> ApiResult<crate::storage::Room> {
    let room = state.storage.room(room_id).await?.ok_or_else(|| MatrixError::not_found("Unknown room"))?;
    if !state.storage.is_resident(room_id, &state.config.server_name).await? {
        return Err(MatrixError::not_found("This server is not in that room"));
    }
    if !state.storage.is_resident(room_id, origin).await? {
        return Err(MatrixError::forbidden("Your server is not in this room"));
    }
    Ok(room)
}

/// Whether `origin` may see a timeline event, by the room's history visibility at it: history
/// that is `shared` or `world_readable` once the server is in the room (checked before), `joined`
/// and `invited` history only if one of its users was joined (or, for `invited`, invited) then.
/// Outliers (state and auth events) are seen, as auth chains need them.
async fn server_may_see(state: &AppState, origin: &str, event: &StoredEvent) -> ApiResult<bool> {
    if event.stream_ordering <= 0 {
        return Ok(true);
    }
    let before = fed_rooms::state_before(state, event).await?;
    let visibility_id = before.get(&("m.room.history_visibility".to_owned(), String::new())).cloned();
    let visibility = match visibility_id {
        Some(id) => state.storage.events(&[id]).await?.first().and_then(|e| {
            let value: Value = serde_json::from_str(&e.json).ok()?;
            value["content"]["history_visibility"].as_str().map(str::to_owned)
        }),
        None => None,
    };
    let visibility = visibility.unwrap_or_else(|| "shared".to_owned());
    if visibility == "shared" || visibility == "world_readable" {
        return Ok(true);
    }
    let members: Vec<String> = before
        .iter()
        .filter(|((kind, key), _)| kind == "m.room.member" && server_of(key) == origin)
        .map(|(_, id)| id.clone())
        .collect();
    for member in state.storage.events(&members).await? {
        let value: Value = serde_json::from_str(&member.json).unwrap_or_default();
        match value["content"]["membership"].as_str() {
            Some("join") => return Ok(true),
            Some("invite") if visibility == "invited" => return Ok(true),
            _ => {}
        }
    }
    Ok(false)
}

/// The events as `origin` may have them: those it may not see are redacted.
async fn visible_values(
    state: &AppState,
    origin: &str,
    version: &str,
    events: &[StoredEvent],
) -> ApiResult<Vec<Value>> {
    let (_, rules) = fed_rooms::rules_of(version).map_err(refused)?;
    let mut values = Vec::with_capacity(events.len());
    for event in events {
        if server_may_see(state, origin, event).await? {
            values.extend(pdu_values(std::slice::from_ref(event)));
        } else {
            let pdu = crate::rooms::pdu::Pdu::from_json(&event.event_id, &event.room_id, &event.json)
                .and_then(|p| p.redacted(&rules))
                .map_err(crate::rooms::RoomError::from)?;
            values.push(serde_json::to_value(&pdu.json).map_err(|_| MatrixError::internal())?);
        }
    }
    Ok(values)
}

fn parse_room(room_id: &str) -> ApiResult<&RoomId> {
    <&RoomId>::try_from(room_id).map_err(|_| MatrixError::invalid_param("Invalid room ID"))
}

/// A membership template (`make_join` / `make_leave`) built and authorized as if sent now.
async fn make_membership(
    state: &AppState,
    req: &Request,
    room_id: &str,
    user_id: &str,
    origin: &str,
    membership: &str,
) -> ApiResult<Json<Value>> {
    let user = UserId::parse(user_id).map_err(|_| MatrixError::invalid_param("Invalid user ID"))?;
    if server_of(user.as_str()) != origin {
        return Err(MatrixError::forbidden("That user is not on your server"));
    }
    let room_id = parse_room(room_id)?;
    let room = state.storage.room(room_id.as_str()).await?.ok_or_else(|| MatrixError::not_found("Unknown room"))?;
    if !state.storage.is_resident(room_id.as_str(), &state.config.server_name).await? {
        return Err(MatrixError::not_found("This server is not in that room"));
    }
    if membership == "join" {
        let supported: Vec<String> = url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .filter(|(key, _)| key == "ver")
            .map(|(_, value)| value.into_owned())
            .collect();
        let supported = if supported.is_empty() { vec!["1".to_owned()] } else { supported };
        if !supported.contains(&room.version) {
            return Err(MatrixError::incompatible_room_version(&room.version));
        }
    }
    let template = member_template(&user, membership, &Default::default(), false);
    let pdu = timeline::build(state, room_id, &user, template).await?;
    let mut event = serde_json::to_value(&pdu.json).map_err(|_| MatrixError::internal())?;
    if let Some(event) = event.as_object_mut() {
        event.remove("signatures");
        event.remove("hashes");
    }
    Ok(Json(json!({ "room_version": room.version, "event": event })))
}

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`
#[handler]
pub async fn make_join(
    state: Data<&AppState>,
    origin: Data<&Origin>,
    req: &Request,
    Path((room_id, user_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    make_membership(&state, req, &room_id, &user_id, &origin.0.0, "join").await
}

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`
#[handler]
pub async fn make_leave(
    state: Data<&AppState>,
    origin: Data<&Origin>,
    req: &Request,
    Path((room_id, user_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    make_membership(&state, req, &room_id, &user_id, &origin.0.0, "leave").await
}

/// Checks a signed membership event a server sends back (`send_join` / `send_leave`) and
/// appends it; the room's other servers get it from us.
async fn send_membership(
    state: &AppState,
    origin: &str,
    room_id: &str,
    event_id: &str,
    body: &Value,
    membership: &str,
) -> ApiResult<(crate::rooms::pdu::Pdu, StoredEvent)> {
    let room = state.storage.room(room_id).await?.ok_or_else(|| MatrixError::not_found("Unknown room"))?;
    if !state.storage.is_resident(room_id, &state.config.server_name).await? {
        return Err(MatrixError::not_found("This server is not in that room"));
    }
    let (_, rules) = fed_rooms::rules_of(&room.version).map_err(refused)?;
    let pdu = fed_rooms::verify_pdu(state, body, &rules).await.map_err(refused)?;
    let valid = pdu.kind == TimelineEventType::RoomMember
        && pdu.content_str("membership").as_deref() == Some(membership)
        && pdu.state_key.as_deref() == Some(pdu.sender.as_str())
        && pdu.room_id.as_str() == room_id
        && pdu.event_id.as_str() == event_id
        && server_of(pdu.sender.as_str()) == origin;
    if !valid {
        return Err(MatrixError::bad_json(format!(
            "Not a {membership} of a user of your server for this room and event"
        )));
    }
    let incoming =
        Incoming::Event { pdu: pdu.clone(), forward: true, outliers: Vec::new(), prev_states: Default::default() };
    let appended = timeline::receive(state, incoming).await?;
    if appended.soft_failed {
        return Err(MatrixError::forbidden("The room's current state does not allow this"));
    }
    state.notify(state.storage.max_stream_ordering().await?);
    let stored = state.storage.event(event_id).await?.ok_or_else(MatrixError::internal)?;
    Ok((appended.pdu, stored))
}

#[derive(Deserialize)]
struct SendJoinQuery {
    omit_members: Option<bool>,
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`: the state before the join and
/// its auth chain; with `omit_members`, without member events (and without auth events that
/// `state` holds already).
#[handler]
pub async fn send_join(
    state: Data<&AppState>,
    origin: Data<&Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
    Query(query): Query<SendJoinQuery>,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    // The servers in the room before the join, as the spec asks.
    let servers = crate::api::client::directory::resident_servers(&state, &room_id).await?;
    let (pdu, stored) = send_membership(&state, &origin.0.0, &room_id, &event_id, &body, "join").await?;
    let before = fed_rooms::state_before(&state, &stored).await?;
    let omit = query.omit_members.unwrap_or(false);
    let ids: Vec<String> =
        before.iter().filter(|((kind, _), _)| !omit || kind != "m.room.member").map(|(_, id)| id.clone()).collect();
    let state_events = state.storage.events(&ids).await?;
    let mut chain_of = state_events.clone();
    chain_of.push(stored);
    let mut auth_chain = fed_rooms::auth_chain(&state, &chain_of).await?;
    if omit {
        let in_state: HashSet<&str> = ids.iter().map(String::as_str).collect();
        auth_chain.retain(|e| !in_state.contains(e.event_id.as_str()));
    }
    Ok(Json(json!({
        "origin": state.config.server_name,
        "state": pdu_values(&state_events),
        "auth_chain": pdu_values(&auth_chain),
        "event": pdu.json,
        "members_omitted": omit,
        "servers_in_room": servers,
    })))
}

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`
#[handler]
pub async fn send_leave(
    state: Data<&AppState>,
    origin: Data<&Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    send_membership(&state, &origin.0.0, &room_id, &event_id, &body, "leave").await?;
    Ok(Json(json!({})))
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`
#[handler]
pub async fn invite(
    state: Data<&AppState>,
    origin: Data<&Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    if let Some(version) = body["room_version"].as_str()
        && fed_rooms::rules_of(version).is_err()
    {
        return Err(MatrixError::incompatible_room_version(version));
    }
    let event = fed_rooms::receive_invite(&state, &origin.0.0, &room_id, &event_id, &body).await.map_err(refused)?;
    Ok(Json(json!({ "event": event })))
}

/// `GET /_matrix/federation/v1/event/{eventId}`
#[handler]
pub async fn get_event(
    state: Data<&AppState>,
    origin: Data<&Origin>,
    Path(event_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let stored = state.storage.event(&event_id).await?.ok_or_else(|| MatrixError::not_found("Unknown event"))?;
    let room = room_for(&state, &stored.room_id, &origin.0.0).await?;
    Ok(Json(json!({
        "origin": state.config.server_name,
        "origin_server_ts": now_ms(),
        "pdus": visible_values(&state, &origin.0.0, &room.version, &[stored]).await?,
    })))
}

#[derive(Deserialize)]
struct AtEvent {
    event_id: String,
}

/// The state before a timeline event of the room, and its auth chain.
async fn state_at(
    state: &AppState,
    origin: &str,
    room_id: &str,
    event_id: &str,
) -> ApiResult<(Vec<StoredEvent>, Vec<StoredEvent>)> {
    room_for(state, room_id, origin).await?;
    let stored = state.storage.event(event_id).await?.ok_or_else(|| MatrixError::not_found("Unknown event"))?;
    if stored.room_id != room_id || stored.stream_ordering <= 0 {
        return Err(MatrixError::not_found("No state known at that event"));
    }
    if !server_may_see(state, origin, &stored).await? {
        return Err(MatrixError::forbidden("Your server may not see the room at that event"));
    }
    let before = fed_rooms::state_before(state, &stored).await?;
    let events = state.storage.events(&before.into_values().collect::<Vec<_>>()).await?;
    let chain = fed_rooms::auth_chain(state, &events).await?;
    Ok((events, chain))
}

/// `GET /_matrix/federation/v1/state/{roomId}`
#[handler]
pub async fn room_state(
    state: Data<&AppState>,
    origin: Data<&Origin>,
    Path(room_id): Path<String>,
    Query(at): Query<AtEvent>,
) -> ApiResult<Json<Value>> {
    let (events, chain) = state_at(&state, &origin.0.0, &room_id, &at.event_id).await?;
    Ok(Json(json!({ "pdus": pdu_values(&events), "auth_chain": pdu_values(&chain) })))
}

/// `GET /_matrix/federation/v1/state_ids/{roomId}`
#[handler]
pub async fn room_state_ids(
    state: Data<&AppState>,
    origin: Data<&Origin>,
    Path(room_id): Path<String>,
    Query(at): Query<AtEvent>,
) -> ApiResult<Json<Value>> {
    let (events, chain) = state_at(&state, &origin.0.0, &room_id, &at.event_id).await?;
    let ids = |events: &[StoredEvent]| events.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>();
    Ok(Json(json!({ "pdu_ids": ids(&events), "auth_chain_ids": ids(&chain) })))
}

/// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`
#[handler]
pub async fn event_auth(
    state: Data<&AppState>,
    origin: Data<&Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    room_for(&state, &room_id, &origin.0.0).await?;
    let stored = state.storage.event(&event_id).await?.ok_or_else(|| MatrixError::not_found("Unknown event"))?;
    if stored.room_id != room_id {
        return Err(MatrixError::not_found("Unknown event"));
    }
    let chain = fed_rooms::auth_chain(&state, &[stored]).await?;
    Ok(Json(json!({ "auth_chain": pdu_values(&chain) })))
}

/// The most events one `get_missing_events` or `backfill` answer carries.
const MAX_EVENTS: usize = 100;

/// The most events a `get_missing_events` or `backfill` walk starts from; more are ignored. A
/// server names its forward extremities, a handful; without a bound, one request could make
/// us look up every ID a 16 MiB body holds.
const MAX_STARTS: usize = 100;

/// Walks `prev_events` back from `from` (breadth first), not past `stop`, collecting at most
/// `limit` events of the room with depth at least `min_depth`.
async fn walk_back(
    state: &AppState,
    room_id: &str,
    from: Vec<String>,
    stop: &HashSet<String>,
    limit: usize,
    min_depth: i64,
) -> ApiResult<Vec<(i64, StoredEvent)>> {
    let mut seen: HashSet<String> = from.iter().cloned().collect();
    let mut queue: VecDeque<String> = from.into();
    let mut found = Vec::new();
    while !queue.is_empty() && found.len() < limit {
        let batch: Vec<String> = queue.drain(..).collect();
        for stored in state.storage.events(&batch).await? {
            if found.len() >= limit {
                break;
            }
            if stored.room_id != room_id {
                continue;
            }
            let value: Value = serde_json::from_str(&stored.json).unwrap_or_default();
            let depth = value["depth"].as_i64().unwrap_or(0);
            if depth < min_depth {
                continue;
            }
            for prev in value["prev_events"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if !stop.contains(prev) && seen.insert(prev.to_owned()) {
                    queue.push_back(prev.to_owned());
                }
            }
            found.push((depth, stored));
        }
    }
    Ok(found)
}

/// `POST /_matrix/federation/v1/get_missing_events/{roomId}`
#[handler]
pub async fn get_missing_events(
    state: Data<&AppState>,
    origin: Data<&Origin>,
    Path(room_id): Path<String>,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    let room = room_for(&state, &room_id, &origin.0.0).await?;
    let list = |field: &str| -> Vec<String> {
        body[field].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
    };
    let earliest: HashSet<String> = list("earliest_events").into_iter().collect();
    let mut latest = list("latest_events");
    latest.truncate(MAX_STARTS);
    let limit = body["limit"].as_u64().map_or(10, |l| l as usize).min(MAX_EVENTS);
    let min_depth = body["min_depth"].as_i64().unwrap_or(0);
    // The latest events are what the asking server has: the answer starts at their prev events.
    let mut starts = Vec::new();
    for stored in state.storage.events(&latest).await? {
        let value: Value = serde_json::from_str(&stored.json).unwrap_or_default();
        starts
            .extend(value["prev_events"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned));
    }
    starts.retain(|id| !earliest.contains(id));
    let mut events = walk_back(&state, &room_id, starts, &earliest, limit, min_depth).await?;
    events.sort_by_key(|(depth, _)| *depth);
    let events: Vec<StoredEvent> = events.into_iter().map(|(_, e)| e).collect();
    Ok(Json(json!({ "events": visible_values(&state, &origin.0.0, &room.version, &events).await? })))
}

/// `GET /_matrix/federation/v1/backfill/{roomId}`
#[handler]
pub async fn backfill(
    state: Data<&AppState>,
    origin: Data<&Origin>,
    req: &Request,
    Path(room_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let room = room_for(&state, &room_id, &origin.0.0).await?;
    let mut from = Vec::new();
    let mut limit = 10;
    for (key, value) in url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*key {
            "v" if from.len() < MAX_STARTS => from.push(value.into_owned()),
            "limit" => limit = value.parse::<usize>().map_err(|_| MatrixError::invalid_param("Invalid limit"))?,
            _ => {}
        }
    }
    if from.is_empty() {
        return Err(MatrixError::new(ErrCode::MissingParam, StatusCode::BAD_REQUEST, "Missing parameter v"));
    }
    let events = walk_back(&state, &room_id, from, &HashSet::new(), limit.min(MAX_EVENTS), 0).await?;
    let events: Vec<StoredEvent> = events.into_iter().map(|(_, e)| e).collect();
    Ok(Json(json!({
        "origin": state.config.server_name,
        "origin_server_ts": now_ms(),
        "pdus": visible_values(&state, &origin.0.0, &room.version, &events).await?,
    })))
}
