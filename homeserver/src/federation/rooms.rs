//! Rooms shared with other servers: checking the PDUs they send, filling gaps in a room's DAG
//! from them, and the membership handshakes (join, leave, invite) run on behalf of local users.
//!
//! Placing events and resolving state is the writer's job (`rooms::timeline`); this module
//! talks to other servers and hands the writer only events whose signatures and hashes hold.

use std::collections::{BTreeMap, HashMap};

use ruma_common::canonical_json::redact;
use ruma_common::room_version_rules::RoomVersionRules;
use ruma_common::serde::Base64;
use ruma_common::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, RoomId, RoomVersionId, UserId};
use ruma_events::TimelineEventType;
use serde_json::{Value, json};

use super::FederationError;
use super::e2ee::server_of;
use crate::rooms::pdu::Pdu;
use crate::rooms::timeline::{self, Appended, Incoming};
use crate::rooms::{RoomError, version};
use crate::state::AppState;
use crate::storage::{StateIds, StoredEvent};

/// How many events one `get_missing_events` asks for.
const MISSING_EVENTS_LIMIT: usize = 20;
/// The most missing prev events of one event whose state is fetched (`/state` + `/event`).
const MAX_STATE_FETCHES: usize = 5;
/// The most signing key IDs of one server looked up for one event.
const MAX_KEYS_PER_SERVER: usize = 3;

fn invalid(reason: impl Into<String>) -> FederationError {
    FederationError::Invalid(reason.into())
}

/// A path segment, percent-encoded.
pub fn segment(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>().replace('+', "%20")
}

/// The rules of a room version we support.
pub fn rules_of(version: &str) -> Result<(RoomVersionId, RoomVersionRules), FederationError> {
    let id = RoomVersionId::try_from(version).map_err(|_| invalid(format!("bad room version {version:?}")))?;
    let rules = version::rules(&id).ok_or_else(|| invalid(format!("unsupported room version {version}")))?;
    Ok((id, rules))
}

/// Public keys of `server` for the signatures it put on `object`, valid at `at_ts`.
async fn keys_for(
    state: &AppState,
    object: &CanonicalJsonObject,
    server: &str,
    at_ts: i64,
) -> BTreeMap<String, Base64> {
    let mut keys = BTreeMap::new();
    let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") else { return keys };
    let Some(CanonicalJsonValue::Object(by_key)) = signatures.get(server) else { return keys };
    // A server has a key or two; more key IDs on one event only make us fetch for nothing.
    for key_id in by_key.keys().filter(|id| id.starts_with("ed25519:")).take(MAX_KEYS_PER_SERVER) {
        match super::keys::server_key(state, server, key_id, at_ts).await {
            Ok(public) => {
                if let Ok(public) = Base64::parse(public) {
                    keys.insert(key_id.clone(), public);
                }
            }
            Err(err) => tracing::info!(%server, %key_id, error = %err, "no key to check an event signature"),
        }
    }
    keys
}

/// Checks a PDU another server sent: its format, the signatures the room version requires
/// (keys as of its `origin_server_ts`) and its content hash. An event whose content does not
/// match its hash is used redacted, as the spec says.
pub async fn verify_pdu(state: &AppState, value: &Value, rules: &RoomVersionRules) -> Result<Pdu, FederationError> {
    let object = parse_pdu(value, rules)?;
    let ts = match object.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => i64::from(*ts),
        _ => return Err(invalid("no origin_server_ts")),
    };
    let sender = match object.get("sender") {
        Some(CanonicalJsonValue::String(sender)) => sender.clone(),
        _ => return Err(invalid("no sender")),
    };
    let mut servers = vec![server_of(&sender).to_owned()];
    let is_member = object.get("type") == Some(&CanonicalJsonValue::String("m.room.member".into()));
    if is_member
        && let Some(CanonicalJsonValue::Object(content)) = object.get("content")
        && let Some(CanonicalJsonValue::String(via)) = content.get("join_authorised_via_users_server")
    {
        servers.push(server_of(via).to_owned());
    }
    let mut public_keys = BTreeMap::new();
    for server in servers {
        let keys = keys_for(state, &object, &server, ts).await;
        public_keys.insert(server, keys);
    }
    check_pdu(object, &public_keys, rules)
}

/// The first half of [`verify_pdu`], without I/O: a received PDU as canonical JSON (no floats,
/// integers in range), its `event_id` dropped (room versions 3+ derive it), checked against
/// the room version's event format (size, field types, list lengths).
pub fn parse_pdu(value: &Value, rules: &RoomVersionRules) -> Result<CanonicalJsonObject, FederationError> {
    let mut object: CanonicalJsonObject =
        serde_json::from_value(value.clone()).map_err(|e| invalid(format!("not a PDU: {e}")))?;
    object.remove("event_id");
    ruma_state_res::check_pdu_format(&object, &rules.event_format).map_err(invalid)?;
    Ok(object)
}

/// The second half of [`verify_pdu`], without I/O: the signatures of the servers the room
/// version requires, checked with `public_keys` (what we know of those servers' keys), then
/// the content hash. An event whose content does not match its hash comes back redacted.
pub fn check_pdu(
    object: CanonicalJsonObject,
    public_keys: &ruma_signatures::PublicKeyMap,
    rules: &RoomVersionRules,
) -> Result<Pdu, FederationError> {
    let verified = ruma_signatures::verify_event(public_keys, &object, rules)
        .map_err(|e| invalid(format!("bad event signature: {e}")))?;
    let pdu = Pdu::from_received(object, rules).map_err(|e| invalid(e.to_string()))?;
    match verified {
        ruma_signatures::Verified::All => Ok(pdu),
        ruma_signatures::Verified::Signatures => {
            tracing::info!(event_id = %pdu.event_id, "an event's content does not match its hash: redacted");
            pdu.redacted(rules).map_err(|e| invalid(e.to_string()))
        }
    }
}

/// Checks that `server` signed `object` (an event signed by several servers: invites).
async fn check_signed_by(
    state: &AppState,
    object: &CanonicalJsonObject,
    server: &str,
    rules: &RoomVersionRules,
) -> Result<(), FederationError> {
    let ts = match object.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => i64::from(*ts),
        _ => return Err(invalid("no origin_server_ts")),
    };
    let keys = keys_for(state, object, server, ts).await;
    if keys.is_empty() {
        return Err(invalid(format!("{server} did not sign the event")));
    }
    // Event signatures cover the redacted event; only `server`'s are checked here.
    let mut redacted = redact(object.clone(), &rules.redaction, None).map_err(|e| invalid(e.to_string()))?;
    let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") else {
        return Err(invalid("no signatures"));
    };
    let only = signatures.get(server).cloned().ok_or_else(|| invalid(format!("{server} did not sign the event")))?;
    redacted.insert("signatures".into(), CanonicalJsonValue::Object(BTreeMap::from([(server.to_owned(), only)])));
    ruma_signatures::verify_json(&BTreeMap::from([(server.to_owned(), keys)]), &redacted)
        .map_err(|e| invalid(format!("bad signature by {server}: {e}")))
}

/// The events' JSON as other servers get it.
pub fn pdu_values(events: &[StoredEvent]) -> Vec<Value> {
    events.iter().filter_map(|e| serde_json::from_str(&e.json).ok()).collect()
}

/// The full auth chain of the given events (not including them), as stored.
pub async fn auth_chain(state: &AppState, of: &[StoredEvent]) -> Result<Vec<StoredEvent>, FederationError> {
    let mut seen: std::collections::HashSet<String> = of.iter().map(|e| e.event_id.clone()).collect();
    let mut chain = Vec::new();
    let mut frontier: Vec<StoredEvent> = of.to_vec();
    while !frontier.is_empty() {
        let mut wanted = Vec::new();
        for event in &frontier {
            let value: Value = serde_json::from_str(&event.json).unwrap_or_default();
            for id in value["auth_events"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if seen.insert(id.to_owned()) {
                    wanted.push(id.to_owned());
                }
            }
        }
        frontier = state.storage.events(&wanted).await?;
        chain.extend(frontier.iter().cloned());
    }
    Ok(chain)
}

/// The state of a room before one of its timeline events.
pub async fn state_before(state: &AppState, event: &StoredEvent) -> Result<StateIds, FederationError> {
    if let Some(group) = state.storage.state_before_group(&event.event_id).await? {
        return Ok(state.storage.state_at_group(group).await?);
    }
    // Rows from before the state before an event was recorded: the room was linear here.
    let mut after = state.storage.state_at_group(event.state_group).await?;
    let value: Value = serde_json::from_str(&event.json).unwrap_or_default();
    if let (Some(kind), Some(key)) = (value["type"].as_str(), value["state_key"].as_str()) {
        let prev = value["prev_events"][0].as_str().map(str::to_owned);
        match prev {
            Some(prev) => match state.storage.event(&prev).await? {
                Some(prev) => after = state.storage.state_at_group(prev.state_group).await?,
                None => {
                    after.remove(&(kind.to_owned(), key.to_owned()));
                }
            },
            None => after.clear(),
        }
    }
    Ok(after)
}

/// Applies PDUs a server sent in a transaction; answers per event as the spec's `pdus` map.
/// A failure of ours (database, writer stopping) fails the whole transaction instead, so that
/// the sender retries it rather than drop events it would think we refused.
pub async fn receive_pdus(
    state: &AppState,
    origin: &str,
    pdus: &[Value],
) -> Result<serde_json::Map<String, Value>, FederationError> {
    let mut results = serde_json::Map::new();
    for value in pdus {
        let (event_id, outcome) = match receive_one(state, origin, value).await {
            (_, Err(Failure::Ours(err))) => return Err(err),
            (event_id, Err(Failure::Refused(reason))) => (event_id, Err(reason)),
            (event_id, Ok(())) => (event_id, Ok(())),
        };
        let Some(event_id) = event_id else { continue };
        let answer = match outcome {
            Ok(()) => json!({}),
            Err(reason) => {
                tracing::info!(%origin, %event_id, %reason, "refused a PDU");
                json!({ "error": reason })
            }
        };
        results.insert(event_id.to_string(), answer);
    }
    Ok(results)
}

/// Why a PDU was not applied.
enum Failure {
    /// The event (or its sender) is at fault: answered per event.
    Refused(String),
    /// We failed: the transaction must be retried.
    Ours(FederationError),
}

impl From<FederationError> for Failure {
    fn from(err: FederationError) -> Self {
        match err {
            FederationError::Storage(_) | FederationError::Room(RoomError::Storage(_)) => Self::Ours(err),
            other => Self::Refused(other.to_string()),
        }
    }
}

async fn receive_one(state: &AppState, origin: &str, value: &Value) -> (Option<OwnedEventId>, Result<(), Failure>) {
    let refused = |reason: &str| Failure::Refused(reason.to_owned());
    let Some(room_id) = value["room_id"].as_str() else { return (None, Err(refused("no room_id"))) };
    let room = match state.storage.room(room_id).await {
        Ok(Some(room)) => room,
        Ok(None) => return (None, Err(refused("this server is not in that room"))),
        Err(err) => return (None, Err(Failure::Ours(err.into()))),
    };
    let Ok((_, rules)) = rules_of(&room.version) else { return (None, Err(refused("unsupported room version"))) };
    // The ID, for the answer, even for an event that fails its checks. As in `parse_pdu`,
    // without any `event_id` field: the ID is the reference hash, which would cover the field.
    let event_id = serde_json::from_value::<CanonicalJsonObject>(value.clone())
        .ok()
        .and_then(|mut object| {
            object.remove("event_id");
            Pdu::from_received(object, &rules).ok()
        })
        .map(|p| p.event_id);
    let outcome = async {
        if !state.storage.is_resident(room_id, &state.config.server_name).await.map_err(FederationError::from)? {
            return Err(refused("this server is not in that room"));
        }
        // The sender's server must have signed it (checked here), but another server may pass
        // it on: a resident server forwards the joins it accepted through `send_join`.
        let pdu = verify_pdu(state, value, &rules).await.map_err(|e| refused(&e.to_string()))?;
        receive_event(state, origin, pdu, &rules).await.map(|_| ()).map_err(Failure::from)
    }
    .await;
    (event_id, outcome)
}

/// Hands an event to the writer; when it refers to events we lack, asks `origin` for the
/// events between (`get_missing_events`), then, for what is still missing, the state at them.
pub async fn receive_event(
    state: &AppState,
    origin: &str,
    pdu: Pdu,
    rules: &RoomVersionRules,
) -> Result<Appended, FederationError> {
    match submit(state, pdu.clone(), false, Vec::new(), HashMap::new()).await {
        Err(FederationError::Room(RoomError::MissingEvents(missing)))
            if missing.iter().any(|id| pdu.prev_events.contains(id)) =>
        {
            // The events between are placed if they can be; what they lack is not fetched for
            // each of them (bounded work per event), only for the event itself below.
            for earlier in missing_events(state, origin, &pdu, rules).await? {
                if let Err(err) = submit(state, earlier, false, Vec::new(), HashMap::new()).await {
                    tracing::info!(%origin, error = %err, "an earlier event could not be placed");
                }
            }
            receive_with_state(state, origin, pdu, rules).await
        }
        Err(FederationError::Room(RoomError::MissingEvents(_))) => receive_with_state(state, origin, pdu, rules).await,
        other => other,
    }
}

async fn submit(
    state: &AppState,
    pdu: Pdu,
    forward: bool,
    outliers: Vec<Pdu>,
    prev_states: HashMap<OwnedEventId, StateIds>,
) -> Result<Appended, FederationError> {
    let appended = timeline::receive(state, Incoming::Event { pdu, forward, outliers, prev_states }).await?;
    if !appended.replayed && !appended.soft_failed {
        state.notify(state.storage.max_stream_ordering().await?);
    }
    Ok(appended)
}

/// The events between our forward extremities and `pdu`, oldest first.
async fn missing_events(
    state: &AppState,
    origin: &str,
    pdu: &Pdu,
    rules: &RoomVersionRules,
) -> Result<Vec<Pdu>, FederationError> {
    let earliest: Vec<String> =
        state.storage.extremities(pdu.room_id.as_str()).await?.into_iter().map(|(id, _)| id).collect();
    let body = json!({
        "earliest_events": earliest,
        "latest_events": [pdu.event_id],
        "limit": MISSING_EVENTS_LIMIT,
        "min_depth": 0,
    });
    let path = format!("/_matrix/federation/v1/get_missing_events/{}", segment(pdu.room_id.as_str()));
    let answer = state.federation()?.post(origin, &path, &body).await?;
    let mut events = Vec::new();
    for value in answer["events"].as_array().into_iter().flatten().take(MISSING_EVENTS_LIMIT) {
        match verify_pdu(state, value, rules).await {
            Ok(event) if event.room_id == pdu.room_id => events.push(event),
            Ok(_) => return Err(invalid("get_missing_events returned an event of another room")),
            Err(err) => tracing::info!(%origin, error = %err, "skipped a missing event"),
        }
    }
    events.sort_by_key(|e| e.depth);
    Ok(events)
}

/// Hands an event to the writer; if it refers to events we lack, fetches its auth chain and
/// the state after each missing prev event from `origin`.
async fn receive_with_state(
    state: &AppState,
    origin: &str,
    pdu: Pdu,
    rules: &RoomVersionRules,
) -> Result<Appended, FederationError> {
    let missing = match submit(state, pdu.clone(), false, Vec::new(), HashMap::new()).await {
        Err(FederationError::Room(RoomError::MissingEvents(missing))) => missing,
        other => return other,
    };
    let client = state.federation()?;
    let room = segment(pdu.room_id.as_str());
    let mut outliers = Vec::new();
    let mut prev_states = HashMap::new();
    if missing.iter().any(|id| pdu.auth_events.contains(id)) {
        let path = format!("/_matrix/federation/v1/event_auth/{room}/{}", segment(pdu.event_id.as_str()));
        let answer = client.get(origin, &path).await?;
        outliers.extend(verified_list(state, &answer["auth_chain"], rules, &pdu.room_id).await?);
    }
    for prev in missing.iter().filter(|id| pdu.prev_events.contains(id)).take(MAX_STATE_FETCHES) {
        let path = format!("/_matrix/federation/v1/state/{room}?event_id={}", segment(prev.as_str()));
        let answer = client.get(origin, &path).await?;
        let state_events = verified_list(state, &answer["pdus"], rules, &pdu.room_id).await?;
        outliers.extend(verified_list(state, &answer["auth_chain"], rules, &pdu.room_id).await?);
        let path = format!("/_matrix/federation/v1/event/{}", segment(prev.as_str()));
        let answer = client.get(origin, &path).await?;
        let prev_event = verified_list(state, &answer["pdus"], rules, &pdu.room_id)
            .await?
            .into_iter()
            .find(|e| &e.event_id == prev)
            .ok_or_else(|| invalid(format!("{origin} did not send {prev}")))?;
        let mut after: StateIds = state_events
            .iter()
            .filter_map(|e| Some(((e.kind.to_string(), e.state_key.clone()?), e.event_id.to_string())))
            .collect();
        if let Some(key) = &prev_event.state_key {
            after.insert((prev_event.kind.to_string(), key.clone()), prev_event.event_id.to_string());
        }
        outliers.extend(state_events);
        outliers.push(prev_event);
        prev_states.insert(prev.clone(), after);
    }
    submit(state, pdu, false, outliers, prev_states).await
}

/// Events of one answer (`/state`, `send_join`, `event_auth`) checked at once, at most.
const CONCURRENT_CHECKS: usize = 16;

/// Verifies a list of PDUs of one room; events that fail are left out.
async fn verified_list(
    state: &AppState,
    values: &Value,
    rules: &RoomVersionRules,
    room_id: &RoomId,
) -> Result<Vec<Pdu>, FederationError> {
    // Checked several at once: each may wait on a key fetch (one per server at a time), and a
    // room's state names many servers.
    let values: Vec<&Value> = values.as_array().into_iter().flatten().collect();
    let mut checked = Vec::with_capacity(values.len());
    for chunk in values.chunks(CONCURRENT_CHECKS) {
        checked.extend(futures_util::future::join_all(chunk.iter().map(|v| verify_pdu(state, v, rules))).await);
    }
    let mut events = Vec::new();
    for outcome in checked {
        match outcome {
            Ok(pdu) if pdu.room_id == room_id => events.push(pdu),
            Ok(pdu) => return Err(invalid(format!("{} is in another room", pdu.event_id))),
            Err(err) => tracing::info!(error = %err, "left out an event that failed its checks"),
        }
    }
    Ok(events)
}

/// A member event template from `make_join` / `make_leave`, checked and completed for `user`,
/// then hashed and signed by us.
fn seal_template(
    state: &AppState,
    answer: &Value,
    room_id: &RoomId,
    user: &UserId,
    membership: &str,
    extra: &serde_json::Map<String, Value>,
) -> Result<(RoomVersionId, RoomVersionRules, Pdu), FederationError> {
    let (version, rules) = rules_of(answer["room_version"].as_str().unwrap_or("1"))?;
    let template = &answer["event"];
    let matches = template["type"] == "m.room.member"
        && template["state_key"] == user.as_str()
        && template["sender"] == user.as_str()
        && template["room_id"] == room_id.as_str()
        && template["content"]["membership"] == membership;
    if !matches {
        return Err(invalid(format!("the {membership} template does not match the request")));
    }
    let mut event = template.clone();
    for field in ["signatures", "hashes", "event_id", "unsigned"] {
        event.as_object_mut().map(|e| e.remove(field));
    }
    event["origin_server_ts"] = crate::storage::now_ms().into();
    event["origin"] = state.config.server_name.clone().into();
    for (key, value) in extra {
        event["content"][key] = value.clone();
    }
    let object: CanonicalJsonObject = serde_json::from_value(event).map_err(|e| invalid(e.to_string()))?;
    let pdu = Pdu::seal(object, &state.config.server_name, &rules, &state.signing_key, Some(room_id))
        .map_err(|e| invalid(e.to_string()))?;
    Ok((version, rules, pdu))
}

/// Joins local user `user` to a room of other servers through the first of `servers` that
/// agrees: `make_join`, then `send_join` (v2), then the state it returns becomes ours.
pub async fn join(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
    servers: &[String],
    extra: serde_json::Map<String, Value>,
) -> Result<Appended, FederationError> {
    let client = state.federation()?;
    let versions: Vec<String> = version::SUPPORTED.iter().map(|v| format!("ver={v}")).collect();
    let mut last_error = FederationError::Room(RoomError::NotFound);
    for server in servers.iter().filter(|s| **s != state.config.server_name) {
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?{}",
            segment(room_id.as_str()),
            segment(user.as_str()),
            versions.join("&")
        );
        let answer = match client.get(server, &path).await {
            Ok(answer) => answer,
            Err(err) => {
                tracing::info!(%server, error = %err, "make_join failed");
                last_error = err;
                continue;
            }
        };
        let (version, rules, join) = match seal_template(state, &answer, room_id, user, "join", &extra) {
            Ok(sealed) => sealed,
            Err(err) => {
                tracing::info!(%server, error = %err, "unusable make_join answer");
                last_error = err;
                continue;
            }
        };
        let path = format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            segment(room_id.as_str()),
            segment(join.event_id.as_str())
        );
        let body = serde_json::to_value(&join.json).map_err(|e| invalid(e.to_string()))?;
        let answer = match client.put(server, &path, &body).await {
            Ok(answer) => answer,
            Err(err) => {
                tracing::info!(%server, error = %err, "send_join failed");
                last_error = err;
                continue;
            }
        };
        let checked = async {
            // A resident server may add its signature (restricted joins): the ID stays the same.
            let join = match answer.get("event") {
                Some(event) if event.is_object() => {
                    let signed = verify_pdu(state, event, &rules).await?;
                    if signed.event_id != join.event_id {
                        return Err(invalid("send_join returned a different event"));
                    }
                    signed
                }
                _ => join,
            };
            let auth_chain = verified_list(state, &answer["auth_chain"], &rules, room_id).await?;
            let room_state = verified_list(state, &answer["state"], &rules, room_id).await?;
            check_join_state(&rules, &join, &room_state, &auth_chain)?;
            Ok((join, room_state, auth_chain))
        };
        let (join, room_state, auth_chain) = match checked.await {
            Ok(checked) => checked,
            Err(err) => {
                tracing::info!(%server, error = %err, "unusable send_join answer");
                last_error = err;
                continue;
            }
        };
        let incoming = Incoming::Joined { version, join, state: room_state, auth_chain };
        let appended = timeline::receive(state, incoming).await?;
        state.notify(state.storage.max_stream_ordering().await?);
        return Ok(appended);
    }
    Err(last_error)
}

/// The state `send_join` returned must hold together: a create event of this room, and every
/// state event (and the join) allowed by its own auth events, all of which must be present.
fn check_join_state(
    rules: &RoomVersionRules,
    join: &Pdu,
    room_state: &[Pdu],
    auth_chain: &[Pdu],
) -> Result<(), FederationError> {
    let by_id: HashMap<&OwnedEventId, &Pdu> = auth_chain.iter().chain(room_state).map(|p| (&p.event_id, p)).collect();
    let create = room_state
        .iter()
        .find(|p| p.kind == TimelineEventType::RoomCreate && p.state_key.as_deref() == Some(""))
        .ok_or_else(|| invalid("the room state has no create event"))?;
    if rules.authorization.room_create_event_id_as_room_id
        && create.event_id.as_str()[1..] != join.room_id.as_str()[1..]
    {
        return Err(invalid("the create event is not this room's"));
    }
    for event in room_state.iter().chain([join]) {
        let fetch = |id: &ruma_common::EventId| by_id.get(&id.to_owned()).map(|p| (*p).clone());
        ruma_state_res::check_state_independent_auth_rules(&rules.authorization, event, fetch)
            .map_err(|e| invalid(format!("{} fails its auth rules: {e}", event.event_id)))?;
        // From room version 12 the create event is implied by the room ID, not listed.
        let implied = rules.authorization.room_create_event_id_as_room_id.then_some(&create.event_id);
        let auth: HashMap<(String, String), &Pdu> = event
            .auth_events
            .iter()
            .chain(implied)
            .filter_map(|id| by_id.get(id))
            .filter_map(|p| Some(((p.kind.to_string(), p.state_key.clone()?), *p)))
            .collect();
        let fetch_state = |kind: &ruma_events::StateEventType, key: &str| {
            auth.get(&(kind.to_string(), key.to_owned())).map(|p| (*p).clone())
        };
        ruma_state_res::check_state_dependent_auth_rules(&rules.authorization, event, fetch_state)
            .map_err(|e| invalid(format!("{} fails its auth rules: {e}", event.event_id)))?;
    }
    Ok(())
}

/// Leaves (or rejects an invite to) a room this server is not in, through `servers`; when
/// none answers, the leave is recorded here only, so the invite goes away all the same.
pub async fn leave(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
    servers: &[String],
    extra: serde_json::Map<String, Value>,
) -> Result<Appended, FederationError> {
    let client = state.federation()?;
    for server in servers.iter().filter(|s| **s != state.config.server_name) {
        let path =
            format!("/_matrix/federation/v1/make_leave/{}/{}", segment(room_id.as_str()), segment(user.as_str()));
        let answer = match client.get(server, &path).await {
            Ok(answer) => answer,
            Err(err) => {
                tracing::info!(%server, error = %err, "make_leave failed");
                continue;
            }
        };
        let (version, _, leave) = seal_template(state, &answer, room_id, user, "leave", &extra)?;
        let path = format!(
            "/_matrix/federation/v2/send_leave/{}/{}",
            segment(room_id.as_str()),
            segment(leave.event_id.as_str())
        );
        let body = serde_json::to_value(&leave.json).map_err(|e| invalid(e.to_string()))?;
        if let Err(err) = client.put(server, &path, &body).await {
            tracing::info!(%server, error = %err, "send_leave failed");
            continue;
        }
        return record_membership(state, version, leave, None).await;
    }
    local_leave(state, room_id, user, extra).await
}

/// A leave known only here: after the user's latest member event (the invite), signed by us.
async fn local_leave(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
    extra: serde_json::Map<String, Value>,
) -> Result<Appended, FederationError> {
    let room = state.storage.room(room_id.as_str()).await?.ok_or(FederationError::Room(RoomError::NotFound))?;
    let (version, rules) = rules_of(&room.version)?;
    let (_, member_id) = state
        .storage
        .membership(room_id.as_str(), user.as_str())
        .await?
        .ok_or(FederationError::Room(RoomError::NotFound))?;
    let member = state.storage.event(&member_id).await?.ok_or(FederationError::Room(RoomError::NotFound))?;
    let depth = serde_json::from_str::<Value>(&member.json).unwrap_or_default()["depth"].as_i64().unwrap_or(0);
    let depth = (depth + 1).min((1 << 53) - 1);
    let mut content = serde_json::Map::from_iter([("membership".to_owned(), json!("leave"))]);
    content.extend(extra);
    let event = json!({
        "type": "m.room.member",
        "state_key": user.as_str(),
        "sender": user.as_str(),
        "room_id": room_id.as_str(),
        "content": content,
        "origin_server_ts": crate::storage::now_ms(),
        "depth": depth,
        "prev_events": [member_id],
        "auth_events": [member_id],
    });
    let object: CanonicalJsonObject = serde_json::from_value(event).map_err(|e| invalid(e.to_string()))?;
    let pdu = Pdu::seal(object, &state.config.server_name, &rules, &state.signing_key, Some(room_id))
        .map_err(|e| invalid(e.to_string()))?;
    record_membership(state, version, pdu, None).await
}

async fn record_membership(
    state: &AppState,
    version: RoomVersionId,
    pdu: Pdu,
    stripped: Option<String>,
) -> Result<Appended, FederationError> {
    let appended = timeline::receive(state, Incoming::Membership { version, pdu, stripped }).await?;
    state.notify(state.storage.max_stream_ordering().await?);
    Ok(appended)
}

/// Invites a user of another server to one of our rooms: their server signs the invite
/// (`invite` v2), then it is appended and sent to the room's other servers.
pub async fn invite(
    state: &AppState,
    room_id: &RoomId,
    sender: &UserId,
    template: crate::rooms::pdu::PduTemplate,
) -> Result<Appended, FederationError> {
    let client = state.federation()?;
    let room = state.storage.room(room_id.as_str()).await?.ok_or(FederationError::Room(RoomError::NotFound))?;
    let (version, rules) = rules_of(&room.version)?;
    let pdu = timeline::build(state, room_id, sender, template).await?;
    let target = pdu.state_key.clone().unwrap_or_default();
    let server = server_of(&target).to_owned();
    let body = json!({
        "room_version": version.as_str(),
        "event": pdu.json,
        "invite_room_state": stripped_state(state, room_id, sender.as_str()).await?,
    });
    let path =
        format!("/_matrix/federation/v2/invite/{}/{}", segment(room_id.as_str()), segment(pdu.event_id.as_str()));
    let answer = client.put(&server, &path, &body).await?;
    let mut signed: CanonicalJsonObject =
        serde_json::from_value(answer["event"].clone()).map_err(|_| invalid("the invite answer has no event"))?;
    // As in `parse_pdu`: an `event_id` field is only a claim, and not what either server signed.
    signed.remove("event_id");
    check_signed_by(state, &signed, &server, &rules).await?;
    let signed = Pdu::from_received(signed, &rules).map_err(|e| invalid(e.to_string()))?;
    if signed.event_id != pdu.event_id {
        return Err(invalid(format!("{server} changed the invite")));
    }
    submit(state, signed, true, Vec::new(), HashMap::new()).await
}

/// The stripped state an invitee is shown: create, join rules, name, avatar, alias,
/// encryption, topic, and the inviter's member event.
pub async fn stripped_state(state: &AppState, room_id: &RoomId, inviter: &str) -> Result<Vec<Value>, FederationError> {
    let current = state.storage.current_state_ids(room_id.as_str()).await?;
    let mut ids: Vec<String> = current
        .iter()
        .filter(|((kind, _), _)| crate::rooms::STRIPPED_STATE_TYPES.contains(&kind.as_str()))
        .map(|(_, id)| id.clone())
        .collect();
    ids.extend(current.get(&("m.room.member".to_owned(), inviter.to_owned())).cloned());
    let mut stripped = Vec::new();
    for stored in state.storage.events(&ids).await? {
        let pdu = Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json).map_err(RoomError::from)?;
        stripped.push(pdu.to_stripped_state());
    }
    Ok(stripped)
}

/// An invite from another server for one of our users: checked, signed by us, and (when we
/// are not in the room) kept with its stripped state for the invitee's sync.
pub async fn receive_invite(
    state: &AppState,
    origin: &str,
    room_id: &str,
    event_id: &str,
    body: &Value,
) -> Result<Value, FederationError> {
    let (version, rules) = rules_of(body["room_version"].as_str().unwrap_or("1"))?;
    let pdu = verify_pdu(state, &body["event"], &rules).await?;
    let target = pdu.state_key.clone().unwrap_or_default();
    let valid = pdu.kind == TimelineEventType::RoomMember
        && pdu.content_str("membership").as_deref() == Some("invite")
        && pdu.room_id.as_str() == room_id
        && pdu.event_id.as_str() == event_id
        && server_of(pdu.sender.as_str()) == origin;
    if !valid {
        return Err(invalid("not an invite from the sending server for this room and event"));
    }
    if server_of(&target) != state.config.server_name || !state.storage.user_exists(&target).await? {
        return Err(FederationError::Room(RoomError::NotFound));
    }
    let mut object = pdu.json.clone();
    ruma_signatures::hash_and_sign_event(
        &state.config.server_name,
        state.signing_key.ruma_key_pair(),
        &mut object,
        &rules.redaction,
    )
    .map_err(|e| invalid(e.to_string()))?;
    let signed = Pdu::from_received(object, &rules).map_err(|e| invalid(e.to_string()))?;
    if !state.storage.is_resident(room_id, &state.config.server_name).await? {
        let mut stripped: Vec<Value> = body["invite_room_state"].as_array().cloned().unwrap_or_default();
        stripped.retain(|e| e.is_object());
        stripped.truncate(50);
        record_membership(state, version, signed.clone(), Some(Value::Array(stripped).to_string())).await?;
    }
    serde_json::to_value(&signed.json).map_err(|e| invalid(e.to_string()))
}
