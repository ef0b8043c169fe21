//! Account data: `GET/PUT /user/{userId}/account_data/{type}` and the per-room variant.

use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;

use super::login::Empty;
use super::rooms::{JsonObject, parse_room};
use crate::api::Tag;
use crate::api::auth::AuthedUser;
use crate::api::error::{ApiResult, ErrCode, MatrixError};
use crate::state::AppState;

/// Account data endpoints.
#[derive(Default)]
pub struct AccountDataApi;

#[OpenApi(tag = "Tag::UserData")]
impl AccountDataApi {
    /// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`
    ///
    /// Sets global account data, which the user's clients receive in sync.
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3useruseridaccount_datatype>
    #[oai(path = "/_matrix/client/v3/user/:userId/account_data/:type", method = "put", operation_id = "setAccountData")]
    async fn set_global(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The user: the caller.
        #[oai(name = "userId")]
        user_id: Path<String>,
        /// The account data type.
        #[oai(name = "type")]
        data_type: Path<String>,
        body: Json<JsonObject>,
    ) -> ApiResult<Json<Empty>> {
        put(&state, &user, &user_id, "", &data_type, body.0).await
    }

    /// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`
    ///
    /// Reads global account data.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3useruseridaccount_datatype>
    #[oai(path = "/_matrix/client/v3/user/:userId/account_data/:type", method = "get", operation_id = "getAccountData")]
    async fn get_global(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The user: the caller.
        #[oai(name = "userId")]
        user_id: Path<String>,
        /// The account data type.
        #[oai(name = "type")]
        data_type: Path<String>,
    ) -> ApiResult<Json<JsonObject>> {
        get(&state, &user, &user_id, "", &data_type).await
    }

    /// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
    ///
    /// Sets account data for one room.
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3useruseridroomsroomidaccount_datatype>
    #[oai(
        path = "/_matrix/client/v3/user/:userId/rooms/:roomId/account_data/:type",
        method = "put",
        operation_id = "setAccountDataPerRoom"
    )]
    async fn set_room(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The user: the caller.
        #[oai(name = "userId")]
        user_id: Path<String>,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// The account data type.
        #[oai(name = "type")]
        data_type: Path<String>,
        body: Json<JsonObject>,
    ) -> ApiResult<Json<Empty>> {
        let room_id = parse_room(&room_id)?;
        put(&state, &user, &user_id, room_id.as_str(), &data_type, body.0).await
    }

    /// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
    ///
    /// Reads account data for one room.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3useruseridroomsroomidaccount_datatype>
    #[oai(
        path = "/_matrix/client/v3/user/:userId/rooms/:roomId/account_data/:type",
        method = "get",
        operation_id = "getAccountDataPerRoom"
    )]
    async fn get_room(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The user: the caller.
        #[oai(name = "userId")]
        user_id: Path<String>,
        /// The room.
        #[oai(name = "roomId")]
        room_id: Path<String>,
        /// The account data type.
        #[oai(name = "type")]
        data_type: Path<String>,
    ) -> ApiResult<Json<JsonObject>> {
        let room_id = parse_room(&room_id)?;
        get(&state, &user, &user_id, room_id.as_str(), &data_type).await
    }
}

async fn put(
    state: &AppState,
    user: &AuthedUser,
    user_id: &str,
    room_id: &str,
    data_type: &str,
    content: JsonObject,
) -> ApiResult<Json<Empty>> {
    if user.user_id != user_id {
        return Err(MatrixError::forbidden("Cannot add account data for other users"));
    }
    // These types are the server's: read markers go through /read_markers, push rules
    // through /pushrules.
    let server_owned = if room_id.is_empty() { data_type == "m.push_rules" } else { data_type == "m.fully_read" };
    if server_owned {
        return Err(MatrixError::new(
            ErrCode::BadJson,
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{data_type} is managed by the server"),
        ));
    }
    let json = serde_json::to_string(&content).map_err(|e| MatrixError::bad_json(e.to_string()))?;
    let position = state.storage.set_account_data(user_id, room_id, data_type, &json).await?;
    state.notify(position);
    Ok(Json(Empty {}))
}

async fn get(
    state: &AppState,
    user: &AuthedUser,
    user_id: &str,
    room_id: &str,
    data_type: &str,
) -> ApiResult<Json<JsonObject>> {
    if user.user_id != user_id {
        return Err(MatrixError::forbidden("Cannot read account data of other users"));
    }
    let json = state
        .storage
        .account_data(user_id, room_id, data_type)
        .await?
        .ok_or_else(|| MatrixError::not_found("Account data not found"))?;
    Ok(Json(serde_json::from_str(&json).map_err(|_| MatrixError::internal())?))
}
