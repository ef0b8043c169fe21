//! The append path for events created on this server: select auth events and prev events,
//! build and sign the PDU, check the room version's authorization rules against the current
//! state, then persist it and wake waiting syncs — all under the room write lock.

use std::collections::HashMap;

use ruma_common::{MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, RoomVersionId, UserId};
use ruma_events::{StateEventType, TimelineEventType};

use super::RoomError;
use super::pdu::{Pdu, PduTemplate, Placement};
use super::version;
use crate::state::AppState;
use crate::storage::{NewEvent, RoomWrite, StateIds, TxnKey, now_ms};

/// An event appended to a room.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The event.
    pub pdu: Pdu,
    /// Whether a previous request with the same transaction ID produced it.
    pub replayed: bool,
}

/// Where the event goes.
pub enum Target<'a> {
    /// An existing room.
    Room(&'a RoomId),
    /// A new room: this is its create event (for room versions whose room IDs carry a server
    /// name, the ID to use).
    NewRoom {
        /// The room version.
        version: RoomVersionId,
        /// The room ID, for versions whose IDs are not derived from the create event.
        room_id: Option<&'a RoomId>,
        /// Whether to list the room in the public directory.
        published: bool,
    },
}

/// Appends an event sent by local user `sender`. With `txn`, a repeated transaction returns the
/// event of the first attempt instead of sending again.
pub async fn append(
    state: &AppState,
    target: Target<'_>,
    sender: &UserId,
    template: PduTemplate,
    txn: Option<TxnKey<'_>>,
) -> Result<Appended, RoomError> {
    let mut write = state.storage.begin_room_write().await?;
    if let Some(txn) = txn
        && let Some(event_id) = write.txn_event(txn).await?
    {
        let stored = write.events(&[event_id.as_str()]).await?.pop().ok_or(RoomError::NotFound)?;
        let pdu = Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json)?;
        return Ok(Appended { pdu, replayed: true });
    }

    let now = MilliSecondsSinceUnixEpoch::now();
    let (pdu, rules) = match target {
        Target::NewRoom { version, room_id, published } => {
            let rules = version::rules(&version).ok_or_else(|| RoomError::UnsupportedVersion(version.to_string()))?;
            let placement = Placement { room_id, rules: &rules, prev_events: vec![], auth_events: vec![], depth: 1 };
            let pdu = template.build(sender, placement, now, &state.signing_key)?;
            write.create_room(pdu.room_id.as_str(), version.as_str(), published, now_ms()).await?;
            (pdu, rules)
        }
        Target::Room(room_id) => {
            let room = write.room(room_id.as_str()).await?.ok_or(RoomError::NotFound)?;
            let version = RoomVersionId::try_from(room.version.as_str())
                .map_err(|_| RoomError::UnsupportedVersion(room.version.clone()))?;
            let rules = version::rules(&version).ok_or(RoomError::UnsupportedVersion(room.version))?;
            let current = write.current_state_ids(room_id.as_str()).await?;
            let auth_types = ruma_state_res::auth_types_for_event(
                &template.kind,
                sender,
                template.state_key.as_deref(),
                &serde_json::value::to_raw_value(&template.content)
                    .map_err(|e| RoomError::InvalidEvent(e.to_string()))?,
                &rules.authorization,
            )
            .map_err(RoomError::InvalidEvent)?;
            let auth_events = auth_types
                .iter()
                .filter_map(|(kind, key)| current.get(&(kind.to_string(), key.clone())))
                .map(|id| ruma_common::EventId::parse(id).map_err(|e| RoomError::Corrupt(e.to_string())))
                .collect::<Result<Vec<OwnedEventId>, _>>()?;
            let extremities = write.extremities(room_id.as_str()).await?;
            let depth = extremities.iter().map(|(_, depth)| *depth).max().unwrap_or(0) + 1;
            let prev_events = extremities
                .iter()
                .map(|(id, _)| ruma_common::EventId::parse(id).map_err(|e| RoomError::Corrupt(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            let placement = Placement { room_id: Some(room_id), rules: &rules, prev_events, auth_events, depth };
            let pdu = template.build(sender, placement, now, &state.signing_key)?;
            authorize(&mut write, &pdu, &current, &rules).await?;
            (pdu, rules)
        }
    };
    if pdu.kind == TimelineEventType::RoomRedaction {
        redact_target(&mut write, &pdu, &rules).await?;
    }

    let prev: Vec<String> = pdu.prev_events.iter().map(ToString::to_string).collect();
    let membership = (pdu.kind == TimelineEventType::RoomMember).then(|| pdu.content_str("membership")).flatten();
    let kind = pdu.kind.to_string();
    let json = pdu.json_string();
    let new_event = NewEvent {
        event_id: pdu.event_id.as_str(),
        room_id: pdu.room_id.as_str(),
        event_type: &kind,
        state_key: pdu.state_key.as_deref(),
        sender: pdu.sender.as_str(),
        origin_server_ts: i64::from(pdu.origin_server_ts.get()),
        depth: pdu.depth,
        prev_events: &prev,
        membership: membership.as_deref(),
        json: &json,
    };
    let position = write.append(new_event, txn, now_ms()).await?;
    write.commit().await?;
    state.notify(position);
    Ok(Appended { pdu, replayed: false })
}

/// Runs the room version's authorization rules on a new event against the current state.
async fn authorize(
    write: &mut RoomWrite,
    pdu: &Pdu,
    current: &StateIds,
    rules: &ruma_common::room_version_rules::RoomVersionRules,
) -> Result<(), RoomError> {
    // Everything the rules may look at: the event's auth events, and from the current state the
    // create, power levels and join rules events, third-party invites, and the member events of
    // the sender, the target and a restricted join's authorising user — not every member.
    let content = pdu.content_value();
    let members: Vec<&str> =
        [Some(pdu.sender.as_str()), pdu.state_key.as_deref(), content["join_authorised_via_users_server"].as_str()]
            .into_iter()
            .flatten()
            .collect();
    let mut wanted: Vec<&str> = pdu.auth_events.iter().map(|id| id.as_str()).collect();
    for ((kind, key), id) in current {
        let relevant = match kind.as_str() {
            "m.room.create" | "m.room.power_levels" | "m.room.join_rules" | "m.room.third_party_invite" => true,
            "m.room.member" => members.contains(&key.as_str()),
            _ => false,
        };
        if relevant {
            wanted.push(id);
        }
    }
    wanted.sort_unstable();
    wanted.dedup();
    let mut by_id = HashMap::new();
    for stored in write.events(&wanted).await? {
        let event = Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json)?;
        by_id.insert(event.event_id.clone(), event);
    }
    let fetch_event = |id: &ruma_common::EventId| by_id.get(id).cloned();
    ruma_state_res::check_state_independent_auth_rules(&rules.authorization, pdu, fetch_event)
        .map_err(RoomError::Forbidden)?;
    let fetch_state = |kind: &StateEventType, key: &str| {
        let id = current.get(&(kind.to_string(), key.to_owned()))?;
        let id = ruma_common::EventId::parse(id).ok()?;
        by_id.get(&id).cloned()
    };
    ruma_state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, fetch_state)
        .map_err(RoomError::Forbidden)?;
    Ok(())
}

/// Applies an authorized redaction when its sender may redact the target: the target's own
/// sender, or anyone at the room's `redact` power level.
async fn redact_target(
    write: &mut RoomWrite,
    redaction: &Pdu,
    rules: &ruma_common::room_version_rules::RoomVersionRules,
) -> Result<(), RoomError> {
    let Some(target_id) = &redaction.redacts else {
        return Err(RoomError::InvalidEvent("a redaction needs `redacts`".into()));
    };
    let Some(stored) = write.events(&[target_id.as_str()]).await?.pop() else {
        return Err(RoomError::NotFound);
    };
    let target = Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json)?;
    if target.room_id != redaction.room_id {
        return Err(RoomError::NotFound);
    }
    if target.sender != redaction.sender {
        let levels = super::power::PowerLevels::load(write, redaction.room_id.as_str(), rules).await?;
        if levels.user_level(&redaction.sender) < levels.redact {
            return Err(RoomError::Forbidden("insufficient power level to redact other users' events".into()));
        }
    }
    let redacted = target.redacted(rules)?;
    write.redact(target.event_id.as_str(), &redacted.json_string(), redaction.event_id.as_str()).await?;
    Ok(())
}
