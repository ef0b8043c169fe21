//! `GET /sync` and filters: `POST /user/{userId}/filter`, `GET /user/{userId}/filter/{filterId}`.
//!
//! A waiting sync subscribes to the server's stream position before it looks at the database,
//! so an event committed while it computes wakes it instead of being missed; there is no
//! polling loop.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde_json::Value;

use super::rooms::JsonObject;
use crate::api::Tag;
use crate::api::auth::AuthedUser;
use crate::api::error::{ApiResult, MatrixError};
use crate::rooms::RoomError;
use crate::rooms::pdu::{EventView, Pdu};
use crate::rooms::visibility;
use crate::state::AppState;
use crate::storage::{StateIds, StoredEvent};
use crate::sync::filter::{Filter, RoomEventFilter};
use crate::sync::token;

/// Sync and filter endpoints.
#[derive(Default)]
pub struct SyncApi;

/// Timeline events when the filter gives no limit.
const DEFAULT_TIMELINE_LIMIT: i64 = 10;
/// The most a client may ask for per room.
const MAX_TIMELINE_LIMIT: i64 = 500;
/// The longest a sync waits, whatever the client asks.
const MAX_TIMEOUT_MS: u64 = 5 * 60 * 1000;

/// A list of events.
#[derive(Debug, Default, Object)]
pub struct EventList {
    /// The events.
    pub events: Vec<Value>,
}

/// A room's timeline in a sync.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Timeline {
    /// Events, oldest first.
    pub events: Vec<Value>,
    /// True when events between the previous sync and these were left out; paginate back
    /// from `prev_batch` to get them.
    pub limited: bool,
    /// A token to paginate back from the first event.
    pub prev_batch: Option<String>,
}

/// Unread notification counts.
#[derive(Debug, Default, Object)]
pub struct UnreadNotifications {
    /// Highlighted unread events.
    pub highlight_count: i64,
    /// Unread events that notify.
    pub notification_count: i64,
}

/// Room summary for naming the room.
#[derive(Debug, Object)]
pub struct RoomSummary {
    /// Up to five other members, to name an unnamed room.
    #[oai(rename = "m.heroes")]
    pub heroes: Vec<String>,
    /// Joined members.
    #[oai(rename = "m.joined_member_count")]
    pub joined_member_count: i64,
    /// Invited members.
    #[oai(rename = "m.invited_member_count")]
    pub invited_member_count: i64,
}

/// A joined room in a sync.
#[derive(Debug, Object)]
pub struct JoinedRoom {
    /// State up to the start of the timeline.
    pub state: EventList,
    /// The timeline.
    pub timeline: Timeline,
    /// Typing notices and receipts.
    pub ephemeral: EventList,
    /// The user's account data for this room.
    pub account_data: EventList,
    /// Unread counts.
    pub unread_notifications: UnreadNotifications,
    /// Member summary.
    pub summary: RoomSummary,
}

/// A room the user is invited to.
#[derive(Debug, Object)]
pub struct InvitedRoom {
    /// Stripped state of the room, including the invite.
    pub invite_state: EventList,
}

/// A room the user left or was removed from since the last sync.
#[derive(Debug, Object)]
pub struct LeftRoom {
    /// State up to the start of the timeline.
    pub state: EventList,
    /// Events up to the departure.
    pub timeline: Timeline,
    /// The user's account data for this room.
    pub account_data: EventList,
}

/// Rooms by membership.
#[derive(Debug, Default, Object)]
pub struct Rooms {
    /// Joined rooms.
    pub join: BTreeMap<String, JoinedRoom>,
    /// Invites.
    pub invite: BTreeMap<String, InvitedRoom>,
    /// Rooms left.
    pub leave: BTreeMap<String, LeftRoom>,
    /// Knocks.
    pub knock: BTreeMap<String, JsonObject>,
}

/// Device list changes of users sharing rooms with the caller.
#[derive(Debug, Default, Object)]
pub struct DeviceLists {
    /// Users whose devices changed.
    pub changed: Vec<String>,
    /// Users who no longer share a room.
    pub left: Vec<String>,
}

/// `GET /sync` response.
#[derive(Debug, Object)]
pub struct SyncResponse {
    /// The token for the next sync's `since`.
    pub next_batch: String,
    /// Room updates.
    pub rooms: Rooms,
    /// Presence updates.
    pub presence: EventList,
    /// Global account data.
    pub account_data: EventList,
    /// Messages sent directly to this device.
    pub to_device: EventList,
    /// Device list changes.
    pub device_lists: DeviceLists,
    /// Unclaimed one-time keys of this device, by algorithm.
    pub device_one_time_keys_count: BTreeMap<String, i64>,
    /// Fallback key algorithms not used yet.
    pub device_unused_fallback_key_types: Vec<String>,
}

/// `POST /user/{userId}/filter` response.
#[derive(Debug, Object)]
pub struct FilterIdResponse {
    /// The filter's ID.
    pub filter_id: String,
}

#[OpenApi(tag = "Tag::Rooms")]
impl SyncApi {
    /// `GET /_matrix/client/v3/sync`
    ///
    /// Everything new since `since` (or a snapshot without it), waiting up to `timeout` ms for
    /// something to happen.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3sync>
    #[oai(path = "/_matrix/client/v3/sync", method = "get", operation_id = "sync")]
    async fn sync(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The `next_batch` of the previous sync.
        since: Query<Option<String>>,
        /// Milliseconds to wait for news (default 0).
        timeout: Query<Option<u64>>,
        /// Return the full state of every room even with `since`.
        full_state: Query<Option<bool>>,
        /// A filter ID or an inline JSON filter.
        filter: Query<Option<String>>,
        /// Presence to set while syncing: `online` (default), `offline` or `unavailable`.
        set_presence: Query<Option<String>>,
    ) -> ApiResult<Json<SyncResponse>> {
        let wanted = set_presence.0.unwrap_or_else(|| "online".into());
        if !matches!(wanted.as_str(), "online" | "offline" | "unavailable") {
            return Err(MatrixError::invalid_param("set_presence must be online, offline or unavailable"));
        }
        // Syncing marks the user present; only a change of state is a presence update.
        if wanted != "offline" && state.storage.presence(&user.user_id).await?.is_none_or(|p| p.presence != wanted) {
            let position = state.storage.set_presence(&user.user_id, &wanted, None, crate::storage::now_ms()).await?;
            state.notify(position);
        }
        let since = since.0.as_deref().map(token::parse).transpose()?;
        let filter = load_filter(&state, &user, filter.0.as_deref()).await?;
        let full_state = full_state.0.unwrap_or(false);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout.0.unwrap_or(0).min(MAX_TIMEOUT_MS));
        let mut changes = state.notifier.subscribe();
        loop {
            changes.borrow_and_update();
            let response = compute(&state, &user, since, full_state, &filter).await?;
            let empty = response.rooms.join.is_empty()
                && response.rooms.invite.is_empty()
                && response.rooms.leave.is_empty()
                && response.account_data.events.is_empty()
                && response.presence.events.is_empty()
                && response.to_device.events.is_empty()
                && response.device_lists.changed.is_empty()
                && response.device_lists.left.is_empty();
            if since.is_none() || full_state || !empty {
                return Ok(Json(response));
            }
            // Nothing new: wait for the next event or the deadline, then look again.
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Ok(Json(response)),
            }
        }
    }

    /// `POST /_matrix/client/v3/user/{userId}/filter`
    ///
    /// Stores a filter for later syncs.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3useruseridfilter>
    #[oai(path = "/_matrix/client/v3/user/:userId/filter", method = "post", operation_id = "defineFilter")]
    async fn define_filter(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The user the filter belongs to: the caller.
        #[oai(name = "userId")]
        user_id: Path<String>,
        body: Json<JsonObject>,
    ) -> ApiResult<Json<FilterIdResponse>> {
        if user.user_id != user_id.0 {
            return Err(MatrixError::forbidden("You may only create filters for yourself"));
        }
        let json = serde_json::to_string(&body.0).map_err(|e| MatrixError::bad_json(e.to_string()))?;
        serde_json::from_str::<Filter>(&json).map_err(|e| MatrixError::bad_json(format!("Invalid filter: {e}")))?;
        let id = state.storage.create_filter(&user.user_id, &json).await?;
        Ok(Json(FilterIdResponse { filter_id: id.to_string() }))
    }

    /// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`
    ///
    /// A stored filter.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3useruseridfilterfilterid>
    #[oai(path = "/_matrix/client/v3/user/:userId/filter/:filterId", method = "get", operation_id = "getFilter")]
    async fn get_filter(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The user the filter belongs to.
        #[oai(name = "userId")]
        user_id: Path<String>,
        /// The filter ID.
        #[oai(name = "filterId")]
        filter_id: Path<String>,
    ) -> ApiResult<Json<JsonObject>> {
        let not_found = || MatrixError::not_found("Unknown filter");
        if user.user_id != user_id.0 {
            return Err(not_found());
        }
        let id = filter_id.parse::<i64>().map_err(|_| not_found())?;
        let json = state.storage.filter(&user.user_id, id).await?.ok_or_else(not_found)?;
        Ok(Json(serde_json::from_str(&json).map_err(|_| MatrixError::internal())?))
    }
}

async fn load_filter(state: &AppState, user: &AuthedUser, filter: Option<&str>) -> Result<Filter, MatrixError> {
    let json = match filter {
        None => return Ok(Filter::default()),
        Some(inline) if inline.trim_start().starts_with('{') => inline.to_owned(),
        Some(id) => {
            let unknown = || MatrixError::not_found("Unknown filter");
            let id = id.parse::<i64>().map_err(|_| unknown())?;
            state.storage.filter(&user.user_id, id).await?.ok_or_else(unknown)?
        }
    };
    serde_json::from_str(&json).map_err(|e| MatrixError::bad_json(format!("Invalid filter: {e}")))
}

/// Builds the response for the stream range `(since, position]`.
async fn compute(
    state: &AppState,
    user: &AuthedUser,
    since_token: Option<token::SyncToken>,
    full_state: bool,
    filter: &Filter,
) -> Result<SyncResponse, MatrixError> {
    let since = since_token.map(|t| t.position);
    // Memberships first, the position after: a membership change that commits in between is
    // then inside the range this response covers (its event is in the room's timeline), never
    // lost between two syncs.
    let memberships = state.storage.memberships_of(&user.user_id).await?;
    let position = state.storage.max_stream_ordering().await?;
    // The rest are independent reads: concurrently, on as many connections.
    let after = since.unwrap_or(0);
    let (forgotten, account_data_rows, changed, ephemeral, presence, device) = tokio::try_join!(
        async { Ok::<_, MatrixError>(state.storage.forgotten_rooms(&user.user_id).await?) },
        async { Ok::<_, MatrixError>(state.storage.account_data_since(&user.user_id, after, position).await?) },
        // An incremental sync looks only at rooms where something happened in the range.
        async {
            match since {
                Some(since) if !full_state => Ok(Some(state.storage.rooms_changed(since, position).await?)),
                _ => Ok::<_, MatrixError>(None),
            }
        },
        Ephemeral::of(state, &user.user_id, since, position),
        presence_events(state, &user.user_id, since, position),
        device_updates(state, user, since_token, position),
    )?;
    let forgotten: BTreeSet<String> = forgotten.into_iter().collect();
    let changed: Option<BTreeSet<String>> = changed.map(|rooms| rooms.into_iter().collect());
    let mut account_data: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (room_id, kind, content) in account_data_rows {
        let content: Value = serde_json::from_str(&content).unwrap_or(Value::Null);
        account_data.entry(room_id).or_default().push(serde_json::json!({"type": kind, "content": content}));
    }
    let global_account_data = account_data.remove("").unwrap_or_default();
    let mut rooms = Rooms::default();
    let mut joined = Vec::new();
    for (room_id, membership, membership_at) in memberships {
        let departed = membership == "leave" || membership == "ban";
        if (departed && forgotten.contains(&room_id)) || !filter.room.includes_room(&room_id) {
            continue;
        }
        let new_membership = match since {
            None => true,
            Some(since) if membership_at <= since => false,
            // Changed since: new unless it was already the same (a join that only updated the
            // member's profile is not a new join).
            Some(since) => membership_at_position(state, &room_id, &user.user_id, since).await? != membership,
        };
        match membership.as_str() {
            "join"
                if !new_membership
                    && !account_data.contains_key(&room_id)
                    && changed.as_ref().is_some_and(|changed| !changed.contains(&room_id)) => {}
            "join" => {
                // A room joined since the last sync is sent in full, like an initial sync;
                // `full_state` adds the whole state but keeps the timeline incremental.
                let from = if new_membership { None } else { since };
                let room_account_data = account_data.remove(&room_id).unwrap_or_default();
                joined.push((
                    room_id,
                    RoomSections { since: from, position, full_state, account_data: room_account_data },
                ));
            }
            "invite" if new_membership => {
                rooms.invite.insert(room_id.clone(), invited_room(state, &room_id, &user.user_id).await?);
            }
            "leave" | "ban" if new_membership && (since.is_some() || filter.room.include_leave) => {
                let timeline =
                    room_timeline(state, user, &room_id, (since, membership_at), false, &filter.room.timeline).await?;
                let state_events = state_before(state, &room_id, &timeline.first, since).await?;
                rooms.leave.insert(
                    room_id,
                    LeftRoom {
                        state: EventList { events: state_events },
                        timeline: timeline.into(),
                        account_data: EventList::default(),
                    },
                );
            }
            _ => {}
        }
    }
    // Joined rooms are independent of each other: a few at a time, so that one room's queries
    // run while another's results are turned into JSON.
    let ephemeral = &ephemeral;
    let mut joined = futures_util::stream::iter(joined)
        .map(|(room_id, sections)| async move {
            let entry = joined_room(state, user, &room_id, sections, filter, ephemeral).await;
            (room_id, entry)
        })
        .buffered(ROOMS_AT_ONCE);
    while let Some((room_id, entry)) = joined.next().await {
        if let Some(entry) = entry? {
            rooms.join.insert(room_id, entry);
        }
    }
    Ok(SyncResponse {
        next_batch: token::sync(position, device.to_device_position),
        rooms,
        presence: EventList { events: presence },
        account_data: EventList { events: global_account_data },
        to_device: EventList { events: device.to_device },
        device_lists: device.device_lists,
        device_one_time_keys_count: device.one_time_key_counts,
        device_unused_fallback_key_types: device.unused_fallback_key_types,
    })
}

/// The most to-device messages one sync carries; the rest follow in the next ones.
const MAX_TO_DEVICE_PER_SYNC: i64 = 100;

/// What a sync tells the device about encryption.
struct DeviceUpdates {
    to_device: Vec<Value>,
    /// To-device messages up to here are in this response.
    to_device_position: i64,
    device_lists: DeviceLists,
    one_time_key_counts: BTreeMap<String, i64>,
    unused_fallback_key_types: Vec<String>,
}

/// To-device messages for the device (acknowledging those the previous sync delivered), device
/// list changes, and the device's key counts.
async fn device_updates(
    state: &AppState,
    user: &AuthedUser,
    since: Option<token::SyncToken>,
    position: i64,
) -> Result<DeviceUpdates, MatrixError> {
    let (user_id, device_id) = (user.user_id.as_str(), user.device_id.as_str());
    let storage = &state.storage;
    // Messages up to the `since` token's to-device position reached the client: a sync with
    // that token is its acknowledgement. Until then they are sent again, never lost.
    let acknowledged = since.map_or(0, |t| t.to_device);
    let mut pending = storage.to_device_messages(user_id, device_id, position, MAX_TO_DEVICE_PER_SYNC + 1).await?;
    if pending.first().is_some_and(|m| m.stream_id <= acknowledged) {
        storage.acknowledge_to_device(user_id, device_id, acknowledged).await?;
        pending = storage.to_device_messages(user_id, device_id, position, MAX_TO_DEVICE_PER_SYNC + 1).await?;
    }
    let mut to_device_position = position;
    if pending.len() as i64 > MAX_TO_DEVICE_PER_SYNC {
        // A device has at most one message per position, so the next sync resumes after the
        // last one carried here.
        pending.truncate(MAX_TO_DEVICE_PER_SYNC as usize);
        to_device_position = pending.last().map_or(acknowledged, |m| m.stream_id);
    }
    let to_device = pending
        .into_iter()
        .map(|m| {
            let content: Value = serde_json::from_str(&m.content).unwrap_or(Value::Null);
            serde_json::json!({"type": m.event_type, "sender": m.sender, "content": content})
        })
        .collect();
    let device_lists = match since {
        Some(since) => {
            let changes = crate::e2ee::device_lists::changes(storage, user_id, since.position, position).await?;
            DeviceLists { changed: changes.changed, left: changes.left }
        }
        None => DeviceLists::default(),
    };
    let mut one_time_key_counts = storage.one_time_key_counts(user_id, device_id).await?;
    // Some clients treat a missing count as "unknown" and never upload; zero is the truth.
    one_time_key_counts.entry("signed_curve25519".to_owned()).or_insert(0);
    let unused_fallback_key_types = storage.unused_fallback_algorithms(user_id, device_id).await?;
    Ok(DeviceUpdates { to_device, to_device_position, device_lists, one_time_key_counts, unused_fallback_key_types })
}

/// Joined rooms of one sync computed concurrently.
const ROOMS_AT_ONCE: usize = 4;

/// Which rooms have typing or receipt changes in the sync's range: two queries for the sync
/// instead of two per room.
struct Ephemeral {
    typing: BTreeSet<String>,
    receipts: BTreeSet<String>,
}

impl Ephemeral {
    async fn of(state: &AppState, user_id: &str, since: Option<i64>, position: i64) -> Result<Self, MatrixError> {
        let mut sets = Self { typing: BTreeSet::new(), receipts: BTreeSet::new() };
        for (kind, room_id) in state.storage.ephemeral_rooms(user_id, since.unwrap_or(0), position).await? {
            match kind.as_str() {
                "typing" => sets.typing.insert(room_id),
                _ => sets.receipts.insert(room_id),
            };
        }
        Ok(sets)
    }
}

/// A room's timeline section before conversion, keeping the first event for state lookups.
struct RoomTimeline {
    events: Vec<Value>,
    limited: bool,
    prev_batch: i64,
    first: Option<StoredEvent>,
}

impl From<RoomTimeline> for Timeline {
    fn from(t: RoomTimeline) -> Self {
        Self { events: t.events, limited: t.limited, prev_batch: Some(token::pagination(t.prev_batch)) }
    }
}

/// The visible events of `(since, until]`, the newest `limit` of them, for a user who is
/// `joined` to the room now (or not: they left).
async fn room_timeline(
    state: &AppState,
    user: &AuthedUser,
    room_id: &str,
    (since, until): (Option<i64>, i64),
    joined: bool,
    filter: &RoomEventFilter,
) -> Result<RoomTimeline, MatrixError> {
    let limit = filter.limit.unwrap_or(DEFAULT_TIMELINE_LIMIT).clamp(1, MAX_TIMELINE_LIMIT);
    // One extra row tells whether the page is `limited`.
    let (mut page, mut visibility) = tokio::try_join!(
        async {
            Ok::<_, MatrixError>(
                state.storage.room_events_between(room_id, since.unwrap_or(0), until, limit + 1, true).await?,
            )
        },
        async {
            Ok::<_, MatrixError>(
                visibility::Filter::knowing_membership(&state.storage, room_id, &user.user_id, joined).await?,
            )
        },
    )?;
    let limited = page.len() as i64 > limit;
    if limited {
        page.remove(0);
    }
    let mut events = Vec::with_capacity(page.len());
    for stored in &page {
        let view = EventView::parse(&stored.json).map_err(RoomError::from)?;
        if filter.matches_type(&view.kind) && visibility.allows(stored, &view.kind, view.state_key.as_deref()).await? {
            events.push(view.into_client_event(&stored.event_id, None));
        }
    }
    let prev_batch = page.first().map_or(until, |e| e.stream_ordering - 1);
    Ok(RoomTimeline { events, limited, prev_batch, first: page.into_iter().next() })
}

/// What a joined room's entry is built from.
struct RoomSections {
    /// Start of the range (None: the whole room).
    since: Option<i64>,
    /// End of the range.
    position: i64,
    /// Send all state.
    full_state: bool,
    /// The user's account data for the room changed in the range.
    account_data: Vec<Value>,
}

async fn joined_room(
    state: &AppState,
    user: &AuthedUser,
    room_id: &str,
    sections: RoomSections,
    filter: &Filter,
    changed: &Ephemeral,
) -> Result<Option<JoinedRoom>, MatrixError> {
    let RoomSections { since, position, full_state, account_data } = sections;
    let (timeline, ephemeral, unread_notifications, summary) = tokio::try_join!(
        room_timeline(state, user, room_id, (since, position), true, &filter.room.timeline),
        ephemeral_events(state, &user.user_id, room_id, (since, position), changed),
        unread(state, room_id, &user.user_id, position),
        summary(state, room_id, &user.user_id),
    )?;
    if since.is_some() && timeline.first.is_none() && !full_state && ephemeral.is_empty() && account_data.is_empty() {
        return Ok(None);
    }
    let state_events = if full_state || since.is_none() {
        state_before(state, room_id, &timeline.first, None).await?
    } else if timeline.limited {
        state_before(state, room_id, &timeline.first, since).await?
    } else {
        Vec::new()
    };
    let mut state_events = filter_state(state_events, &filter.room.state, &timeline.events, &user.user_id);
    if filter.room.state.lazy_load_members {
        lazy_members(state, room_id, &timeline, &mut state_events).await?;
    }
    Ok(Some(JoinedRoom {
        state: EventList { events: state_events },
        timeline: timeline.into(),
        ephemeral: EventList { events: ephemeral },
        account_data: EventList { events: account_data },
        unread_notifications,
        summary,
    }))
}

/// Typing and receipts of a room that changed in the range (all current ones without `since`).
async fn ephemeral_events(
    state: &AppState,
    user_id: &str,
    room_id: &str,
    (since, position): (Option<i64>, i64),
    changed: &Ephemeral,
) -> Result<Vec<Value>, MatrixError> {
    let mut events = Vec::new();
    let after = since.unwrap_or(0);
    if changed.typing.contains(room_id) {
        let typing = state.storage.typing_users(room_id, crate::storage::now_ms()).await?;
        events.push(serde_json::json!({"type": "m.typing", "content": {"user_ids": typing}}));
    }
    let mut content = serde_json::Map::new();
    let receipts = match changed.receipts.contains(room_id) {
        true => state.storage.receipts_since(room_id, after, position).await?,
        false => Vec::new(),
    };
    for receipt in receipts {
        // Private receipts are for their owner's eyes only.
        if receipt.receipt_type == "m.read.private" && receipt.user_id != user_id {
            continue;
        }
        let mut data = serde_json::json!({"ts": receipt.ts});
        if !receipt.thread_id.is_empty() {
            data["thread_id"] = receipt.thread_id.clone().into();
        }
        let by_type = content.entry(receipt.event_id).or_insert_with(|| serde_json::json!({}));
        by_type[&receipt.receipt_type][&receipt.user_id] = data;
    }
    if !content.is_empty() {
        events.push(serde_json::json!({"type": "m.receipt", "content": content}));
    }
    Ok(events)
}

/// Presence changes in the range of users who share a room with the caller.
async fn presence_events(
    state: &AppState,
    user_id: &str,
    since: Option<i64>,
    position: i64,
) -> Result<Vec<Value>, MatrixError> {
    let now = crate::storage::now_ms();
    let mut events = Vec::new();
    for p in state.storage.presence_changes(user_id, since.unwrap_or(0), position).await? {
        let mut content = serde_json::json!({
            "presence": p.presence,
            "last_active_ago": (now - p.last_active_ts).max(0),
            "currently_active": p.presence == "online",
        });
        if let Some(msg) = p.status_msg {
            content["status_msg"] = msg.into();
        }
        events.push(serde_json::json!({"type": "m.presence", "sender": p.user_id, "content": content}));
    }
    Ok(events)
}

/// Applies the state filter; with `lazy_load_members`, member events only of the timeline's
/// senders and the user.
fn filter_state(events: Vec<Value>, filter: &RoomEventFilter, timeline: &[Value], user_id: &str) -> Vec<Value> {
    let senders: BTreeSet<&str> = timeline.iter().filter_map(|e| e["sender"].as_str()).chain([user_id]).collect();
    events
        .into_iter()
        .filter(|e| filter.matches_type(e["type"].as_str().unwrap_or_default()))
        .filter(|e| {
            !filter.lazy_load_members
                || e["type"] != "m.room.member"
                || e["state_key"].as_str().is_some_and(|key| senders.contains(key))
        })
        .collect()
}

/// With lazy-loaded members, the member event of each timeline sender that the state section
/// does not carry yet (as of the timeline's start), so that the client can name every sender.
async fn lazy_members(
    state: &AppState,
    room_id: &str,
    timeline: &RoomTimeline,
    state_events: &mut Vec<Value>,
) -> Result<(), MatrixError> {
    let Some(first) = &timeline.first else { return Ok(()) };
    let present: BTreeSet<String> = state_events
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
        .collect();
    let missing: BTreeSet<&str> =
        timeline.events.iter().filter_map(|e| e["sender"].as_str()).filter(|s| !present.contains(*s)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let at_start = state_before_event(state, room_id, first).await?;
    let ids: Vec<String> =
        missing.iter().filter_map(|s| at_start.get(&("m.room.member".to_owned(), (*s).to_owned())).cloned()).collect();
    for stored in state.storage.events(&ids).await? {
        let view = EventView::parse(&stored.json).map_err(RoomError::from)?;
        state_events.push(view.into_client_event(&stored.event_id, None));
    }
    Ok(())
}

/// The most unread events looked at when counting; clients show "99+" beyond this anyway.
const MAX_UNREAD_SCAN: i64 = 100;

/// Unread counts after the user's read receipt, following the default push rules: messages
/// from others notify, and highlight when they mention the user.
async fn unread(
    state: &AppState,
    room_id: &str,
    user_id: &str,
    position: i64,
) -> Result<UnreadNotifications, MatrixError> {
    let events = state.storage.unread_events(room_id, user_id, position, MAX_UNREAD_SCAN).await?;
    let localpart = user_id.trim_start_matches('@').split(':').next().unwrap_or_default().to_lowercase();
    let mut counts = UnreadNotifications::default();
    for stored in &events {
        let view = EventView::parse(&stored.json).map_err(RoomError::from)?;
        if view.sender == user_id || !matches!(view.kind.as_str(), "m.room.message" | "m.room.encrypted") {
            continue;
        }
        counts.notification_count += 1;
        let content = &view.content;
        let mentioned =
            content["m.mentions"]["user_ids"].as_array().is_some_and(|ids| ids.iter().any(|id| id == user_id))
                || content["body"].as_str().is_some_and(|body| body.to_lowercase().contains(&localpart));
        if mentioned {
            counts.highlight_count += 1;
        }
    }
    Ok(counts)
}

/// The state just before the timeline's first event (the current state when the timeline is
/// empty), minus what the client already had at `since`.
async fn state_before(
    state: &AppState,
    room_id: &str,
    first: &Option<StoredEvent>,
    since: Option<i64>,
) -> Result<Vec<Value>, MatrixError> {
    let before = match first {
        Some(first) => state_before_event(state, room_id, first).await?,
        None => state.storage.current_state_ids(room_id).await?,
    };
    let known = match since {
        Some(since) => state_at_position(state, room_id, since).await?,
        None => StateIds::new(),
    };
    let ids: Vec<String> =
        before.iter().filter(|(key, id)| known.get(*key) != Some(*id)).map(|(_, id)| id.clone()).collect();
    let mut events = Vec::with_capacity(ids.len());
    for stored in state.storage.events(&ids).await? {
        let view = EventView::parse(&stored.json).map_err(RoomError::from)?;
        events.push(view.into_client_event(&stored.event_id, None));
    }
    Ok(events)
}

/// Whether stored PDU JSON is a state event (has a `state_key`).
fn is_state_event(json: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        state_key: Option<&'a serde_json::value::RawValue>,
    }
    serde_json::from_str::<Probe<'_>>(json).is_ok_and(|probe| probe.state_key.is_some())
}

/// The room's state just before one of its timeline events.
async fn state_before_event(state: &AppState, room_id: &str, event: &StoredEvent) -> Result<StateIds, MatrixError> {
    // After an event that changes no state, the state is the state before it.
    if !is_state_event(&event.json) {
        return Ok(state.storage.state_at_group(event.state_group).await?);
    }
    // Recorded since rooms are shared with other servers: the state before a join over
    // federation is not the state after any earlier event of ours.
    match state.storage.state_before_group(&event.event_id).await? {
        Some(group) => Ok(state.storage.state_at_group(group).await?),
        None => state_at_position(state, room_id, event.stream_ordering - 1).await,
    }
}

/// The room's state after its last event at or before stream position `at`.
async fn state_at_position(state: &AppState, room_id: &str, at: i64) -> Result<StateIds, MatrixError> {
    match state.storage.room_events_between(room_id, 0, at, 1, true).await?.pop() {
        Some(event) => Ok(state.storage.state_at_group(event.state_group).await?),
        None => Ok(StateIds::new()),
    }
}

async fn invited_room(state: &AppState, room_id: &str, user_id: &str) -> Result<InvitedRoom, MatrixError> {
    let current = state.storage.current_state_ids(room_id).await?;
    if let Some(stripped) = state.storage.invite_state(room_id, user_id).await? {
        // An invite from another server to a room we are not in: its stripped state and the invite.
        let mut events: Vec<Value> = serde_json::from_str(&stripped).unwrap_or_default();
        let own = current.get(&("m.room.member".to_owned(), user_id.to_owned())).cloned();
        for stored in state.storage.events(&own.into_iter().collect::<Vec<_>>()).await? {
            let pdu = Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json).map_err(RoomError::from)?;
            events.push(pdu.to_stripped_state());
        }
        return Ok(InvitedRoom { invite_state: EventList { events } });
    }
    let mut ids: Vec<String> = current
        .iter()
        .filter(|((kind, _), _)| crate::rooms::STRIPPED_STATE_TYPES.contains(&kind.as_str()))
        .map(|(_, id)| id.clone())
        .collect();
    let own_member = current.get(&("m.room.member".to_owned(), user_id.to_owned())).cloned();
    ids.extend(own_member.clone());
    let mut events = Vec::new();
    let mut inviter = None;
    for stored in state.storage.events(&ids).await? {
        let pdu = Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json).map_err(RoomError::from)?;
        if Some(&stored.event_id) == own_member.as_ref() {
            inviter = Some(pdu.sender.to_string());
        }
        events.push(pdu.to_stripped_state());
    }
    // The inviter's member event, so the client can show who invited them; no other members.
    if let Some(id) = inviter.and_then(|inviter| current.get(&("m.room.member".to_owned(), inviter)).cloned()) {
        for stored in state.storage.events(&[id]).await? {
            let pdu = Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json).map_err(RoomError::from)?;
            events.push(pdu.to_stripped_state());
        }
    }
    Ok(InvitedRoom { invite_state: EventList { events } })
}

/// The user's membership in a room as of stream position `at` (empty when none).
async fn membership_at_position(
    state: &AppState,
    room_id: &str,
    user_id: &str,
    at: i64,
) -> Result<String, MatrixError> {
    let mut membership = String::new();
    for stored in state.storage.member_events(room_id, user_id).await? {
        if stored.stream_ordering > at {
            break;
        }
        let pdu = Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json).map_err(RoomError::from)?;
        membership = pdu.content_str("membership").unwrap_or_default();
    }
    Ok(membership)
}

async fn summary(state: &AppState, room_id: &str, user_id: &str) -> Result<RoomSummary, MatrixError> {
    let members = state.storage.members(room_id).await?;
    let count = |m: &str| members.iter().filter(|(_, membership)| membership == m).count() as i64;
    let heroes = members
        .iter()
        .filter(|(user, membership)| user != user_id && (membership == "join" || membership == "invite"))
        .take(5)
        .map(|(user, _)| user.clone())
        .collect();
    Ok(RoomSummary { heroes, joined_member_count: count("join"), invited_member_count: count("invite") })
}
