//! Profiles: `GET /profile/{userId}` and `GET/PUT/DELETE /profile/{userId}/{keyName}`.
//!
//! Profile fields are stored as JSON, so `displayname`, `avatar_url`, `m.tz` and custom
//! namespaced fields share one code path.

use std::collections::BTreeMap;

use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use serde_json::Value;

use super::login::Empty;
use crate::api::Tag;
use crate::api::auth::AuthedUser;
use crate::api::error::{ApiResult, ErrCode, MatrixError};
use crate::state::AppState;

/// The spec's limit on a whole profile, serialized.
const MAX_PROFILE_BYTES: usize = 64 * 1024;
/// The spec's limit on a profile key.
const MAX_KEY_BYTES: usize = 255;

/// The server of `user_id` when it is not this one.
fn remote_server(state: &AppState, user_id: &str) -> Option<String> {
    ruma_common::UserId::parse(user_id).ok()?;
    let server = crate::federation::e2ee::server_of(user_id);
    (server != state.config.server_name).then(|| server.to_owned())
}

/// Another server's user's profile (or one field of it), over federation.
async fn remote_profile(state: &AppState, server: &str, user_id: &str, field: Option<&str>) -> ApiResult<Profile> {
    let mut query = vec![("user_id", user_id)];
    query.extend(field.map(|field| ("field", field)));
    let query = serde_urlencoded::to_string(query).map_err(|_| MatrixError::internal())?;
    let path = format!("/_matrix/federation/v1/query/profile?{query}");
    let profile = state.federation()?.get(server, &path).await?;
    serde_json::from_value(profile).map_err(|_| {
        MatrixError::new(ErrCode::Unknown, StatusCode::BAD_GATEWAY, format!("{server} sent a malformed profile"))
    })
}

/// Profile endpoints.
#[derive(Default)]
pub struct ProfileApi;

type Profile = BTreeMap<String, Value>;

#[OpenApi(tag = "Tag::UserData")]
impl ProfileApi {
    /// `GET /_matrix/client/v3/profile/{userId}`
    ///
    /// Every profile field of a user.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3profileuserid>
    #[oai(path = "/_matrix/client/v3/profile/:userId", method = "get", operation_id = "getUserProfile")]
    async fn profile(
        &self,
        state: Data<&AppState>,
        /// The user whose profile to get.
        #[oai(name = "userId")]
        user_id: Path<String>,
    ) -> ApiResult<Json<Profile>> {
        if let Some(server) = remote_server(&state, &user_id) {
            return Ok(Json(remote_profile(&state, &server, &user_id, None).await?));
        }
        if !state.storage.user_exists(&user_id).await? {
            return Err(MatrixError::not_found("Profile not found"));
        }
        Ok(Json(state.storage.profile(&user_id).await?))
    }

    /// `GET /_matrix/client/v3/profile/{userId}/{keyName}`
    ///
    /// One profile field of a user, as `{keyName: value}`.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3profileuseridkeyname>
    #[oai(path = "/_matrix/client/v3/profile/:userId/:keyName", method = "get", operation_id = "getProfileField")]
    async fn field(
        &self,
        state: Data<&AppState>,
        /// The user whose profile field to get.
        #[oai(name = "userId")]
        user_id: Path<String>,
        /// The field, e.g. `displayname`.
        #[oai(name = "keyName")]
        key_name: Path<String>,
    ) -> ApiResult<Json<Profile>> {
        let profile = match remote_server(&state, &user_id) {
            Some(server) => remote_profile(&state, &server, &user_id, Some(&key_name)).await?,
            None => state.storage.profile(&user_id).await?,
        };
        match profile.get(key_name.as_str()) {
            Some(value) => Ok(Json(BTreeMap::from([(key_name.0, value.clone())]))),
            None => Err(MatrixError::not_found("Profile field not found")),
        }
    }

    /// `PUT /_matrix/client/v3/profile/{userId}/{keyName}`
    ///
    /// Sets one of the caller's own profile fields; the body is `{keyName: value}`.
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3profileuseridkeyname>
    #[oai(path = "/_matrix/client/v3/profile/:userId/:keyName", method = "put", operation_id = "setProfileField")]
    async fn set_field(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The user whose profile field to set: the caller.
        #[oai(name = "userId")]
        user_id: Path<String>,
        /// The field, e.g. `displayname`.
        #[oai(name = "keyName")]
        key_name: Path<String>,
        body: Json<Profile>,
    ) -> ApiResult<Json<Empty>> {
        check_own_profile(&user, &user_id)?;
        check_key(&key_name)?;
        let mut body = body.0;
        let value = body.remove(key_name.as_str()).ok_or_else(|| {
            MatrixError::new(
                ErrCode::MissingParam,
                StatusCode::BAD_REQUEST,
                format!("The body has no `{}` property", *key_name),
            )
        })?;
        check_value(&key_name, &value)?;

        let mut profile = state.storage.profile(&user.user_id).await?;
        profile.insert(key_name.0.clone(), value.clone());
        if serde_json::to_vec(&profile).map_or(usize::MAX, |v| v.len()) > MAX_PROFILE_BYTES {
            return Err(MatrixError::new(
                ErrCode::ProfileTooLarge,
                StatusCode::BAD_REQUEST,
                "The profile would exceed 64 KiB",
            ));
        }
        state.storage.set_profile_field(&user.user_id, &key_name, &value.to_string()).await?;
        Ok(Json(Empty {}))
    }

    /// `DELETE /_matrix/client/v3/profile/{userId}/{keyName}`
    ///
    /// Removes one of the caller's own profile fields.
    /// <https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3profileuseridkeyname>
    #[oai(path = "/_matrix/client/v3/profile/:userId/:keyName", method = "delete", operation_id = "deleteProfileField")]
    async fn delete_field(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The user whose profile field to delete: the caller.
        #[oai(name = "userId")]
        user_id: Path<String>,
        /// The field, e.g. `m.tz`.
        #[oai(name = "keyName")]
        key_name: Path<String>,
    ) -> ApiResult<Json<Empty>> {
        check_own_profile(&user, &user_id)?;
        check_key(&key_name)?;
        state.storage.delete_profile_field(&user.user_id, &key_name).await?;
        Ok(Json(Empty {}))
    }
}

fn check_own_profile(user: &AuthedUser, user_id: &str) -> Result<(), MatrixError> {
    if user.user_id != user_id {
        return Err(MatrixError::forbidden("You may only change your own profile"));
    }
    Ok(())
}

/// Keys are `displayname`, `avatar_url`, `m.tz`, or namespaced (`[a-z][a-z0-9_]*` segments
/// joined by dots, at least two).
fn check_key(key: &str) -> Result<(), MatrixError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(MatrixError::new(
            ErrCode::KeyTooLarge,
            StatusCode::BAD_REQUEST,
            "Profile keys are at most 255 bytes",
        ));
    }
    let segment_ok = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let namespaced = key.split('.').count() >= 2 && key.split('.').all(segment_ok);
    if matches!(key, "displayname" | "avatar_url" | "m.tz") || namespaced {
        Ok(())
    } else {
        Err(MatrixError::invalid_param("Invalid profile key"))
    }
}

/// The spec fixes the types of the three defined fields; custom fields may hold any JSON.
fn check_value(key: &str, value: &Value) -> Result<(), MatrixError> {
    match (key, value) {
        ("avatar_url", Value::String(url)) if url.is_empty() || url.starts_with("mxc://") => Ok(()),
        ("avatar_url", _) => Err(MatrixError::invalid_param("avatar_url must be an mxc:// URI")),
        ("displayname" | "m.tz", Value::String(_)) => Ok(()),
        ("displayname" | "m.tz", _) => Err(MatrixError::invalid_param(format!("{key} must be a string"))),
        _ => Ok(()),
    }
}
