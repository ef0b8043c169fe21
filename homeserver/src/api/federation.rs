//! The Server-Server API's endpoints, served on the federation listener: server keys (also as
//! a notary), the version, and — behind `X-Matrix` request authentication — the queries.

use futures_util::StreamExt;
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

mod rooms;

/// The server that sent an authenticated federation request.
#[derive(Clone, Debug)]
pub struct Origin(pub String);

/// The federation listener's application.
pub fn app(state: AppState) -> impl Endpoint {
    let authenticated = Route::new()
        .at("/v1/query/profile", get(query_profile))
        .at("/v1/query/directory", get(query_directory))
        .at("/v1/send/:txnId", poem::put(send_transaction))
        .at("/v1/publicRooms", get(public_rooms).post(search_public_rooms))
        .at("/v1/media/download/:mediaId", get(media_download))
        .at("/v1/media/thumbnail/:mediaId", get(media_thumbnail))
        .at("/v1/user/keys/query", poem::post(user_keys_query))
        .at("/v1/user/keys/claim", poem::post(user_keys_claim))
        .at("/v1/user/devices/:userId", get(user_devices))
        .at("/v1/make_join/:roomId/:userId", get(rooms::make_join))
        .at("/v2/send_join/:roomId/:eventId", poem::put(rooms::send_join))
        .at("/v1/make_leave/:roomId/:userId", get(rooms::make_leave))
        .at("/v2/send_leave/:roomId/:eventId", poem::put(rooms::send_leave))
        .at("/v2/invite/:roomId/:eventId", poem::put(rooms::invite))
        .at("/v1/event/:eventId", get(rooms::get_event))
        .at("/v1/state/:roomId", get(rooms::room_state))
        .at("/v1/state_ids/:roomId", get(rooms::room_state_ids))
        .at("/v1/event_auth/:roomId/:eventId", get(rooms::event_auth))
        .at("/v1/get_missing_events/:roomId", poem::post(rooms::get_missing_events))
        .at("/v1/backfill/:roomId", get(rooms::backfill))
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
    // POST/PUT bodies were bounded at the edge; this bounds the rest (a GET with a body).
    let body =
        req.take_body().into_bytes_limit(super::http::FEDERATION_BODY_LIMIT).await.map_err(|_| {
            MatrixError::new(ErrCode::TooLarge, StatusCode::PAYLOAD_TOO_LARGE, "Request body too large")
        })?;
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
        // Cheap checks first: nobody makes us fetch keys for a request that cannot pass.
        if ruma_common::ServerName::parse(&header.origin).is_err() {
            last_error = format!("{:?} is not a server name", header.origin);
            continue;
        }
        if header.destination.as_deref().is_some_and(|d| d != state.config.server_name) {
            last_error = "the request was meant for another server".to_owned();
            continue;
        }
        if !header.key.starts_with("ed25519:") {
            last_error = format!("unsupported key {}", header.key);
            continue;
        }
        let verified = match keys::request_key(&state, &header.origin, &header.key).await {
            Ok(public_key) => header.verify(&public_key, &method, &uri, &state.config.server_name, content.as_ref()),
            Err(err) => Err(format!("cannot get {}'s key {}: {err}", header.origin, header.key)),
        };
        match verified {
            Ok(()) => {
                // It is up: anything waiting for it goes now rather than at the next retry.
                match state.storage.destination_is_back(&header.origin).await {
                    Ok(true) => state.outbox_ready.notify_one(),
                    Ok(false) => {}
                    Err(err) => tracing::warn!(error = %err, "resetting a destination's backoff"),
                }
                state.limits.federation(&header.origin).map_err(MatrixError::from)?;
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
    Ok(Json(keys::own_key_document(&state.config.server_name, &state.signing_key, &state.old_signing_keys)?))
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
    let servers = super::client::directory::resident_servers(&state, &room_id).await?;
    Ok(Json(json!({ "room_id": room_id, "servers": servers })))
}

#[derive(Deserialize)]
struct DirectoryPage {
    limit: Option<i64>,
    since: Option<String>,
}

/// `GET /_matrix/federation/v1/publicRooms`: our public room directory.
#[handler]
async fn public_rooms(state: Data<&AppState>, Query(page): Query<DirectoryPage>) -> ApiResult<Json<Value>> {
    let query =
        super::client::directory::PublicRoomsQuery { limit: page.limit, since: page.since, ..Default::default() };
    directory(&state, query).await
}

/// `POST /_matrix/federation/v1/publicRooms`: our public room directory, searched.
#[handler]
async fn search_public_rooms(state: Data<&AppState>, Json(body): Json<Value>) -> ApiResult<Json<Value>> {
    let term = body["filter"]["generic_search_term"].as_str().map(str::to_owned);
    let query = super::client::directory::PublicRoomsQuery {
        limit: body["limit"].as_i64(),
        since: body["since"].as_str().map(str::to_owned),
        filter: Some(super::client::directory::PublicRoomsFilter { generic_search_term: term }),
        server: None,
    };
    directory(&state, query).await
}

async fn directory(state: &AppState, query: super::client::directory::PublicRoomsQuery) -> ApiResult<Json<Value>> {
    let page = super::client::directory::directory_page(state, query).await?;
    Ok(Json(poem_openapi::types::ToJSON::to_json(&page.0).unwrap_or_default()))
}

/// Only users of this server: another server asking about someone else's users gets nothing.
fn local_users<T: serde::de::DeserializeOwned>(
    state: &AppState,
    wanted: &Value,
) -> ApiResult<std::collections::BTreeMap<String, T>> {
    let wanted: std::collections::BTreeMap<String, T> =
        serde_json::from_value(wanted.clone()).map_err(|e| MatrixError::bad_json(format!("Malformed request: {e}")))?;
    Ok(wanted
        .into_iter()
        .filter(|(user, _)| crate::federation::e2ee::server_of(user) == state.config.server_name)
        .collect())
}

/// `POST /_matrix/federation/v1/user/keys/query`: our users' device and cross-signing keys.
#[handler]
async fn user_keys_query(state: Data<&AppState>, Json(body): Json<Value>) -> ApiResult<Json<Value>> {
    let wanted = local_users::<Vec<String>>(&state, &body["device_keys"])?;
    // No user of ours is asking: only signatures by the keys' owners are shown.
    let result = crate::e2ee::keys::query(&state.storage, &state.config.server_name, "", &wanted).await?;
    Ok(Json(json!({
        "device_keys": result.device_keys,
        "master_keys": result.master_keys,
        "self_signing_keys": result.self_signing_keys,
    })))
}

/// `POST /_matrix/federation/v1/user/keys/claim`: one-time keys of our users' devices.
#[handler]
async fn user_keys_claim(state: Data<&AppState>, Json(body): Json<Value>) -> ApiResult<Json<Value>> {
    let wanted = local_users::<std::collections::BTreeMap<String, String>>(&state, &body["one_time_keys"])?;
    let result = crate::e2ee::keys::claim(&state.storage, &state.config.server_name, &wanted).await?;
    Ok(Json(json!({ "one_time_keys": result.one_time_keys })))
}

/// `GET /_matrix/federation/v1/user/devices/{userId}`: all devices of one of our users.
#[handler]
async fn user_devices(state: Data<&AppState>, Path(user_id): Path<String>) -> ApiResult<Json<Value>> {
    if crate::federation::e2ee::server_of(&user_id) != state.config.server_name {
        return Err(MatrixError::invalid_param("That user is not on this server"));
    }
    if !state.storage.user_exists(&user_id).await? {
        return Err(MatrixError::not_found("No such user"));
    }
    let wanted = std::collections::BTreeMap::from([(user_id.clone(), Vec::new())]);
    let mut result = crate::e2ee::keys::query(&state.storage, &state.config.server_name, "", &wanted).await?;
    let devices: Vec<Value> = result
        .device_keys
        .remove(&user_id)
        .unwrap_or_default()
        .into_iter()
        .map(|(device_id, mut keys)| {
            let name = keys["unsigned"]["device_display_name"].take();
            if let Some(keys) = keys.as_object_mut() {
                keys.remove("unsigned");
            }
            let mut device = json!({ "device_id": device_id, "keys": keys });
            if name.is_string() {
                device["device_display_name"] = name;
            }
            device
        })
        .collect();
    let mut answer = json!({
        "user_id": user_id,
        "stream_id": state.storage.device_list_stream_id(&user_id).await?,
        "devices": devices,
    });
    if let Some(master) = result.master_keys.remove(&user_id) {
        answer["master_key"] = master;
    }
    if let Some(self_signing) = result.self_signing_keys.remove(&user_id) {
        answer["self_signing_key"] = self_signing;
    }
    Ok(Json(answer))
}

/// The spec's limits on one transaction.
const MAX_TRANSACTION_PDUS: usize = 50;
const MAX_TRANSACTION_EDUS: usize = 100;

/// `PUT /_matrix/federation/v1/send/{txnId}`: PDUs and EDUs from another server. A transaction
/// seen before gets the same answer without being processed again.
#[handler]
async fn send_transaction(
    state: Data<&AppState>,
    origin: Data<&Origin>,
    Path(txn_id): Path<String>,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    let origin = origin.0.0.as_str();
    if body["origin"] != origin {
        return Err(MatrixError::bad_json("The transaction's origin is not the server that sent it"));
    }
    if let Some(answer) = state.storage.received_transaction(origin, &txn_id).await? {
        return Ok(Json(serde_json::from_str(&answer).unwrap_or_else(|_| json!({ "pdus": {} }))));
    }
    let pdus = body["pdus"].as_array().map_or(&[][..], Vec::as_slice);
    let edus = body.get("edus").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    if pdus.len() > MAX_TRANSACTION_PDUS || edus.len() > MAX_TRANSACTION_EDUS {
        return Err(MatrixError::bad_json("A transaction holds at most 50 PDUs and 100 EDUs"));
    }
    for edu in edus {
        if let Err(err) = crate::federation::inbound::edu(&state, origin, edu).await {
            tracing::info!(%origin, edu_type = %edu["edu_type"], error = %err, "ignored an EDU");
        }
    }
    let results = crate::federation::rooms::receive_pdus(&state, origin, pdus).await?;
    let answer = json!({ "pdus": results });
    state.storage.record_received_transaction(origin, &txn_id, &answer.to_string(), now_ms()).await?;
    Ok(Json(answer))
}

#[derive(Deserialize)]
struct MediaWait {
    timeout_ms: Option<i64>,
}

/// `GET /_matrix/federation/v1/media/download/{mediaId}`: one of our media items, as
/// `multipart/mixed` (empty metadata, then the bytes).
#[handler]
async fn media_download(
    state: Data<&AppState>,
    Path(media_id): Path<String>,
    Query(wait): Query<MediaWait>,
) -> ApiResult<Response> {
    let server_name = state.config.server_name.clone();
    let (item, sha256) = super::media::serve::local_media(&state, &server_name, &media_id, wait.timeout_ms).await?;
    let object = state.media.get(&sha256, None).await?;
    let content_type = item.content_type.clone().unwrap_or_else(|| "application/octet-stream".to_owned());
    let disposition = item.upload_name.as_deref().map(|name| {
        format!(
            "attachment; filename*=utf-8''{}",
            url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>().replace('+', "%20")
        )
    });
    let content = futures_util::TryStreamExt::map_err(object.into_stream(), std::io::Error::other);
    Ok(multipart(&content_type, disposition.as_deref(), poem::Body::from_bytes_stream(content)))
}

#[derive(Deserialize)]
struct ThumbnailQuery {
    width: i64,
    height: i64,
    method: Option<String>,
    timeout_ms: Option<i64>,
}

/// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`: a thumbnail of one of our media
/// items, as `multipart/mixed`.
#[handler]
async fn media_thumbnail(
    state: Data<&AppState>,
    Path(media_id): Path<String>,
    Query(query): Query<ThumbnailQuery>,
) -> ApiResult<Response> {
    let want = super::media::thumbnails::requested(query.width, query.height, query.method.as_deref())?;
    let server_name = state.config.server_name.clone();
    let (item, sha256) = super::media::serve::local_media(&state, &server_name, &media_id, query.timeout_ms).await?;
    let (body, content_type, _) = super::media::thumbnails::thumbnail_body(&state, &item, &sha256, want).await?;
    Ok(multipart(content_type, None, body))
}

/// A `multipart/mixed` response: empty metadata, then `body` as `content_type`.
fn multipart(content_type: &str, disposition: Option<&str>, body: poem::Body) -> Response {
    let (head, tail, multipart_type) = crate::federation::media::multipart_frame(content_type, disposition);
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(head)])
        .chain(body.into_bytes_stream())
        .chain(futures_util::stream::iter([Ok(tail)]));
    Response::builder().content_type(multipart_type).body(poem::Body::from_bytes_stream(stream))
}
