//! End-to-end encryption keys: `POST /keys/upload`, `/keys/query`, `/keys/claim`,
//! `GET /keys/changes`, `POST /keys/device_signing/upload`, `POST /keys/signatures/upload`.

use std::collections::BTreeMap;

use poem::Request;
use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde_json::Value;

use super::login::Empty;
use super::rooms::JsonObject;
use crate::api::Tag;
use crate::api::auth::{AuthedUser, client_ip};
use crate::api::error::ApiResult;
use crate::api::uia::{self, AuthData, UiaError};
use crate::e2ee::{self, cross_signing, device_lists, keys};
use crate::federation::e2ee as federation_e2ee;
use crate::state::AppState;
use crate::sync::token;

/// Key endpoints.
#[derive(Default)]
pub struct KeysApi;

/// `POST /keys/upload` request body.
#[derive(Debug, Object)]
pub struct UploadKeysRequest {
    /// The device's identity keys, signed with its Ed25519 key.
    pub device_keys: Option<JsonObject>,
    /// One-time keys, `<algorithm>:<key_id>` → key.
    pub one_time_keys: Option<JsonObject>,
    /// Fallback keys, `<algorithm>:<key_id>` → key, at most one per algorithm.
    pub fallback_keys: Option<JsonObject>,
}

/// `POST /keys/upload` response.
#[derive(Debug, Object)]
pub struct UploadKeysResponse {
    /// Unclaimed one-time keys of the device, by algorithm.
    pub one_time_key_counts: BTreeMap<String, i64>,
}

/// `POST /keys/query` request body.
#[derive(Debug, Object)]
pub struct QueryKeysRequest {
    /// Milliseconds to wait for other servers.
    pub timeout: Option<i64>,
    /// User → device IDs (empty: all devices).
    pub device_keys: BTreeMap<String, Vec<String>>,
}

/// `POST /keys/query` response.
#[derive(Debug, Object)]
pub struct QueryKeysResponse {
    /// Servers that could not be reached.
    pub failures: BTreeMap<String, Value>,
    /// User → device → device keys.
    pub device_keys: BTreeMap<String, BTreeMap<String, Value>>,
    /// User → master cross-signing key.
    pub master_keys: BTreeMap<String, Value>,
    /// User → self-signing key.
    pub self_signing_keys: BTreeMap<String, Value>,
    /// The caller's own user-signing key, if they asked about themselves.
    pub user_signing_keys: BTreeMap<String, Value>,
}

/// `POST /keys/claim` request body.
#[derive(Debug, Object)]
pub struct ClaimKeysRequest {
    /// Milliseconds to wait for other servers.
    pub timeout: Option<i64>,
    /// User → device → algorithm.
    pub one_time_keys: BTreeMap<String, BTreeMap<String, String>>,
}

/// `POST /keys/claim` response.
#[derive(Debug, Object)]
pub struct ClaimKeysResponse {
    /// Servers that could not be reached.
    pub failures: BTreeMap<String, Value>,
    /// User → device → `<algorithm>:<key_id>` → key.
    pub one_time_keys: BTreeMap<String, BTreeMap<String, JsonObject>>,
}

/// `GET /keys/changes` response.
#[derive(Debug, Object)]
pub struct KeyChanges {
    /// Users whose device keys changed.
    pub changed: Vec<String>,
    /// Users who no longer share a room.
    pub left: Vec<String>,
}

/// `POST /keys/device_signing/upload` request body.
#[derive(Debug, Object)]
pub struct UploadCrossSigningKeys {
    /// The master key.
    pub master_key: Option<JsonObject>,
    /// The self-signing key, signed by the master key.
    pub self_signing_key: Option<JsonObject>,
    /// The user-signing key, signed by the master key.
    pub user_signing_key: Option<JsonObject>,
    /// User-interactive authentication.
    pub auth: Option<AuthData>,
}

/// `POST /keys/signatures/upload` response.
#[derive(Debug, Object)]
pub struct SignaturesUploadResponse {
    /// User → key ID → error, for signatures that were refused.
    pub failures: BTreeMap<String, BTreeMap<String, Value>>,
}

/// How long to wait for other servers: the client's `timeout`, within reason.
fn remote_timeout(requested: Option<i64>) -> std::time::Duration {
    match requested {
        Some(ms) => std::time::Duration::from_millis(ms.clamp(0, 60_000) as u64),
        None => federation_e2ee::DEFAULT_TIMEOUT,
    }
}

fn object(map: JsonObject) -> e2ee::JsonObject {
    map.into_iter().collect()
}

#[OpenApi(tag = "Tag::EndToEndEncryption")]
impl KeysApi {
    /// `POST /_matrix/client/v3/keys/upload`
    ///
    /// Publishes the device's identity keys, one-time keys and fallback keys.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3keysupload>
    #[oai(path = "/_matrix/client/v3/keys/upload", method = "post", operation_id = "uploadKeys")]
    async fn upload(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        body: Json<UploadKeysRequest>,
    ) -> ApiResult<Json<UploadKeysResponse>> {
        let body = body.0;
        let upload = keys::Upload {
            device_keys: body.device_keys.map(object),
            one_time_keys: body.one_time_keys.map(object),
            fallback_keys: body.fallback_keys.map(object),
        };
        let (one_time_key_counts, position) =
            keys::upload(&state.storage, &user.user_id, &user.device_id, upload).await?;
        if let Some(position) = position {
            state.notify(position);
            let device = std::slice::from_ref(&user.device_id);
            crate::federation::edus::device_list_changed(&state, &user.user_id, device, &[]).await;
        }
        Ok(Json(UploadKeysResponse { one_time_key_counts }))
    }

    /// `POST /_matrix/client/v3/keys/query`
    ///
    /// Returns the devices and identity keys of users, and their cross-signing keys.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3keysquery>
    #[oai(path = "/_matrix/client/v3/keys/query", method = "post", operation_id = "queryKeys")]
    async fn query(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        body: Json<QueryKeysRequest>,
    ) -> ApiResult<Json<QueryKeysResponse>> {
        let (local, remote) = federation_e2ee::by_server(&state, &body.0.device_keys);
        let mut result = keys::query(&state.storage, &state.config.server_name, &user.user_id, &local).await?;
        federation_e2ee::query_remote(&state, remote, remote_timeout(body.0.timeout), &mut result).await;
        Ok(Json(QueryKeysResponse {
            failures: result.failures,
            device_keys: result.device_keys,
            master_keys: result.master_keys,
            self_signing_keys: result.self_signing_keys,
            user_signing_keys: result.user_signing_keys,
        }))
    }

    /// `POST /_matrix/client/v3/keys/claim`
    ///
    /// Claims one-time keys (or fallback keys when none are left) to start Olm sessions.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3keysclaim>
    #[oai(path = "/_matrix/client/v3/keys/claim", method = "post", operation_id = "claimKeys")]
    async fn claim(
        &self,
        state: Data<&AppState>,
        _user: AuthedUser,
        body: Json<ClaimKeysRequest>,
    ) -> ApiResult<Json<ClaimKeysResponse>> {
        let (local, remote) = federation_e2ee::by_server(&state, &body.0.one_time_keys);
        let mut result = keys::claim(&state.storage, &state.config.server_name, &local).await?;
        federation_e2ee::claim_remote(&state, remote, remote_timeout(body.0.timeout), &mut result).await;
        let one_time_keys = result
            .one_time_keys
            .into_iter()
            .map(|(user, devices)| {
                (user, devices.into_iter().map(|(device, keys)| (device, keys.into_iter().collect())).collect())
            })
            .collect();
        Ok(Json(ClaimKeysResponse { failures: result.failures, one_time_keys }))
    }

    /// `GET /_matrix/client/v3/keys/changes`
    ///
    /// Users whose device keys changed between two sync tokens, and users who no longer share
    /// a room with the caller.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3keyschanges>
    #[oai(path = "/_matrix/client/v3/keys/changes", method = "get", operation_id = "getKeysChanges")]
    async fn changes(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// A `next_batch` of an earlier sync.
        from: Query<String>,
        /// A later `next_batch`.
        to: Query<String>,
    ) -> ApiResult<Json<KeyChanges>> {
        let (from, to) = (token::position(&from)?, token::position(&to)?);
        let changes = device_lists::changes(&state.storage, &user.user_id, from, to.max(from)).await?;
        Ok(Json(KeyChanges { changed: changes.changed, left: changes.left }))
    }

    /// `POST /_matrix/client/v3/keys/device_signing/upload`
    ///
    /// Publishes cross-signing keys. Replacing existing keys needs user-interactive
    /// authentication; the first upload, or repeating the stored keys, does not.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3keysdevice_signingupload>
    #[oai(
        path = "/_matrix/client/v3/keys/device_signing/upload",
        method = "post",
        operation_id = "uploadCrossSigningKeys"
    )]
    async fn upload_cross_signing(
        &self,
        state: Data<&AppState>,
        req: &Request,
        user: AuthedUser,
        body: Json<UploadCrossSigningKeys>,
    ) -> Result<Json<Empty>, UiaError> {
        let body = body.0;
        let upload = cross_signing::collect_upload(
            body.master_key.map(object),
            body.self_signing_key.map(object),
            body.user_signing_key.map(object),
        );
        let completed = if cross_signing::needs_authentication(&state.storage, &user.user_id, &upload)
            .await
            .map_err(crate::api::error::MatrixError::from)?
        {
            let request = uia::Request {
                purpose: "device_signing_upload",
                flows: &[&[uia::PASSWORD]],
                user_id: Some(&user.user_id),
                ip: client_ip(req),
            };
            Some(uia::authenticate(&state, request, body.auth.as_ref()).await?)
        } else {
            None
        };
        let position = cross_signing::upload(&state.storage, &user.user_id, upload)
            .await
            .map_err(crate::api::error::MatrixError::from)?;
        if let Some(position) = position {
            state.notify(position);
            crate::federation::edus::signing_keys_changed(&state, &user.user_id).await;
        }
        if let Some(completed) = completed {
            completed.finish(&state).await?;
        }
        Ok(Json(Empty {}))
    }

    /// `POST /_matrix/client/v3/keys/signatures/upload`
    ///
    /// Publishes signatures made with cross-signing keys (or, on the master key, by a device).
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3keyssignaturesupload>
    #[oai(
        path = "/_matrix/client/v3/keys/signatures/upload",
        method = "post",
        operation_id = "uploadCrossSigningSignatures"
    )]
    async fn upload_signatures(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        body: Json<BTreeMap<String, BTreeMap<String, JsonObject>>>,
    ) -> ApiResult<Json<SignaturesUploadResponse>> {
        let objects = body
            .0
            .into_iter()
            .map(|(user, keys)| (user, keys.into_iter().map(|(key, value)| (key, object(value))).collect()))
            .collect();
        let result = cross_signing::upload_signatures(&state.storage, &user.user_id, &objects).await?;
        if let Some(position) = result.position {
            state.notify(position);
            crate::federation::edus::signing_keys_changed(&state, &user.user_id).await;
        }
        Ok(Json(SignaturesUploadResponse { failures: result.failures }))
    }
}
