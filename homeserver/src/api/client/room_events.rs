//! Events and state of a room: send, state, single events, members, history, redaction.

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use ruma_events::TimelineEventType;
use serde_json::Value;

use super::rooms::{JsonObject, parse_room, parse_user};
use crate::api::Tag;
use crate::api::auth::AuthedUser;
use crate::api::error::{ApiResult, MatrixError};
use crate::rooms::RoomError;
use crate::rooms::create::state_template;
use crate::rooms::pdu::{EventView, Pdu, PduTemplate};
use crate::rooms::timeline::{self, Target};
use crate::rooms::visibility::{self, StateView};
use crate::state::AppState;
use crate::storage::{StateIds, StoredEvent, TxnKey};

/// Room event endpoints.
#[derive(Default)]
pub struct RoomEventsApi;

/// A response naming an event.
#[derive(Debug, Object)]
pub struct EventIdResponse {
    /// The event ID.
    pub event_id: String,
}

/// `PUT /redact` request body.
#[derive(Debug, Default, Object)]
pub struct RedactBody {
    /// Why the event is redacted.
    pub reason: Option<String>,
}

/// A list of member events.
#[derive(Debug, Object)]
pub struct MembersResponse {
    /// The `m.room.member` events.
    pub chunk: Vec<Value>,
}

/// A joined member's profile in the room.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct RoomMember {
    /// Display name in the room.
    pub display_name: Option<String>,
    /// Avatar in the room.
    pub avatar_url: Option<String>,
}

/// `GET /joined_members` response.
#[derive(Debug, Object)]
pub struct JoinedMembers {
    /// Joined users by user ID.
    pub joined: std::collections::BTreeMap<String, RoomMember>,
}

/// Direction of pagination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum Direction {
    /// Backwards in time.
    #[oai(rename = "b")]
    Backward,
    /// Forwards in time.
    #[oai(rename = "f")]
    Forward,
}

/// `GET /messages` response.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct MessagesResponse {
    /// The token the page starts at.
    pub start: String,
    /// The token to continue from; absent when there are no more events.
    pub end: Option<String>,
    /// The events, in the direction of pagination.
    pub chunk: Vec<Value>,
    /// State relevant to the chunk (member events of its senders when lazy-loading).
    pub state: Option<Vec<Value>>,
}

/// `GET /context` response.
#[derive(Debug, Object)]
pub struct EventContext {
    /// A token to paginate backwards from `events_before`.
    pub start: String,
    /// A token to paginate forwards from `events_after`.
    pub end: String,
    /// Events before the event, newest first.
    pub events_before: Vec<Value>,
    /// The event.
    pub event: Value,
    /// Events after the event, oldest first.
    pub events_after: Vec<Value>,
    /// The room state at the last event returned.
    pub state: Vec<Value>,
}

/// `format` of the state endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum StateFormat {
    /// Only the content (default).
    Content,
    /// The whole event.
    Event,
}

/// The largest page `/messages` returns.
const MAX_PAGE: i64 = 1000;

#[OpenApi(tag = "Tag::Rooms")]
impl RoomEventsApi {
    /// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`
    ///
    /// Sends a message event; repeating the transaction ID returns the first event.
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3roomsroomidsendeventtypetxnid>
    #[oai(
        path = "/_matrix/client/v3/rooms/:roomId/send/:eventType/:txnId",
        method = "put",
        operation_id = "sendMessage"
    )]
    async fn send(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// The event type.
        #[oai(name = "eventType")]
        event_type: Path<String>,
        /// The client's transaction ID.
        #[oai(name = "txnId")]
        txn_id: Path<String>,
        body: Json<JsonObject>,
    ) -> ApiResult<Json<EventIdResponse>> {
        state.limits.message(&user.user_id)?;
        let template = PduTemplate {
            kind: TimelineEventType::from(event_type.as_str()),
            state_key: None,
            content: Value::Object(body.0.into_iter().collect()),
        };
        // The spec scopes a transaction to the device and the request path.
        let endpoint = format!("send/{}/{}", *room_id, *event_type);
        let txn = TxnKey { user_id: &user.user_id, device_id: &user.device_id, endpoint: &endpoint, txn_id: &txn_id };
        send_event(&state, &user, &room_id, template, Some(txn)).await
    }

    /// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
    ///
    /// Sends a state event.
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3roomsroomidstateeventtypestatekey>
    #[oai(
        path = "/_matrix/client/v3/rooms/:roomId/state/:eventType/:stateKey",
        method = "put",
        operation_id = "setRoomStateWithKey"
    )]
    async fn put_state(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// The event type.
        #[oai(name = "eventType")]
        event_type: Path<String>,
        /// The state key.
        #[oai(name = "stateKey")]
        state_key: Path<String>,
        body: Json<JsonObject>,
    ) -> ApiResult<Json<EventIdResponse>> {
        state.limits.message(&user.user_id)?;
        let template =
            state_template(event_type.as_str().into(), &state_key, Value::Object(body.0.into_iter().collect()));
        send_event(&state, &user, &room_id, template, None).await
    }

    /// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}`
    ///
    /// Sends a state event with an empty state key.
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3roomsroomidstateeventtypestatekey>
    #[oai(path = "/_matrix/client/v3/rooms/:roomId/state/:eventType", method = "put", operation_id = "setRoomState")]
    async fn put_state_empty_key(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// The event type.
        #[oai(name = "eventType")]
        event_type: Path<String>,
        body: Json<JsonObject>,
    ) -> ApiResult<Json<EventIdResponse>> {
        state.limits.message(&user.user_id)?;
        let template = state_template(event_type.as_str().into(), "", Value::Object(body.0.into_iter().collect()));
        send_event(&state, &user, &room_id, template, None).await
    }

    /// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
    ///
    /// One state event's content (or, with `format=event`, the event).
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3roomsroomidstateeventtypestatekey>
    #[oai(
        path = "/_matrix/client/v3/rooms/:roomId/state/:eventType/:stateKey",
        method = "get",
        operation_id = "getRoomStateWithKey"
    )]
    async fn get_state(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// The event type.
        #[oai(name = "eventType")]
        event_type: Path<String>,
        /// The state key.
        #[oai(name = "stateKey")]
        state_key: Path<String>,
        /// `content` (default) or `event`.
        format: Query<Option<StateFormat>>,
    ) -> ApiResult<Json<Value>> {
        state_event(&state, &user, &room_id, &event_type, &state_key, format.0).await
    }

    /// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}`
    ///
    /// One state event with an empty state key.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3roomsroomidstateeventtypestatekey>
    #[oai(path = "/_matrix/client/v3/rooms/:roomId/state/:eventType", method = "get", operation_id = "getRoomState")]
    async fn get_state_empty_key(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// The event type.
        #[oai(name = "eventType")]
        event_type: Path<String>,
        /// `content` (default) or `event`.
        format: Query<Option<StateFormat>>,
    ) -> ApiResult<Json<Value>> {
        state_event(&state, &user, &room_id, &event_type, "", format.0).await
    }

    /// `GET /_matrix/client/v3/rooms/{roomId}/state`
    ///
    /// The whole state of the room as the user may see it.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3roomsroomidstate>
    #[oai(path = "/_matrix/client/v3/rooms/:roomId/state", method = "get", operation_id = "getRoomStateAll")]
    async fn all_state(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
    ) -> ApiResult<Json<Vec<Value>>> {
        let room_id = parse_room(&room_id)?;
        let ids = visible_state(&state, room_id.as_str(), &user.user_id).await?;
        let events = load(&state, ids.values().cloned().collect()).await?;
        Ok(Json(events.iter().map(|(_, pdu)| pdu.to_client_event(true)).collect()))
    }

    /// `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}`
    ///
    /// One event, if the user may see it.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3roomsroomideventeventid>
    #[oai(path = "/_matrix/client/v3/rooms/:roomId/event/:eventId", method = "get", operation_id = "getOneRoomEvent")]
    async fn event(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// The event.
        #[oai(name = "eventId")]
        event_id: Path<String>,
    ) -> ApiResult<Json<Value>> {
        let room_id = parse_room(&room_id)?;
        let not_found = || MatrixError::not_found("Event not found");
        let stored =
            state.storage.event(&event_id).await?.filter(|e| e.room_id == room_id.as_str()).ok_or_else(not_found)?;
        let pdu = Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json).map_err(RoomError::from)?;
        let mut filter = visibility::Filter::new(&state.storage, room_id.as_str(), &user.user_id).await?;
        if !filter.allows(&stored, &pdu.kind.to_string(), pdu.state_key.as_deref()).await? {
            return Err(not_found());
        }
        Ok(Json(pdu.to_client_event(true)))
    }

    /// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`
    ///
    /// An event with the events around it, as the user may see them.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3roomsroomidcontexteventid>
    #[oai(path = "/_matrix/client/v3/rooms/:roomId/context/:eventId", method = "get", operation_id = "getEventContext")]
    async fn context(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// The event.
        #[oai(name = "eventId")]
        event_id: Path<String>,
        /// How many events to return around it in total (default 10).
        limit: Query<Option<i64>>,
        /// A room event filter, as JSON.
        filter: Query<Option<String>>,
    ) -> ApiResult<Json<EventContext>> {
        let room_id = parse_room(&room_id)?;
        let filter = crate::sync::filter::RoomEventFilter::parse(filter.0.as_deref())?;
        let not_found = || MatrixError::not_found("Event not found");
        let stored =
            state.storage.event(&event_id).await?.filter(|e| e.room_id == room_id.as_str()).ok_or_else(not_found)?;
        let pdu = Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json).map_err(RoomError::from)?;
        let mut visibility = visibility::Filter::new(&state.storage, room_id.as_str(), &user.user_id).await?;
        if !visibility.allows(&stored, &pdu.kind.to_string(), pdu.state_key.as_deref()).await? {
            return Err(not_found());
        }
        let limit = limit.0.unwrap_or(10).clamp(0, MAX_PAGE);
        let (before_limit, after_limit) = (limit / 2, limit - limit / 2);
        let latest = state.storage.max_stream_ordering().await?;
        let position = stored.stream_ordering;
        let mut before =
            state.storage.room_events_between(room_id.as_str(), 0, position - 1, before_limit.max(1), true).await?;
        before.truncate(before_limit as usize);
        before.reverse();
        let mut after =
            state.storage.room_events_between(room_id.as_str(), position, latest, after_limit.max(1), false).await?;
        after.truncate(after_limit as usize);
        let start = before.last().map_or(position - 1, |e| e.stream_ordering - 1);
        let end = after.last().map_or(position, |e| e.stream_ordering);
        let events_before =
            visible_events(before, &filter, &mut visibility).await?.into_iter().map(|(_, e)| e).collect();
        let events_after = visible_events(after, &filter, &mut visibility).await?;
        // The state at the last event returned, which the user may see, so never past their view.
        let last_group = events_after.last().map_or(stored.state_group, |(group, _)| *group);
        let events_after = events_after.into_iter().map(|(_, e)| e).collect();
        let state_ids = state.storage.state_at_group(last_group).await?;
        let state_events = load(&state, state_ids.values().cloned().collect()).await?;
        Ok(Json(EventContext {
            start: crate::sync::token::pagination(start),
            end: crate::sync::token::pagination(end),
            events_before,
            event: pdu.to_client_event(true),
            events_after,
            state: state_events.iter().map(|(_, pdu)| pdu.to_client_event(true)).collect(),
        }))
    }

    /// `GET /_matrix/client/v3/rooms/{roomId}/members`
    ///
    /// The member events of the room.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3roomsroomidmembers>
    #[oai(path = "/_matrix/client/v3/rooms/:roomId/members", method = "get", operation_id = "getMembersByRoom")]
    async fn members(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// Only members with this membership.
        membership: Query<Option<String>>,
        /// Leave out members with this membership.
        not_membership: Query<Option<String>>,
    ) -> ApiResult<Json<MembersResponse>> {
        let room_id = parse_room(&room_id)?;
        let ids = visible_state(&state, room_id.as_str(), &user.user_id).await?;
        let member_ids =
            ids.iter().filter(|((kind, _), _)| kind == "m.room.member").map(|(_, id)| id.clone()).collect();
        let chunk = load(&state, member_ids)
            .await?
            .iter()
            .filter(|(_, pdu)| {
                let m = pdu.content_str("membership").unwrap_or_default();
                membership.0.as_ref().is_none_or(|want| *want == m)
                    && not_membership.0.as_ref().is_none_or(|skip| *skip != m)
            })
            .map(|(_, pdu)| pdu.to_client_event(true))
            .collect();
        Ok(Json(MembersResponse { chunk }))
    }

    /// `GET /_matrix/client/v3/rooms/{roomId}/joined_members`
    ///
    /// The joined members with their room profiles.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3roomsroomidjoined_members>
    #[oai(
        path = "/_matrix/client/v3/rooms/:roomId/joined_members",
        method = "get",
        operation_id = "getJoinedMembersByRoom"
    )]
    async fn joined_members(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
    ) -> ApiResult<Json<JoinedMembers>> {
        let room_id = parse_room(&room_id)?;
        // The spec: only current members may list the joined members.
        if state.storage.membership(room_id.as_str(), &user.user_id).await?.is_none_or(|(m, _)| m != "join") {
            return Err(MatrixError::forbidden("You are not in this room"));
        }
        let ids = state.storage.current_state_ids(room_id.as_str()).await?;
        let member_ids =
            ids.iter().filter(|((kind, _), _)| kind == "m.room.member").map(|(_, id)| id.clone()).collect();
        let joined = load(&state, member_ids)
            .await?
            .iter()
            .filter(|(_, pdu)| pdu.content_str("membership").as_deref() == Some("join"))
            .map(|(_, pdu)| {
                let member = RoomMember {
                    display_name: pdu.content_str("displayname"),
                    avatar_url: pdu.content_str("avatar_url"),
                };
                (pdu.state_key.clone().unwrap_or_default(), member)
            })
            .collect();
        Ok(Json(JoinedMembers { joined }))
    }

    /// `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}`
    ///
    /// Redacts an event: its content is stripped per the room version's redaction algorithm.
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3roomsroomidredacteventidtxnid>
    #[oai(
        path = "/_matrix/client/v3/rooms/:roomId/redact/:eventId/:txnId",
        method = "put",
        operation_id = "redactEvent"
    )]
    async fn redact(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// The event to redact.
        #[oai(name = "eventId")]
        event_id: Path<String>,
        /// The client's transaction ID.
        #[oai(name = "txnId")]
        txn_id: Path<String>,
        body: Json<RedactBody>,
    ) -> ApiResult<Json<EventIdResponse>> {
        state.limits.message(&user.user_id)?;
        let mut content = serde_json::json!({"redacts": event_id.0});
        if let Some(reason) = &body.reason {
            content["reason"] = reason.as_str().into();
        }
        let template = PduTemplate { kind: TimelineEventType::RoomRedaction, state_key: None, content };
        let endpoint = format!("redact/{}/{}", *room_id, *event_id);
        let txn = TxnKey { user_id: &user.user_id, device_id: &user.device_id, endpoint: &endpoint, txn_id: &txn_id };
        send_event(&state, &user, &room_id, template, Some(txn)).await
    }

    /// `GET /_matrix/client/v3/rooms/{roomId}/messages`
    ///
    /// Pages through the room's history, as the user may see it.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3roomsroomidmessages>
    #[oai(path = "/_matrix/client/v3/rooms/:roomId/messages", method = "get", operation_id = "getRoomEvents")]
    async fn messages(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// Where to start: a `prev_batch`/`next_batch` from sync or an `end` from here.
        from: Query<Option<String>>,
        /// Where to stop.
        to: Query<Option<String>>,
        /// `b` (backwards, the usual) or `f`.
        dir: Query<Direction>,
        /// How many events to return at most (default 10).
        limit: Query<Option<i64>>,
        /// A room event filter, as JSON.
        filter: Query<Option<String>>,
    ) -> ApiResult<Json<MessagesResponse>> {
        let room_id = parse_room(&room_id)?;
        visibility::state_view(&state.storage, room_id.as_str(), &user.user_id).await?;
        let filter = crate::sync::filter::RoomEventFilter::parse(filter.0.as_deref())?;
        let limit = limit.0.unwrap_or(10).clamp(1, MAX_PAGE);
        let latest = state.storage.max_stream_ordering().await?;
        let from = match from.0.as_deref() {
            Some(token) => crate::sync::token::position(token)?,
            None if dir.0 == Direction::Backward => latest,
            None => 0,
        };
        let to = to.0.as_deref().map(crate::sync::token::position).transpose()?;
        let page = match dir.0 {
            // Backwards from `from`: events at or before it, newest first.
            Direction::Backward => {
                let lower = to.unwrap_or(0);
                let mut events = state.storage.room_events_between(room_id.as_str(), lower, from, limit, true).await?;
                events.reverse();
                events
            }
            Direction::Forward => {
                let upper = to.unwrap_or(latest).min(latest);
                state.storage.room_events_between(room_id.as_str(), from, upper, limit, false).await?
            }
        };
        let end = match (dir.0, page.last()) {
            (_, None) => None,
            (_, Some(_)) if (page.len() as i64) < limit => None,
            (Direction::Backward, Some(last)) => Some(crate::sync::token::pagination(last.stream_ordering - 1)),
            (Direction::Forward, Some(last)) => Some(crate::sync::token::pagination(last.stream_ordering)),
        };
        let mut visibility = visibility::Filter::new(&state.storage, room_id.as_str(), &user.user_id).await?;
        let mut chunk = Vec::with_capacity(page.len());
        let mut senders = std::collections::BTreeSet::new();
        for stored in &page {
            let view = EventView::parse(&stored.json).map_err(RoomError::from)?;
            if filter.matches_type(&view.kind)
                && visibility.allows(stored, &view.kind, view.state_key.as_deref()).await?
            {
                senders.insert(view.sender.clone());
                chunk.push(view.into_client_event(&stored.event_id, Some(&stored.room_id)));
            }
        }
        let state_events = if filter.lazy_load_members {
            let current = visible_state(&state, room_id.as_str(), &user.user_id).await?;
            let ids =
                senders.iter().filter_map(|s| current.get(&("m.room.member".to_owned(), s.clone())).cloned()).collect();
            Some(load(&state, ids).await?.iter().map(|(_, pdu)| pdu.to_client_event(true)).collect())
        } else {
            None
        };
        Ok(Json(MessagesResponse { start: crate::sync::token::pagination(from), end, chunk, state: state_events }))
    }
}

/// Sends an event as `user` into `room_id`.
async fn send_event(
    state: &AppState,
    user: &AuthedUser,
    room_id: &str,
    template: PduTemplate,
    txn: Option<TxnKey<'_>>,
) -> ApiResult<Json<EventIdResponse>> {
    let room_id = parse_room(room_id)?;
    let sender = parse_user(&user.user_id)?;
    // A room this server does not know is one the user is not in.
    let appended = match timeline::append(state, Target::Room(&room_id), &sender, template, txn).await {
        Err(RoomError::NotFound) => return Err(RoomError::Forbidden("you are not in this room".into()).into()),
        other => other?,
    };
    Ok(Json(EventIdResponse { event_id: appended.pdu.event_id.to_string() }))
}

/// The state IDs the user may see: current, or frozen at their departure.
async fn visible_state(state: &AppState, room_id: &str, user_id: &str) -> Result<StateIds, MatrixError> {
    Ok(match visibility::state_view(&state.storage, room_id, user_id).await? {
        StateView::Current => state.storage.current_state_ids(room_id).await?,
        StateView::AtGroup(group) => state.storage.state_at_group(group).await?,
    })
}

async fn state_event(
    state: &AppState,
    user: &AuthedUser,
    room_id: &str,
    event_type: &str,
    state_key: &str,
    format: Option<StateFormat>,
) -> ApiResult<Json<Value>> {
    let room_id = parse_room(room_id)?;
    let ids = visible_state(state, room_id.as_str(), &user.user_id).await?;
    let not_found = || MatrixError::not_found("State event not found");
    let id = ids.get(&(event_type.to_owned(), state_key.to_owned())).ok_or_else(not_found)?;
    let (_, pdu) = load(state, vec![id.clone()]).await?.pop().ok_or_else(not_found)?;
    Ok(Json(match format {
        Some(StateFormat::Event) => pdu.to_client_event(true),
        _ => pdu.content_value(),
    }))
}

/// The events the filter passes and the user may see, in client format, with their state
/// groups.
async fn visible_events(
    events: Vec<StoredEvent>,
    filter: &crate::sync::filter::RoomEventFilter,
    visibility: &mut visibility::Filter<'_>,
) -> Result<Vec<(i64, Value)>, MatrixError> {
    let mut out = Vec::new();
    for stored in events {
        let view = EventView::parse(&stored.json).map_err(RoomError::from)?;
        if filter.matches_type(&view.kind) && visibility.allows(&stored, &view.kind, view.state_key.as_deref()).await? {
            out.push((stored.state_group, view.into_client_event(&stored.event_id, Some(&stored.room_id))));
        }
    }
    Ok(out)
}

/// Loads and parses events by ID.
async fn load(state: &AppState, ids: Vec<String>) -> Result<Vec<(StoredEvent, Pdu)>, MatrixError> {
    let mut events = Vec::with_capacity(ids.len());
    for stored in state.storage.events(&ids).await? {
        let pdu = Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json).map_err(RoomError::from)?;
        events.push((stored, pdu));
    }
    Ok(events)
}
