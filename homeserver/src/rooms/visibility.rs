//! History visibility: which events a user may see.
//! <https://spec.matrix.org/v1.19/client-server-api/#history-visibility>

use std::collections::HashMap;

use super::RoomError;
use super::pdu::Pdu;
use crate::storage::{Storage, StoredEvent};

/// What a user may see of a room's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateView {
    /// The current state (the user is joined, or the room is world-readable).
    Current,
    /// The state when the user left or was banned: their view froze then.
    AtGroup(i64),
}

/// How a user may see a room's state, or [`RoomError::Forbidden`].
pub async fn state_view(storage: &Storage, room_id: &str, user_id: &str) -> Result<StateView, RoomError> {
    if storage.room(room_id).await?.is_none() {
        return Err(RoomError::Forbidden("you are not in this room".into()));
    }
    match storage.membership(room_id, user_id).await? {
        Some((membership, _)) if membership == "join" => return Ok(StateView::Current),
        Some((membership, event_id)) if membership == "leave" || membership == "ban" => {
            // Only someone who was a member keeps a view of the room after leaving (a rejected
            // invite or a ban before joining gives none), and only until they forget the room.
            let keeps_view =
                has_joined(storage, room_id, user_id).await? && !has_forgotten(storage, room_id, user_id).await?;
            if keeps_view && let Some(event) = storage.event(&event_id).await? {
                return Ok(StateView::AtGroup(event.state_group));
            }
        }
        _ => {}
    }
    if current_visibility(storage, room_id).await? == "world_readable" {
        return Ok(StateView::Current);
    }
    Err(RoomError::Forbidden("you are not in this room".into()))
}

/// Whether the user has ever joined the room.
async fn has_joined(storage: &Storage, room_id: &str, user_id: &str) -> Result<bool, RoomError> {
    for stored in storage.member_events(room_id, user_id).await? {
        if Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json)?.content_str("membership").as_deref()
            == Some("join")
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether the user has forgotten the room: "After this API is called, however, a user will no
/// longer be able to retrieve history for this room" (`POST /forget`).
async fn has_forgotten(storage: &Storage, room_id: &str, user_id: &str) -> Result<bool, RoomError> {
    Ok(storage.forgotten_rooms(user_id).await?.iter().any(|forgotten| forgotten == room_id))
}

async fn current_visibility(storage: &Storage, room_id: &str) -> Result<String, RoomError> {
    let event = storage.current_state_event(room_id, "m.room.history_visibility", "").await?;
    Ok(match event {
        Some(e) => {
            Pdu::from_json(&e.event_id, &e.room_id, &e.json)?.content_str("history_visibility").unwrap_or_default()
        }
        None => "shared".into(),
    })
}

/// Decides event by event, caching what it learns per state group.
pub struct Filter<'a> {
    storage: &'a Storage,
    user_id: &'a str,
    /// Stream positions at which the user joined the room.
    joins: Vec<i64>,
    /// The user is joined now and the room's history has only ever been `shared` or
    /// `world_readable`: then the rules allow every event, and no per-event lookup is needed.
    sees_everything: bool,
    /// The user left or was banned, then forgot the room: they see only what anyone may.
    forgotten: bool,
    by_group: HashMap<i64, (String, String)>,
}

impl<'a> Filter<'a> {
    /// A filter for `user_id` in `room_id`.
    pub async fn new(storage: &'a Storage, room_id: &str, user_id: &'a str) -> Result<Self, RoomError> {
        let membership = storage.membership(room_id, user_id).await?.map(|(m, _)| m);
        let currently_joined = membership.as_deref() == Some("join");
        let mut filter = Self::knowing_membership(storage, room_id, user_id, currently_joined).await?;
        // A later invite or join starts a new view; forgetting ends the one kept after leaving.
        let departed = matches!(membership.as_deref(), Some("leave" | "ban"));
        filter.forgotten = departed && has_forgotten(storage, room_id, user_id).await?;
        Ok(filter)
    }

    /// A filter for a caller that already knows whether the user is joined now, and leaves out
    /// rooms the user forgot (as sync does).
    pub async fn knowing_membership(
        storage: &'a Storage,
        room_id: &str,
        user_id: &'a str,
        currently_joined: bool,
    ) -> Result<Self, RoomError> {
        let mut joins = Vec::new();
        let mut always_shared = true;
        for stored in storage.visibility_events(room_id, user_id).await? {
            let pdu = Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json)?;
            if pdu.kind == ruma_events::TimelineEventType::RoomMember {
                if pdu.content_str("membership").as_deref() == Some("join") {
                    joins.push(stored.stream_ordering);
                }
            } else {
                let visibility = pdu.content_str("history_visibility");
                always_shared &= matches!(visibility.as_deref(), Some("shared" | "world_readable"));
            }
        }
        let sees_everything = currently_joined && always_shared;
        Ok(Self { storage, user_id, joins, sees_everything, forgotten: false, by_group: HashMap::new() })
    }

    /// Whether the user may see `event`, by the spec's rules applied to the state at the event:
    /// `world_readable`; joined then; `shared` and joined at any point after; `invited` and
    /// invited then. A user always sees their own membership events.
    pub async fn allows(
        &mut self,
        event: &StoredEvent,
        kind: &str,
        state_key: Option<&str>,
    ) -> Result<bool, RoomError> {
        let own_membership = state_key == Some(self.user_id) && kind == "m.room.member";
        if self.sees_everything || (own_membership && !self.forgotten) {
            return Ok(true);
        }
        let (visibility, membership) = match self.by_group.get(&event.state_group) {
            Some(known) => known.clone(),
            None => {
                let state = self.storage.state_at_group(event.state_group).await?;
                let visibility =
                    state_content(self.storage, &state, ("m.room.history_visibility", ""), "history_visibility")
                        .await?
                        .unwrap_or_else(|| "shared".into());
                let membership = state_content(self.storage, &state, ("m.room.member", self.user_id), "membership")
                    .await?
                    .unwrap_or_default();
                self.by_group.insert(event.state_group, (visibility.clone(), membership.clone()));
                (visibility, membership)
            }
        };
        Ok(visibility == "world_readable"
            || (!self.forgotten
                && (membership == "join"
                    || (visibility == "shared" && self.joins.iter().any(|&joined| joined > event.stream_ordering))
                    || (visibility == "invited" && membership == "invite"))))
    }
}

/// A string field of the content of a state event in `state`.
pub async fn state_content(
    storage: &Storage,
    state: &crate::storage::StateIds,
    (kind, key): (&str, &str),
    field: &str,
) -> Result<Option<String>, RoomError> {
    let Some(id) = state.get(&(kind.to_owned(), key.to_owned())) else { return Ok(None) };
    let Some(stored) = storage.event(id).await? else { return Ok(None) };
    Ok(Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json)?.content_str(field))
}
