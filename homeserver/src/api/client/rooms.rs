//! Creating rooms and changing membership: `POST /createRoom`, `POST /join/{roomIdOrAlias}`,
//! `POST /rooms/{roomId}/join|leave|invite|kick|ban|unban|forget`, `GET /joined_rooms`.

use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use ruma_common::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::login::Empty;
use crate::api::Tag;
use crate::api::auth::AuthedUser;
use crate::api::error::{ApiResult, ErrCode, MatrixError};
use crate::rooms::create::{self, NewRoom, Preset};
use crate::rooms::membership::{self, Change};
use crate::state::AppState;

/// A JSON object of any shape (event content, overrides).
pub type JsonObject = std::collections::BTreeMap<String, serde_json::Value>;

/// Room creation and membership endpoints.
#[derive(Default)]
pub struct RoomsApi;

/// `visibility` of `createRoom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum RoomVisibility {
    /// Listed in the public room directory.
    Public,
    /// Not listed.
    Private,
}

/// `preset` of `createRoom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum RoomPreset {
    /// Invite-only.
    PrivateChat,
    /// Invite-only; invitees get the creator's power level.
    TrustedPrivateChat,
    /// Anyone may join.
    PublicChat,
}

/// A state event for `initial_state`.
#[derive(Debug, Object)]
pub struct InitialStateEvent {
    /// The event type.
    #[oai(rename = "type")]
    pub kind: String,
    /// The state key; defaults to the empty string.
    pub state_key: Option<String>,
    /// The content.
    pub content: JsonObject,
}

/// `POST /createRoom` request body.
#[derive(Debug, Object)]
pub struct CreateRoomRequest {
    /// Whether to list the room in the public directory. Defaults to `private`.
    pub visibility: Option<RoomVisibility>,
    /// Localpart of an alias to create, e.g. `foo` for `#foo:server`.
    pub room_alias_name: Option<String>,
    /// The room name.
    pub name: Option<String>,
    /// The room topic.
    pub topic: Option<String>,
    /// Users to invite.
    pub invite: Option<Vec<String>>,
    /// The room version; the server's default when absent.
    pub room_version: Option<String>,
    /// Extra content for the `m.room.create` event.
    pub creation_content: Option<JsonObject>,
    /// State events to send after the preset's.
    pub initial_state: Option<Vec<InitialStateEvent>>,
    /// The preset; by default from `visibility`.
    pub preset: Option<RoomPreset>,
    /// Whether the invites are for a direct chat.
    pub is_direct: Option<bool>,
    /// Keys overriding the default power levels.
    pub power_level_content_override: Option<JsonObject>,
}

/// A response naming a room.
#[derive(Debug, Object)]
pub struct RoomIdResponse {
    /// The room ID.
    pub room_id: String,
}

/// A body with an optional reason.
#[derive(Debug, Default, Object)]
pub struct ReasonBody {
    /// Why; shown to other members.
    pub reason: Option<String>,
}

/// A body naming a target user.
#[derive(Debug, Object)]
pub struct TargetBody {
    /// The user to act on.
    pub user_id: String,
    /// Why; shown to other members.
    pub reason: Option<String>,
}

/// `GET /joined_rooms` response.
#[derive(Debug, Object)]
pub struct JoinedRooms {
    /// The rooms the user is joined to.
    pub joined_rooms: Vec<String>,
}

#[OpenApi(tag = "Tag::Rooms")]
impl RoomsApi {
    /// `POST /_matrix/client/v3/createRoom`
    ///
    /// Creates a room: create event, creator's join, power levels, alias, preset, initial
    /// state, name, topic and invites, in the spec's order.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3createroom>
    #[oai(path = "/_matrix/client/v3/createRoom", method = "post", operation_id = "createRoom")]
    async fn create_room(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        body: Json<CreateRoomRequest>,
    ) -> ApiResult<Json<RoomIdResponse>> {
        let body = body.0;
        let creator = parse_user(&user.user_id)?;
        let invite = body.invite.unwrap_or_default().iter().map(|u| parse_user(u)).collect::<Result<Vec<_>, _>>()?;
        let initial_state = body
            .initial_state
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                if matches!(e.kind.as_str(), "m.room.create" | "m.room.member") {
                    return Err(MatrixError::new(
                        ErrCode::InvalidRoomState,
                        StatusCode::BAD_REQUEST,
                        format!("{} cannot be part of initial_state", e.kind),
                    ));
                }
                Ok((
                    e.kind,
                    e.state_key.unwrap_or_default(),
                    serde_json::Value::Object(e.content.into_iter().collect()),
                ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let new = NewRoom {
            preset: body.preset.map(|p| match p {
                RoomPreset::PrivateChat => Preset::PrivateChat,
                RoomPreset::TrustedPrivateChat => Preset::TrustedPrivateChat,
                RoomPreset::PublicChat => Preset::PublicChat,
            }),
            public: body.visibility == Some(RoomVisibility::Public),
            name: body.name,
            topic: body.topic,
            invite,
            is_direct: body.is_direct.unwrap_or(false),
            initial_state,
            alias_localpart: body.room_alias_name,
            power_level_override: body.power_level_content_override.map(|o| o.into_iter().collect()),
            creation_content: body.creation_content.map(|o| o.into_iter().collect()),
            room_version: body.room_version,
        };
        let remote: Vec<OwnedUserId> = new
            .invite
            .iter()
            .filter(|u| u.server_name().as_str() != state.config.server_name && **u != creator)
            .cloned()
            .collect();
        let is_direct = new.is_direct;
        let room_id = create::create_room(&state, &creator, new).await?;
        // Users of other servers: their servers sign the invites. A server that is down does
        // not undo the room; the invite can be sent again.
        for invitee in remote {
            let template = crate::rooms::create::member_template(&invitee, "invite", &Default::default(), is_direct);
            if let Err(err) = crate::federation::rooms::invite(&state, &room_id, &creator, template).await {
                tracing::warn!(%room_id, %invitee, error = %err, "inviting a user of another server failed");
            }
        }
        Ok(Json(RoomIdResponse { room_id: room_id.to_string() }))
    }

    /// `POST /_matrix/client/v3/join/{roomIdOrAlias}`
    ///
    /// Joins a room by ID or alias.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3joinroomidoralias>
    #[oai(path = "/_matrix/client/v3/join/:roomIdOrAlias", method = "post", operation_id = "joinRoom")]
    async fn join(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room ID or alias to join.
        #[oai(name = "roomIdOrAlias")]
        room: Path<String>,
        /// Servers to join a room of other servers through.
        via: Query<Vec<String>>,
        /// Servers to join through (the older name of `via`).
        server_name: Query<Vec<String>>,
        body: Json<ReasonBody>,
    ) -> ApiResult<Json<RoomIdResponse>> {
        state.limits.join(&user.user_id)?;
        let (room_id, mut servers) = resolve_room_and_servers(&state, &room).await?;
        servers.extend(via.0.into_iter().chain(server_name.0));
        join_room(&state, &user, &room_id, &servers, body.0.reason).await
    }

    /// `POST /_matrix/client/v3/rooms/{roomId}/join`
    ///
    /// Joins a room by ID.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidjoin>
    #[oai(path = "/_matrix/client/v3/rooms/:roomId/join", method = "post", operation_id = "joinRoomById")]
    async fn join_by_id(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room to join.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        body: Json<ReasonBody>,
    ) -> ApiResult<Json<RoomIdResponse>> {
        state.limits.join(&user.user_id)?;
        let room_id = parse_room(&room_id)?;
        join_room(&state, &user, &room_id, &[], body.0.reason).await
    }

    /// `POST /_matrix/client/v3/rooms/{roomId}/leave`
    ///
    /// Leaves a room, or rejects an invite.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidleave>
    #[oai(path = "/_matrix/client/v3/rooms/:roomId/leave", method = "post", operation_id = "leaveRoom")]
    async fn leave(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room to leave.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        body: Json<ReasonBody>,
    ) -> ApiResult<Json<Empty>> {
        let me = parse_user(&user.user_id)?;
        let room_id = parse_room(&room_id)?;
        if state.federation_client.is_some()
            && !state.storage.is_resident(room_id.as_str(), &state.config.server_name).await?
        {
            // An invite to (or membership in) a room we are not in: the room's servers hear of it.
            let mut extra = serde_json::Map::new();
            if let Some(reason) = body.0.reason {
                extra.insert("reason".into(), reason.into());
            }
            let servers = servers_to_ask(&state, &room_id, &me).await?;
            crate::federation::rooms::leave(&state, &room_id, &me, &servers, extra).await?;
            return Ok(Json(Empty {}));
        }
        membership::change(&state, &room_id, &me, &me, Change::Leave, body.0.reason).await?;
        Ok(Json(Empty {}))
    }

    /// `POST /_matrix/client/v3/rooms/{roomId}/invite`
    ///
    /// Invites a user.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidinvite>
    #[oai(path = "/_matrix/client/v3/rooms/:roomId/invite", method = "post", operation_id = "inviteUser")]
    async fn invite(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        body: Json<TargetBody>,
    ) -> ApiResult<Json<Empty>> {
        act_on(&state, &user, &room_id, body.0, Change::Invite).await
    }

    /// `POST /_matrix/client/v3/rooms/{roomId}/kick`
    ///
    /// Removes a user from the room.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidkick>
    #[oai(path = "/_matrix/client/v3/rooms/:roomId/kick", method = "post", operation_id = "kick")]
    async fn kick(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        body: Json<TargetBody>,
    ) -> ApiResult<Json<Empty>> {
        act_on(&state, &user, &room_id, body.0, Change::Kick).await
    }

    /// `POST /_matrix/client/v3/rooms/{roomId}/ban`
    ///
    /// Bans a user.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidban>
    #[oai(path = "/_matrix/client/v3/rooms/:roomId/ban", method = "post", operation_id = "ban")]
    async fn ban(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        body: Json<TargetBody>,
    ) -> ApiResult<Json<Empty>> {
        act_on(&state, &user, &room_id, body.0, Change::Ban).await
    }

    /// `POST /_matrix/client/v3/rooms/{roomId}/unban`
    ///
    /// Lifts a ban.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidunban>
    #[oai(path = "/_matrix/client/v3/rooms/:roomId/unban", method = "post", operation_id = "unban")]
    async fn unban(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        body: Json<TargetBody>,
    ) -> ApiResult<Json<Empty>> {
        act_on(&state, &user, &room_id, body.0, Change::Unban).await
    }

    /// `POST /_matrix/client/v3/rooms/{roomId}/forget`
    ///
    /// Forgets a room the user has left: it no longer appears in their sync.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidforget>
    #[oai(path = "/_matrix/client/v3/rooms/:roomId/forget", method = "post", operation_id = "forgetRoom")]
    async fn forget(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
    ) -> ApiResult<Json<Empty>> {
        let room_id = parse_room(&room_id)?;
        match state.storage.membership(room_id.as_str(), &user.user_id).await? {
            Some((m, _)) if m == "join" || m == "invite" => {
                return Err(MatrixError::new(
                    ErrCode::Unknown,
                    StatusCode::BAD_REQUEST,
                    "Leave the room before forgetting it",
                ));
            }
            None => return Err(MatrixError::not_found("You were never in this room")),
            Some(_) => {}
        }
        state.storage.set_forgotten(&user.user_id, room_id.as_str(), true).await?;
        Ok(Json(Empty {}))
    }

    /// `GET /_matrix/client/v3/joined_rooms`
    ///
    /// The rooms the user is joined to.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3joined_rooms>
    #[oai(path = "/_matrix/client/v3/joined_rooms", method = "get", operation_id = "getJoinedRooms")]
    async fn joined_rooms(&self, state: Data<&AppState>, user: AuthedUser) -> ApiResult<Json<JoinedRooms>> {
        let rooms = state.storage.rooms_with_membership(&user.user_id, "join").await?;
        Ok(Json(JoinedRooms { joined_rooms: rooms.into_iter().map(|(room, _)| room).collect() }))
    }
}

async fn join_room(
    state: &AppState,
    user: &AuthedUser,
    room_id: &RoomId,
    servers: &[String],
    reason: Option<String>,
) -> ApiResult<Json<RoomIdResponse>> {
    let me = parse_user(&user.user_id)?;
    if state.federation_client.is_none()
        || state.storage.is_resident(room_id.as_str(), &state.config.server_name).await?
    {
        membership::change(state, room_id, &me, &me, Change::Join, reason).await?;
        return Ok(Json(RoomIdResponse { room_id: room_id.to_string() }));
    }
    // A room of other servers: join through one of them.
    let mut candidates = servers.to_vec();
    candidates.extend(servers_to_ask(state, room_id, &me).await?);
    candidates.retain(|s| s != &state.config.server_name && ruma_common::ServerName::parse(s).is_ok());
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|s| seen.insert(s.clone()));
    if candidates.is_empty() {
        return Err(MatrixError::not_found("Unknown room, and no server to join it through"));
    }
    let mut extra = serde_json::Map::new();
    for (field, value) in state.storage.profile(me.as_str()).await? {
        if (field == "displayname" || field == "avatar_url") && value.is_string() {
            extra.insert(field, value);
        }
    }
    if let Some(reason) = reason {
        extra.insert("reason".into(), reason.into());
    }
    crate::federation::rooms::join(state, room_id, &me, &candidates, extra).await?;
    state.storage.set_forgotten(me.as_str(), room_id.as_str(), false).await?;
    Ok(Json(RoomIdResponse { room_id: room_id.to_string() }))
}

/// Servers that may know a room we are not in: the inviter's (if the user is invited) and the
/// one named in the room ID (room versions before 12).
async fn servers_to_ask(state: &AppState, room_id: &RoomId, user: &UserId) -> ApiResult<Vec<String>> {
    let mut servers = Vec::new();
    if let Some((_, event_id)) = state.storage.membership(room_id.as_str(), user.as_str()).await?
        && let Some(event) = state.storage.event(&event_id).await?
        && let Ok(value) = serde_json::from_str::<serde_json::Value>(&event.json)
        && let Some(sender) = value["sender"].as_str()
    {
        servers.push(crate::federation::e2ee::server_of(sender).to_owned());
    }
    if let Some(server) = room_id.server_name() {
        servers.push(server.to_string());
    }
    Ok(servers)
}

async fn act_on(
    state: &AppState,
    user: &AuthedUser,
    room_id: &str,
    body: TargetBody,
    change: Change,
) -> ApiResult<Json<Empty>> {
    let me = parse_user(&user.user_id)?;
    let target = parse_user(&body.user_id)?;
    let room_id = parse_room(room_id)?;
    if change == Change::Invite
        && target.server_name().as_str() != state.config.server_name
        && state.federation_client.is_some()
    {
        // The invitee's server must sign the invite before it enters the room.
        let mut template = crate::rooms::create::member_template(&target, "invite", &Default::default(), false);
        if let Some(reason) = body.reason {
            template.content["reason"] = reason.into();
        }
        crate::federation::rooms::invite(state, &room_id, &me, template).await?;
        return Ok(Json(Empty {}));
    }
    membership::change(state, &room_id, &me, &target, change, body.reason).await?;
    Ok(Json(Empty {}))
}

/// A room ID or alias to a room ID, with the servers an alias's server says are in the room.
pub async fn resolve_room_and_servers(state: &AppState, room: &str) -> Result<(OwnedRoomId, Vec<String>), MatrixError> {
    if !room.starts_with('#') {
        return Ok((parse_room(room)?, Vec::new()));
    }
    let alias = ruma_common::RoomAliasId::parse(room)
        .map_err(|e| MatrixError::invalid_param(format!("Invalid room alias {room:?}: {e}")))?;
    let server = alias.server_name().as_str();
    if server != state.config.server_name && state.federation_client.is_some() {
        let resolved = super::directory::remote_alias(state, server, alias.as_str()).await?;
        let mut servers = vec![server.to_owned()];
        servers.extend(resolved.servers);
        return Ok((parse_room(&resolved.room_id)?, servers));
    }
    let (room_id, _) = state.storage.alias(room).await?.ok_or_else(|| MatrixError::not_found("Unknown room alias"))?;
    Ok((parse_room(&room_id)?, Vec::new()))
}

/// Parses a room ID from a request.
pub fn parse_room(room_id: &str) -> Result<OwnedRoomId, MatrixError> {
    RoomId::parse(room_id).map_err(|e| MatrixError::invalid_param(format!("Invalid room ID {room_id:?}: {e}")))
}

/// Parses a user ID from a request.
pub fn parse_user(user_id: &str) -> Result<OwnedUserId, MatrixError> {
    UserId::parse(user_id).map_err(|e| MatrixError::invalid_param(format!("Invalid user ID {user_id:?}: {e}")))
}
