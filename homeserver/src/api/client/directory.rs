//! The room directory: aliases (`/directory/room/{roomAlias}`, `/rooms/{roomId}/aliases`),
//! directory visibility (`/directory/list/room/{roomId}`) and `/publicRooms`.

use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::login::Empty;
use super::rooms::{RoomVisibility, parse_room};
use crate::api::Tag;
use crate::api::auth::AuthedUser;
use crate::api::error::{ApiResult, ErrCode, MatrixError};
use crate::rooms::RoomError;
use crate::rooms::pdu::Pdu;
use crate::rooms::visibility;
use crate::state::AppState;
use crate::storage::{self, now_ms};

/// Directory endpoints.
#[derive(Default)]
pub struct DirectoryApi;

/// `PUT /directory/room/{roomAlias}` request body.
#[derive(Debug, Object)]
pub struct AliasTarget {
    /// The room the alias points to.
    pub room_id: String,
}

/// `GET /directory/room/{roomAlias}` response.
#[derive(Debug, Object)]
pub struct ResolvedAlias {
    /// The room.
    pub room_id: String,
    /// Servers that know the room.
    pub servers: Vec<String>,
}

/// `GET /rooms/{roomId}/aliases` response.
#[derive(Debug, Object)]
pub struct RoomAliases {
    /// The room's local aliases.
    pub aliases: Vec<String>,
}

/// A room's directory visibility.
#[derive(Debug, Object)]
pub struct DirectoryVisibility {
    /// `public` or `private`.
    pub visibility: RoomVisibility,
}

/// A room in the public directory.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct PublicRoom {
    /// The room ID.
    pub room_id: String,
    /// Joined members.
    pub num_joined_members: i64,
    /// Whether anyone may read the room without joining.
    pub world_readable: bool,
    /// Whether guests may join.
    pub guest_can_join: bool,
    /// The room name.
    pub name: Option<String>,
    /// The topic.
    pub topic: Option<String>,
    /// The canonical alias.
    pub canonical_alias: Option<String>,
    /// The avatar.
    pub avatar_url: Option<String>,
    /// The join rule.
    pub join_rule: Option<String>,
    /// The room type (e.g. `m.space`).
    pub room_type: Option<String>,
}

/// A page of the public directory.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct PublicRooms {
    /// The rooms.
    pub chunk: Vec<PublicRoom>,
    /// Token for the next page.
    pub next_batch: Option<String>,
    /// Token for the previous page.
    pub prev_batch: Option<String>,
    /// How many rooms the directory holds.
    pub total_room_count_estimate: Option<i64>,
}

/// The search of `POST /publicRooms`.
#[derive(Debug, Default, Object)]
pub struct PublicRoomsFilter {
    /// Text to find in names, topics and aliases.
    pub generic_search_term: Option<String>,
}

/// `POST /publicRooms` request body.
#[derive(Debug, Default, Object)]
pub struct PublicRoomsQuery {
    /// Page size.
    pub limit: Option<i64>,
    /// A `next_batch` or `prev_batch` token.
    pub since: Option<String>,
    /// The search.
    pub filter: Option<PublicRoomsFilter>,
    /// Another server's directory, asked over federation.
    pub server: Option<String>,
}

#[OpenApi(tag = "Tag::Rooms")]
impl DirectoryApi {
    /// `PUT /_matrix/client/v3/directory/room/{roomAlias}`
    ///
    /// Creates an alias on this server for a room the caller is in.
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3directoryroomroomalias>
    #[oai(path = "/_matrix/client/v3/directory/room/:roomAlias", method = "put", operation_id = "setRoomAlias")]
    async fn set_alias(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The alias, e.g. `#room:server`.
        #[oai(name = "roomAlias")]
        alias: Path<String>,
        body: Json<AliasTarget>,
    ) -> ApiResult<Json<Empty>> {
        let alias = local_alias(&state, &alias)?;
        let room_id = parse_room(&body.room_id)?;
        if state.storage.room(room_id.as_str()).await?.is_none() {
            return Err(MatrixError::not_found("Unknown room"));
        }
        if state.storage.membership(room_id.as_str(), &user.user_id).await?.is_none_or(|(m, _)| m != "join") {
            return Err(MatrixError::forbidden("You are not in this room"));
        }
        match state.storage.create_alias(&alias, room_id.as_str(), &user.user_id, now_ms()).await {
            Err(storage::Error::Conflict { .. }) => {
                Err(MatrixError::new(ErrCode::Unknown, StatusCode::CONFLICT, "Room alias already exists"))
            }
            other => Ok(other.map(|()| Json(Empty {}))?),
        }
    }

    /// `GET /_matrix/client/v3/directory/room/{roomAlias}`
    ///
    /// Resolves an alias to a room.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3directoryroomroomalias>
    #[oai(path = "/_matrix/client/v3/directory/room/:roomAlias", method = "get", operation_id = "getRoomIdByAlias")]
    async fn get_alias(
        &self,
        state: Data<&AppState>,
        /// The alias.
        #[oai(name = "roomAlias")]
        alias: Path<String>,
    ) -> ApiResult<Json<ResolvedAlias>> {
        let parsed = ruma_common::RoomAliasId::parse(&*alias)
            .map_err(|e| MatrixError::invalid_param(format!("Invalid alias: {e}")))?;
        let server = parsed.server_name().as_str();
        if server != state.config.server_name {
            return Ok(Json(remote_alias(&state, server, &alias).await?));
        }
        let (room_id, _) =
            state.storage.alias(&alias).await?.ok_or_else(|| MatrixError::not_found("Room alias not found"))?;
        let servers = resident_servers(&state, &room_id).await?;
        Ok(Json(ResolvedAlias { room_id, servers }))
    }

    /// `DELETE /_matrix/client/v3/directory/room/{roomAlias}`
    ///
    /// Removes an alias; allowed to its creator.
    /// <https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3directoryroomroomalias>
    #[oai(path = "/_matrix/client/v3/directory/room/:roomAlias", method = "delete", operation_id = "deleteRoomAlias")]
    async fn delete_alias(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The alias.
        #[oai(name = "roomAlias")]
        alias: Path<String>,
    ) -> ApiResult<Json<Empty>> {
        let (_, creator) =
            state.storage.alias(&alias).await?.ok_or_else(|| MatrixError::not_found("Room alias not found"))?;
        if creator != user.user_id {
            return Err(MatrixError::forbidden("Only the alias's creator may remove it"));
        }
        state.storage.delete_alias(&alias).await?;
        Ok(Json(Empty {}))
    }

    /// `GET /_matrix/client/v3/rooms/{roomId}/aliases`
    ///
    /// The room's local aliases.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3roomsroomidaliases>
    #[oai(path = "/_matrix/client/v3/rooms/:roomId/aliases", method = "get", operation_id = "getLocalAliases")]
    async fn room_aliases(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
    ) -> ApiResult<Json<RoomAliases>> {
        let room_id = parse_room(&room_id)?;
        // "Users who are in the room", or anyone for a world-readable room: not those who left,
        // although they keep a view of the history.
        if visibility::state_view(&state.storage, room_id.as_str(), &user.user_id).await?
            != visibility::StateView::Current
        {
            return Err(RoomError::Forbidden("you are not in this room".into()).into());
        }
        Ok(Json(RoomAliases { aliases: state.storage.room_aliases(room_id.as_str()).await? }))
    }

    /// `GET /_matrix/client/v3/directory/list/room/{roomId}`
    ///
    /// Whether the room is in the public directory.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3directorylistroomroomid>
    #[oai(
        path = "/_matrix/client/v3/directory/list/room/:roomId",
        method = "get",
        operation_id = "getRoomVisibilityOnDirectory"
    )]
    async fn get_listing(
        &self,
        state: Data<&AppState>,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
    ) -> ApiResult<Json<DirectoryVisibility>> {
        let room = state.storage.room(&room_id).await?.ok_or_else(|| MatrixError::not_found("Unknown room"))?;
        let visibility = if room.published { RoomVisibility::Public } else { RoomVisibility::Private };
        Ok(Json(DirectoryVisibility { visibility }))
    }

    /// `PUT /_matrix/client/v3/directory/list/room/{roomId}`
    ///
    /// Lists the room in the public directory or removes it; needs power to change the room's
    /// canonical alias.
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3directorylistroomroomid>
    #[oai(
        path = "/_matrix/client/v3/directory/list/room/:roomId",
        method = "put",
        operation_id = "setRoomVisibilityOnDirectory"
    )]
    async fn set_listing(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        body: Json<DirectoryVisibility>,
    ) -> ApiResult<Json<Empty>> {
        let room_id = parse_room(&room_id)?;
        if state.storage.room(room_id.as_str()).await?.is_none() {
            return Err(MatrixError::not_found("Unknown room"));
        }
        if !crate::rooms::power::can_send_state(&state, &room_id, &user.user_id, "m.room.canonical_alias").await? {
            return Err(MatrixError::forbidden("You need power to change the room's aliases"));
        }
        state.storage.set_published(room_id.as_str(), body.visibility == RoomVisibility::Public).await?;
        Ok(Json(Empty {}))
    }

    /// `GET /_matrix/client/v3/publicRooms`
    ///
    /// Pages through the public room directory, most populated rooms first.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3publicrooms>
    #[oai(path = "/_matrix/client/v3/publicRooms", method = "get", operation_id = "getPublicRooms")]
    async fn public_rooms(
        &self,
        state: Data<&AppState>,
        /// Page size.
        limit: Query<Option<i64>>,
        /// A pagination token.
        since: Query<Option<String>>,
        /// Another server's directory, asked over federation.
        server: Query<Option<String>>,
    ) -> ApiResult<Json<PublicRooms>> {
        let query = PublicRoomsQuery { limit: limit.0, since: since.0, filter: None, server: server.0 };
        directory_page(&state, query).await
    }

    /// `POST /_matrix/client/v3/publicRooms`
    ///
    /// Searches the public room directory.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3publicrooms>
    #[oai(path = "/_matrix/client/v3/publicRooms", method = "post", operation_id = "queryPublicRooms")]
    async fn search_public_rooms(
        &self,
        state: Data<&AppState>,
        _user: AuthedUser,
        /// Another server's directory, asked over federation.
        server: Query<Option<String>>,
        body: Json<PublicRoomsQuery>,
    ) -> ApiResult<Json<PublicRooms>> {
        let mut query = body.0;
        // The spec puts `server` in the query string; older clients sent it in the body.
        query.server = server.0.or(query.server);
        directory_page(&state, query).await
    }
}

/// The servers of a room's joined members, this one first.
pub(crate) async fn resident_servers(state: &AppState, room_id: &str) -> ApiResult<Vec<String>> {
    let mut servers = vec![state.config.server_name.clone()];
    for (user, membership) in state.storage.members(room_id).await? {
        let server = crate::federation::e2ee::server_of(&user);
        if membership == "join" && !servers.iter().any(|s| s == server) {
            servers.push(server.to_owned());
        }
    }
    Ok(servers)
}

/// Asks the alias's server which room it names.
pub(crate) async fn remote_alias(state: &AppState, server: &str, alias: &str) -> ApiResult<ResolvedAlias> {
    let query = serde_urlencoded::to_string([("room_alias", alias)]).map_err(|_| MatrixError::internal())?;
    let answer = state.federation()?.get(server, &format!("/_matrix/federation/v1/query/directory?{query}")).await?;
    let malformed =
        || MatrixError::new(ErrCode::Unknown, StatusCode::BAD_GATEWAY, format!("{server} sent a malformed answer"));
    let room_id =
        answer["room_id"].as_str().filter(|id| ruma_common::RoomId::parse(id).is_ok()).ok_or_else(malformed)?;
    let servers = answer["servers"].as_array().ok_or_else(malformed)?;
    let servers = servers.iter().filter_map(|s| s.as_str()).filter(|s| ruma_common::ServerName::parse(s).is_ok());
    Ok(ResolvedAlias { room_id: room_id.to_owned(), servers: servers.map(str::to_owned).collect() })
}

/// Another server's public room directory, over federation.
async fn remote_directory(state: &AppState, server: &str, query: &PublicRoomsQuery) -> ApiResult<Json<PublicRooms>> {
    let mut body = serde_json::json!({});
    if let Some(limit) = query.limit {
        body["limit"] = limit.into();
    }
    if let Some(since) = &query.since {
        body["since"] = since.clone().into();
    }
    if let Some(term) = query.filter.as_ref().and_then(|f| f.generic_search_term.clone()) {
        body["filter"] = serde_json::json!({ "generic_search_term": term });
    }
    let answer = state.federation()?.post(server, "/_matrix/federation/v1/publicRooms", &body).await?;
    poem_openapi::types::ParseFromJSON::parse_from_json(Some(answer)).map(Json).map_err(|_| {
        MatrixError::new(ErrCode::Unknown, StatusCode::BAD_GATEWAY, format!("{server} sent a malformed directory"))
    })
}

/// Checks that an alias is well-formed and belongs to this server.
fn local_alias(state: &AppState, alias: &str) -> Result<String, MatrixError> {
    let parsed = ruma_common::RoomAliasId::parse(alias)
        .map_err(|e| MatrixError::invalid_param(format!("Invalid alias: {e}")))?;
    if parsed.server_name().as_str() != state.config.server_name {
        return Err(MatrixError::invalid_param("Aliases must be on this server"));
    }
    Ok(parsed.to_string())
}

const MAX_DIRECTORY_PAGE: i64 = 500;

/// A page of a public room directory: ours, or (with `server`) another server's.
pub(crate) async fn directory_page(state: &AppState, query: PublicRoomsQuery) -> ApiResult<Json<PublicRooms>> {
    if let Some(server) = query.server.as_deref().filter(|s| *s != state.config.server_name) {
        return remote_directory(state, server, &query).await;
    }
    let term = query.filter.and_then(|f| f.generic_search_term).map(|t| t.to_lowercase()).filter(|t| !t.is_empty());
    let mut rooms = Vec::new();
    for room_id in state.storage.published_rooms().await? {
        let room = describe(state, &room_id).await?;
        let haystack = [&room.name, &room.topic, &room.canonical_alias]
            .iter()
            .filter_map(|f| f.as_deref())
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        if term.as_ref().is_none_or(|t| haystack.contains(t.as_str())) {
            rooms.push(room);
        }
    }
    rooms.sort_by(|a, b| b.num_joined_members.cmp(&a.num_joined_members).then_with(|| a.room_id.cmp(&b.room_id)));
    let total = rooms.len() as i64;
    let offset = match query.since.as_deref() {
        Some(token) => token
            .strip_prefix('p')
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| MatrixError::invalid_param("Invalid since token"))?,
        None => 0,
    };
    let limit = query.limit.unwrap_or(MAX_DIRECTORY_PAGE).clamp(1, MAX_DIRECTORY_PAGE);
    let chunk: Vec<PublicRoom> = rooms.into_iter().skip(offset as usize).take(limit as usize).collect();
    let next = offset + chunk.len() as i64;
    Ok(Json(PublicRooms {
        next_batch: (next < total).then(|| format!("p{next}")),
        prev_batch: (offset > 0).then(|| format!("p{}", (offset - limit).max(0))),
        chunk,
        total_room_count_estimate: Some(total),
    }))
}

async fn describe(state: &AppState, room_id: &str) -> Result<PublicRoom, MatrixError> {
    let current = state.storage.current_state_ids(room_id).await?;
    let field = |kind: &str, key: &str| {
        let id = current.get(&(kind.to_owned(), String::new())).cloned();
        let key = key.to_owned();
        async move {
            let Some(id) = id else { return Ok::<_, MatrixError>(None) };
            let Some(stored) = state.storage.event(&id).await? else { return Ok(None) };
            Ok(Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json)
                .map_err(RoomError::from)?
                .content_str(&key))
        }
    };
    let members = state.storage.members(room_id).await?;
    Ok(PublicRoom {
        room_id: room_id.to_owned(),
        num_joined_members: members.iter().filter(|(_, m)| m == "join").count() as i64,
        world_readable: field("m.room.history_visibility", "history_visibility").await?.as_deref()
            == Some("world_readable"),
        guest_can_join: field("m.room.guest_access", "guest_access").await?.as_deref() == Some("can_join"),
        name: field("m.room.name", "name").await?,
        topic: field("m.room.topic", "topic").await?,
        canonical_alias: field("m.room.canonical_alias", "alias").await?,
        avatar_url: field("m.room.avatar", "url").await?,
        join_rule: field("m.room.join_rules", "join_rule").await?,
        room_type: field("m.room.create", "type").await?,
    })
}
