//! Server-side key backup: `/room_keys/version[/{version}]` and `/room_keys/keys[/{roomId}[/{sessionId}]]`.
//! The server stores the client's encrypted session data and never decrypts it.
//! <https://spec.matrix.org/v1.19/client-server-api/#server-side-key-backups>

use std::collections::BTreeMap;

use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::login::Empty;
use super::rooms::JsonObject;
use crate::api::Tag;
use crate::api::auth::AuthedUser;
use crate::api::error::{ApiResult, ErrCode, MatrixError};
use crate::state::AppState;
use crate::storage::{BackupKey, BackupVersion};

/// Key backup endpoints.
#[derive(Default)]
pub struct KeyBackupApi;

/// `POST /room_keys/version` and `PUT /room_keys/version/{version}` request body.
#[derive(Debug, Object)]
pub struct BackupVersionRequest {
    /// The backup algorithm, e.g. `m.megolm_backup.v1.curve25519-aes-sha2`.
    pub algorithm: String,
    /// Algorithm-dependent data (e.g. the backup's public key).
    pub auth_data: JsonObject,
    /// With `PUT`: the version being updated, if given, must be the one in the path.
    pub version: Option<String>,
}

/// `POST /room_keys/version` response.
#[derive(Debug, Object)]
pub struct CreatedBackupVersion {
    /// The new version.
    pub version: String,
}

/// A backup version as `GET /room_keys/version` shows it.
#[derive(Debug, Object)]
#[oai(rename = "BackupVersion")]
pub struct BackupVersionInfo {
    /// The backup algorithm.
    pub algorithm: String,
    /// Algorithm-dependent data.
    pub auth_data: JsonObject,
    /// How many keys the backup holds.
    pub count: i64,
    /// Changes whenever the keys change.
    pub etag: String,
    /// The version.
    pub version: String,
}

/// One backed-up session key.
#[derive(Debug, Object)]
pub struct KeyBackupData {
    /// The first message index the key can decrypt.
    pub first_message_index: i64,
    /// How many times the key was forwarded.
    pub forwarded_count: i64,
    /// Whether the device the key came from was verified.
    pub is_verified: bool,
    /// The encrypted key, in the algorithm's format.
    pub session_data: JsonObject,
}

/// A room's backed-up keys: session ID → key.
#[derive(Debug, Default, Object)]
pub struct RoomKeyBackup {
    /// Session ID → key.
    pub sessions: BTreeMap<String, KeyBackupData>,
}

/// All backed-up keys: room ID → keys.
#[derive(Debug, Default, Object)]
pub struct RoomKeys {
    /// Room ID → keys.
    pub rooms: BTreeMap<String, RoomKeyBackup>,
}

/// The backup after a change of its keys.
#[derive(Debug, Object)]
pub struct RoomKeysUpdateResponse {
    /// How many keys the backup holds.
    pub count: i64,
    /// The backup's new etag.
    pub etag: String,
}

fn unknown_version() -> MatrixError {
    MatrixError::not_found("Unknown backup version")
}

/// Parses a version number; unknown for anything that is not one.
fn version_number(version: &str) -> Result<i64, MatrixError> {
    version.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(unknown_version)
}

/// The version, which must exist.
async fn existing(state: &AppState, user_id: &str, version: &str) -> Result<BackupVersion, MatrixError> {
    let number = version_number(version)?;
    state.storage.backup_version(user_id, Some(number)).await?.ok_or_else(unknown_version)
}

/// The version, which must exist and be the current (latest) one to take keys.
async fn current(state: &AppState, user_id: &str, version: &str) -> Result<BackupVersion, MatrixError> {
    let wanted = existing(state, user_id, version).await?;
    let latest = state.storage.backup_version(user_id, None).await?.ok_or_else(unknown_version)?;
    if latest.version != wanted.version {
        let mut err = MatrixError::new(
            ErrCode::WrongRoomKeysVersion,
            StatusCode::FORBIDDEN,
            "Keys may only be added to the current backup version",
        );
        err.current_version = Some(latest.version.to_string());
        return Err(err);
    }
    Ok(wanted)
}

fn info(version: BackupVersion) -> BackupVersionInfo {
    BackupVersionInfo {
        algorithm: version.algorithm,
        auth_data: serde_json::from_str(&version.auth_data).unwrap_or_default(),
        count: version.count,
        etag: version.etag.to_string(),
        version: version.version.to_string(),
    }
}

fn to_row(room_id: &str, session_id: &str, key: KeyBackupData) -> Result<BackupKey, MatrixError> {
    if key.first_message_index < 0 || key.forwarded_count < 0 {
        return Err(MatrixError::invalid_param("first_message_index and forwarded_count must not be negative"));
    }
    Ok(BackupKey {
        room_id: room_id.to_owned(),
        session_id: session_id.to_owned(),
        first_message_index: key.first_message_index,
        forwarded_count: key.forwarded_count,
        is_verified: key.is_verified,
        session_data: serde_json::to_string(&key.session_data).map_err(|e| MatrixError::bad_json(e.to_string()))?,
    })
}

fn from_row(key: BackupKey) -> (String, String, KeyBackupData) {
    let data = KeyBackupData {
        first_message_index: key.first_message_index,
        forwarded_count: key.forwarded_count,
        is_verified: key.is_verified,
        session_data: serde_json::from_str(&key.session_data).unwrap_or_default(),
    };
    (key.room_id, key.session_id, data)
}

async fn put_keys(
    state: &AppState,
    user: &AuthedUser,
    version: &str,
    keys: Vec<BackupKey>,
) -> ApiResult<Json<RoomKeysUpdateResponse>> {
    let version = current(state, &user.user_id, version).await?;
    let (etag, count) = state.storage.put_backup_keys(&user.user_id, version.version, &keys).await?;
    Ok(Json(RoomKeysUpdateResponse { count, etag: etag.to_string() }))
}

async fn delete_keys(
    state: &AppState,
    user: &AuthedUser,
    version: &str,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> ApiResult<Json<RoomKeysUpdateResponse>> {
    let version = existing(state, &user.user_id, version).await?;
    let (etag, count) = state.storage.delete_backup_keys(&user.user_id, version.version, room_id, session_id).await?;
    Ok(Json(RoomKeysUpdateResponse { count, etag: etag.to_string() }))
}

#[OpenApi(tag = "Tag::EndToEndEncryption")]
impl KeyBackupApi {
    /// `POST /_matrix/client/v3/room_keys/version`
    ///
    /// Creates a new backup version; it becomes the current one.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3room_keysversion>
    #[oai(path = "/_matrix/client/v3/room_keys/version", method = "post", operation_id = "postRoomKeysVersion")]
    async fn create_version(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        body: Json<BackupVersionRequest>,
    ) -> ApiResult<Json<CreatedBackupVersion>> {
        let auth_data = serde_json::to_string(&body.0.auth_data).map_err(|e| MatrixError::bad_json(e.to_string()))?;
        let version = state.storage.create_backup_version(&user.user_id, &body.0.algorithm, &auth_data).await?;
        Ok(Json(CreatedBackupVersion { version: version.to_string() }))
    }

    /// `GET /_matrix/client/v3/room_keys/version`
    ///
    /// The current backup version.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3room_keysversion>
    #[oai(path = "/_matrix/client/v3/room_keys/version", method = "get", operation_id = "getRoomKeysVersionCurrent")]
    async fn current_version(&self, state: Data<&AppState>, user: AuthedUser) -> ApiResult<Json<BackupVersionInfo>> {
        let version = state.storage.backup_version(&user.user_id, None).await?;
        Ok(Json(info(version.ok_or_else(|| MatrixError::not_found("No current backup version"))?)))
    }

    /// `GET /_matrix/client/v3/room_keys/version/{version}`
    ///
    /// A backup version.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3room_keysversionversion>
    #[oai(path = "/_matrix/client/v3/room_keys/version/:version", method = "get", operation_id = "getRoomKeysVersion")]
    async fn get_version(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The backup version.
        version: Path<String>,
    ) -> ApiResult<Json<BackupVersionInfo>> {
        Ok(Json(info(existing(&state, &user.user_id, &version).await?)))
    }

    /// `PUT /_matrix/client/v3/room_keys/version/{version}`
    ///
    /// Updates a backup version's `auth_data`; the algorithm cannot change.
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3room_keysversionversion>
    #[oai(path = "/_matrix/client/v3/room_keys/version/:version", method = "put", operation_id = "putRoomKeysVersion")]
    async fn update_version(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The backup version.
        version: Path<String>,
        body: Json<BackupVersionRequest>,
    ) -> ApiResult<Json<Empty>> {
        let stored = existing(&state, &user.user_id, &version).await?;
        if body.0.version.as_deref().is_some_and(|v| v != version.0) {
            return Err(MatrixError::invalid_param("The version in the body must be the one in the path"));
        }
        if body.0.algorithm != stored.algorithm {
            return Err(MatrixError::invalid_param("The algorithm of a backup version cannot change"));
        }
        let auth_data = serde_json::to_string(&body.0.auth_data).map_err(|e| MatrixError::bad_json(e.to_string()))?;
        state.storage.update_backup_version(&user.user_id, stored.version, &auth_data).await?;
        Ok(Json(Empty {}))
    }

    /// `DELETE /_matrix/client/v3/room_keys/version/{version}`
    ///
    /// Deletes a backup version and its keys.
    /// <https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3room_keysversionversion>
    #[oai(
        path = "/_matrix/client/v3/room_keys/version/:version",
        method = "delete",
        operation_id = "deleteRoomKeysVersion"
    )]
    async fn delete_version(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The backup version.
        version: Path<String>,
    ) -> ApiResult<Json<Empty>> {
        let number = version_number(&version)?;
        state.storage.delete_backup_version(&user.user_id, number).await.map_err(|e| match e {
            crate::storage::Error::NotFound => unknown_version(),
            other => other.into(),
        })?;
        Ok(Json(Empty {}))
    }

    /// `PUT /_matrix/client/v3/room_keys/keys`
    ///
    /// Stores keys in the current backup version; a key replaces the stored one only if it is
    /// better (verified, decrypts more, forwarded less).
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3room_keyskeys>
    #[oai(path = "/_matrix/client/v3/room_keys/keys", method = "put", operation_id = "putRoomKeys")]
    async fn put_all(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The backup version (the current one).
        version: Query<String>,
        body: Json<RoomKeys>,
    ) -> ApiResult<Json<RoomKeysUpdateResponse>> {
        let mut keys = Vec::new();
        for (room_id, room) in body.0.rooms {
            for (session_id, key) in room.sessions {
                keys.push(to_row(&room_id, &session_id, key)?);
            }
        }
        put_keys(&state, &user, &version, keys).await
    }

    /// `GET /_matrix/client/v3/room_keys/keys`
    ///
    /// Every key of a backup version.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3room_keyskeys>
    #[oai(path = "/_matrix/client/v3/room_keys/keys", method = "get", operation_id = "getRoomKeys")]
    async fn get_all(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The backup version.
        version: Query<String>,
    ) -> ApiResult<Json<RoomKeys>> {
        let stored = existing(&state, &user.user_id, &version).await?;
        let mut keys = RoomKeys::default();
        for row in state.storage.backup_keys(&user.user_id, stored.version, None, None).await? {
            let (room_id, session_id, data) = from_row(row);
            keys.rooms.entry(room_id).or_default().sessions.insert(session_id, data);
        }
        Ok(Json(keys))
    }

    /// `DELETE /_matrix/client/v3/room_keys/keys`
    ///
    /// Deletes every key of a backup version.
    /// <https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3room_keyskeys>
    #[oai(path = "/_matrix/client/v3/room_keys/keys", method = "delete", operation_id = "deleteRoomKeys")]
    async fn delete_all(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The backup version.
        version: Query<String>,
    ) -> ApiResult<Json<RoomKeysUpdateResponse>> {
        delete_keys(&state, &user, &version, None, None).await
    }

    /// `PUT /_matrix/client/v3/room_keys/keys/{roomId}`
    ///
    /// Stores keys of one room in the current backup version.
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3room_keyskeysroomid>
    #[oai(path = "/_matrix/client/v3/room_keys/keys/:roomId", method = "put", operation_id = "putRoomKeysByRoomId")]
    async fn put_room(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// The backup version (the current one).
        version: Query<String>,
        body: Json<RoomKeyBackup>,
    ) -> ApiResult<Json<RoomKeysUpdateResponse>> {
        let keys = body
            .0
            .sessions
            .into_iter()
            .map(|(session, key)| to_row(&room_id, &session, key))
            .collect::<Result<_, _>>()?;
        put_keys(&state, &user, &version, keys).await
    }

    /// `GET /_matrix/client/v3/room_keys/keys/{roomId}`
    ///
    /// The keys of one room (`{"sessions": {}}` when there are none).
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3room_keyskeysroomid>
    #[oai(path = "/_matrix/client/v3/room_keys/keys/:roomId", method = "get", operation_id = "getRoomKeysByRoomId")]
    async fn get_room(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// The backup version.
        version: Query<String>,
    ) -> ApiResult<Json<RoomKeyBackup>> {
        let stored = existing(&state, &user.user_id, &version).await?;
        let mut keys = RoomKeyBackup::default();
        for row in state.storage.backup_keys(&user.user_id, stored.version, Some(&room_id), None).await? {
            let (_, session_id, data) = from_row(row);
            keys.sessions.insert(session_id, data);
        }
        Ok(Json(keys))
    }

    /// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}`
    ///
    /// Deletes the keys of one room.
    /// <https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3room_keyskeysroomid>
    #[oai(
        path = "/_matrix/client/v3/room_keys/keys/:roomId",
        method = "delete",
        operation_id = "deleteRoomKeysByRoomId"
    )]
    async fn delete_room(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// The backup version.
        version: Query<String>,
    ) -> ApiResult<Json<RoomKeysUpdateResponse>> {
        delete_keys(&state, &user, &version, Some(&room_id), None).await
    }

    /// `PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
    ///
    /// Stores one session's key in the current backup version.
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3room_keyskeysroomidsessionid>
    #[oai(
        path = "/_matrix/client/v3/room_keys/keys/:roomId/:sessionId",
        method = "put",
        operation_id = "putRoomKeyBySessionId"
    )]
    async fn put_session(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// The Megolm session.
        #[oai(name = "sessionId")]
        session_id: Path<String>,
        /// The backup version (the current one).
        version: Query<String>,
        body: Json<KeyBackupData>,
    ) -> ApiResult<Json<RoomKeysUpdateResponse>> {
        let key = to_row(&room_id, &session_id, body.0)?;
        put_keys(&state, &user, &version, vec![key]).await
    }

    /// `GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
    ///
    /// One session's key.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3room_keyskeysroomidsessionid>
    #[oai(
        path = "/_matrix/client/v3/room_keys/keys/:roomId/:sessionId",
        method = "get",
        operation_id = "getRoomKeyBySessionId"
    )]
    async fn get_session(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// The Megolm session.
        #[oai(name = "sessionId")]
        session_id: Path<String>,
        /// The backup version.
        version: Query<String>,
    ) -> ApiResult<Json<KeyBackupData>> {
        let stored = existing(&state, &user.user_id, &version).await?;
        let row = state.storage.backup_keys(&user.user_id, stored.version, Some(&room_id), Some(&session_id)).await?;
        let row = row.into_iter().next().ok_or_else(|| MatrixError::not_found("Key not found"))?;
        Ok(Json(from_row(row).2))
    }

    /// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
    ///
    /// Deletes one session's key.
    /// <https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3room_keyskeysroomidsessionid>
    #[oai(
        path = "/_matrix/client/v3/room_keys/keys/:roomId/:sessionId",
        method = "delete",
        operation_id = "deleteRoomKeyBySessionId"
    )]
    async fn delete_session(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// The Megolm session.
        #[oai(name = "sessionId")]
        session_id: Path<String>,
        /// The backup version.
        version: Query<String>,
    ) -> ApiResult<Json<RoomKeysUpdateResponse>> {
        delete_keys(&state, &user, &version, Some(&room_id), Some(&session_id)).await
    }
}
