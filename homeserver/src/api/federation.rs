//! The Server-Server API's endpoints, served on the federation listener: server keys (also as
//! a notary), the version, and — behind `X-Matrix` request authentication — the queries.

use poem::http::StatusCode;
use poem::web::{Data, Json, Path, Query};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route, get, handler};
use ruma_common::CanonicalJsonValue;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiResult, ErrCode, MatrixError};
use crate::federation::authorization::XMatrix;
use crate::federation::keys;
use crate::state::AppState;
use crate::storage::now_ms;

/// The server that sent an authenticated federation request.
#[derive(Clone, Debug)]
pub struct Origin(pub String);

/// The federation listener's application.
pub fn app(state: AppState) -> impl Endpoint {
    let authenticated = Route::new()
        .at("/v1/query/profile", get(query_profile))
        .at("/v1/query/directory", get(query_directory))
        .around(authenticate);
    Route::new()
        .at("/_matrix/federation/v1/version", get(version))
        .at("/_matrix/key/v2/server", get(server_keys))
        .at("/_matrix/key/v2/query", poem::post(query_keys))
        .at("/_matrix/key/v2/query/:serverName", get(query_server_keys))
        .nest("/_matrix/federation", authenticated)
        .around(super::http::matrix_edge)
        .with(poem::middleware::CatchPanic::new().with_handler(super::http::panic_response))
        .data(state)
}

fn unauthorized(reason: impl Into<String>) -> MatrixError {
    MatrixError::new(ErrCode::Unauthorized, StatusCode::UNAUTHORIZED, reason)
}

/// Checks the `X-Matrix` signature of a request before anything else runs: the origin's key
/// (fetched if unknown), the destination, method, URI and body. The verified origin is then
/// available to the endpoint as [`Origin`].
async fn authenticate<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
    let Some(state) = req.data::<AppState>().cloned() else { return Err(MatrixError::internal().into()) };
    let body = req.take_body().into_bytes().await?;
    let content = if body.is_empty() {
        None
    } else {
        Some(serde_json::from_slice::<CanonicalJsonValue>(&body).map_err(|_| {
            MatrixError::new(ErrCode::NotJson, StatusCode::BAD_REQUEST, "The body is not canonical JSON")
        })?)
    };
    let uri = req.original_uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let method = req.method().as_str().to_owned();
    let headers: Vec<XMatrix> = req
        .headers()
        .get_all(poem::http::header::AUTHORIZATION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(|value| XMatrix::parse(value).ok())
        .collect();
    if headers.is_empty() {
        return Err(unauthorized("Missing X-Matrix Authorization header").into());
    }
    let mut last_error = String::new();
    for header in headers {
        if ruma_common::ServerName::parse(&header.origin).is_err() {
            last_error = format!("{:?} is not a server name", header.origin);
            continue;
        }
        let verified = match keys::server_key(&state, &header.origin, &header.key, now_ms()).await {
            Ok(public_key) => header.verify(&public_key, &method, &uri, &state.config.server_name, content.as_ref()),
            Err(err) => Err(format!("cannot get {}'s key {}: {err}", header.origin, header.key)),
        };
        match verified {
            Ok(()) => {
                req.extensions_mut().insert(Origin(header.origin));
                req.set_body(body);
                return next.call(req).await.map(IntoResponse::into_response);
            }
            Err(reason) => last_error = reason,
        }
    }
    tracing::info!(%uri, reason = %last_error, "refused a federation request");
    Err(unauthorized(format!("Invalid X-Matrix signature: {last_error}")).into())
}

/// `GET /_matrix/federation/v1/version`
#[handler]
fn version() -> Json<Value> {
    Json(json!({ "server": { "name": "Myelin", "version": env!("CARGO_PKG_VERSION") } }))
}

/// `GET /_matrix/key/v2/server`: our keys, self-signed.
#[handler]
fn server_keys(state: Data<&AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(keys::own_key_document(&state.config.server_name, &state.signing_key)?))
}

#[derive(Deserialize)]
struct MinimumValidUntil {
    minimum_valid_until_ts: Option<i64>,
}

/// `GET /_matrix/key/v2/query/{serverName}`: another server's keys, as a notary.
#[handler]
async fn query_server_keys(
    state: Data<&AppState>,
    Path(server_name): Path<String>,
    Query(query): Query<MinimumValidUntil>,
) -> ApiResult<Json<Value>> {
    let documents = notary(&state, &server_name, query.minimum_valid_until_ts).await?;
    Ok(Json(json!({ "server_keys": documents })))
}

/// `POST /_matrix/key/v2/query`: several servers' keys, as a notary.
#[handler]
async fn query_keys(state: Data<&AppState>, Json(body): Json<Value>) -> ApiResult<Json<Value>> {
    let servers =
        body["server_keys"].as_object().ok_or_else(|| MatrixError::bad_json("server_keys must be an object"))?;
    let mut documents = Vec::new();
    for (server_name, wanted) in servers.iter().take(100) {
        // The strictest minimum asked for any of the server's keys.
        let minimum = wanted
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(_, criteria)| criteria["minimum_valid_until_ts"].as_i64())
            .max();
        documents.extend(notary(&state, server_name, minimum).await?);
    }
    Ok(Json(json!({ "server_keys": documents })))
}

async fn notary(state: &AppState, server_name: &str, minimum: Option<i64>) -> ApiResult<Vec<Value>> {
    if ruma_common::ServerName::parse(server_name).is_err() {
        return Err(MatrixError::invalid_param(format!("{server_name:?} is not a server name")));
    }
    if server_name != state.config.server_name && state.federation_client.is_none() {
        return Ok(Vec::new());
    }
    // Unknown servers are simply left out of the answer, as the spec allows.
    Ok(keys::notary_documents(state, server_name, minimum.unwrap_or_else(now_ms)).await.unwrap_or_default())
}

#[derive(Deserialize)]
struct ProfileQuery {
    user_id: String,
    field: Option<String>,
}

/// `GET /_matrix/federation/v1/query/profile`: a local user's profile, or one field of it.
#[handler]
async fn query_profile(state: Data<&AppState>, Query(query): Query<ProfileQuery>) -> ApiResult<Json<Value>> {
    let user = ruma_common::UserId::parse(&query.user_id)
        .map_err(|_| MatrixError::invalid_param(format!("{:?} is not a user ID", query.user_id)))?;
    if user.server_name().as_str() != state.config.server_name {
        return Err(MatrixError::invalid_param("That user is not on this server"));
    }
    if !state.storage.user_exists(user.as_str()).await? {
        return Err(MatrixError::not_found("Profile not found"));
    }
    let mut profile = state.storage.profile(user.as_str()).await?;
    if let Some(field) = &query.field {
        profile.retain(|key, _| key == field);
        if profile.is_empty() {
            return Err(MatrixError::not_found("Profile field not found"));
        }
    }
    Ok(Json(serde_json::to_value(profile).unwrap_or_default()))
}

#[derive(Deserialize)]
struct DirectoryQuery {
    room_alias: String,
}

/// `GET /_matrix/federation/v1/query/directory`: the room a local alias points to, and the
/// servers that are in it.
#[handler]
async fn query_directory(state: Data<&AppState>, Query(query): Query<DirectoryQuery>) -> ApiResult<Json<Value>> {
    let alias = ruma_common::RoomAliasId::parse(&query.room_alias)
        .map_err(|_| MatrixError::invalid_param(format!("{:?} is not a room alias", query.room_alias)))?;
    if alias.server_name().as_str() != state.config.server_name {
        return Err(MatrixError::invalid_param("That alias is not on this server"));
    }
    let (room_id, _) =
        state.storage.alias(alias.as_str()).await?.ok_or_else(|| MatrixError::not_found("Room alias not found"))?;
    Ok(Json(json!({ "room_id": room_id, "servers": [state.config.server_name] })))
}
