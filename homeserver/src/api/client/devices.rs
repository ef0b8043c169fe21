//! Device management: `GET /devices`, `GET/PUT/DELETE /devices/{deviceId}`,
//! `POST /delete_devices`.

use poem::Request;
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::login::Empty;
use crate::api::Tag;
use crate::api::auth::{AuthedUser, client_ip};
use crate::api::error::{ApiResult, MatrixError};
use crate::api::uia::{self, AuthData, UiaError};
use crate::state::AppState;
use crate::storage;

/// Longest device ID or display name accepted, in bytes.
const MAX_DEVICE_FIELD_BYTES: usize = 255;

/// Device endpoints.
#[derive(Default)]
pub struct DevicesApi;

/// A client device.
#[derive(Debug, Object)]
#[oai(rename = "Device", skip_serializing_if_is_none)]
pub struct DeviceInfo {
    /// The device ID.
    pub device_id: String,
    /// The display name, absent if none was set.
    pub display_name: Option<String>,
    /// The IP address the device was last seen at (may be a few minutes out of date).
    pub last_seen_ip: Option<String>,
    /// When the device was last seen, in milliseconds since the epoch (may be a few minutes
    /// out of date).
    pub last_seen_ts: Option<i64>,
}

impl From<storage::Device> for DeviceInfo {
    fn from(d: storage::Device) -> Self {
        Self {
            device_id: d.device_id,
            display_name: d.display_name,
            last_seen_ip: d.last_seen_ip,
            last_seen_ts: d.last_seen_ts,
        }
    }
}

/// `GET /devices` response.
#[derive(Debug, Object)]
pub struct DeviceList {
    /// Every device of the user.
    pub devices: Vec<DeviceInfo>,
}

/// `PUT /devices/{deviceId}` request body.
#[derive(Debug, Object)]
pub struct UpdateDevice {
    /// The new display name; unchanged when absent.
    pub display_name: Option<String>,
}

/// `DELETE /devices/{deviceId}` request body.
#[derive(Debug, Object)]
pub struct DeleteDevice {
    /// User-interactive authentication: the password.
    pub auth: Option<AuthData>,
}

/// `POST /delete_devices` request body.
#[derive(Debug, Object)]
pub struct DeleteDevices {
    /// The devices to delete.
    pub devices: Vec<String>,
    /// User-interactive authentication: the password.
    pub auth: Option<AuthData>,
}

#[OpenApi(tag = "Tag::DeviceManagement")]
impl DevicesApi {
    /// `GET /_matrix/client/v3/devices`
    ///
    /// Lists the user's devices.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3devices>
    #[oai(path = "/_matrix/client/v3/devices", method = "get", operation_id = "getDevices")]
    async fn devices(&self, state: Data<&AppState>, user: AuthedUser) -> ApiResult<Json<DeviceList>> {
        let devices = state.storage.devices(&user.user_id).await?;
        Ok(Json(DeviceList { devices: devices.into_iter().map(Into::into).collect() }))
    }

    /// `GET /_matrix/client/v3/devices/{deviceId}`
    ///
    /// One of the user's devices.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3devicesdeviceid>
    #[oai(path = "/_matrix/client/v3/devices/:deviceId", method = "get", operation_id = "getDevice")]
    async fn device(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The device to retrieve.
        #[oai(name = "deviceId")]
        device_id: Path<String>,
    ) -> ApiResult<Json<DeviceInfo>> {
        match state.storage.device(&user.user_id, &device_id).await? {
            Some(device) => Ok(Json(device.into())),
            None => Err(MatrixError::not_found("Unknown device")),
        }
    }

    /// `PUT /_matrix/client/v3/devices/{deviceId}`
    ///
    /// Renames one of the user's devices. (Creating devices this way is for application
    /// services only.)
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3devicesdeviceid>
    #[oai(path = "/_matrix/client/v3/devices/:deviceId", method = "put", operation_id = "updateDevice")]
    async fn update_device(
        &self,
        state: Data<&AppState>,
        user: AuthedUser,
        /// The device to update.
        #[oai(name = "deviceId")]
        device_id: Path<String>,
        body: Json<UpdateDevice>,
    ) -> ApiResult<Json<Empty>> {
        match &body.display_name {
            Some(name) => {
                if name.len() > MAX_DEVICE_FIELD_BYTES {
                    return Err(MatrixError::invalid_param("Display name too long"));
                }
                state.storage.rename_device(&user.user_id, &device_id, name).await.map_err(|e| match e {
                    storage::Error::NotFound => MatrixError::not_found("Unknown device"),
                    other => other.into(),
                })?;
            }
            None if state.storage.device(&user.user_id, &device_id).await?.is_none() => {
                return Err(MatrixError::not_found("Unknown device"));
            }
            None => {}
        }
        Ok(Json(Empty {}))
    }

    /// `DELETE /_matrix/client/v3/devices/{deviceId}`
    ///
    /// Deletes one of the user's devices and invalidates its access token, after
    /// user-interactive authentication with the password.
    /// <https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3devicesdeviceid>
    #[oai(path = "/_matrix/client/v3/devices/:deviceId", method = "delete", operation_id = "deleteDevice")]
    async fn delete_device(
        &self,
        state: Data<&AppState>,
        req: &Request,
        user: AuthedUser,
        /// The device to delete.
        #[oai(name = "deviceId")]
        device_id: Path<String>,
        body: Json<DeleteDevice>,
    ) -> Result<Json<Empty>, UiaError> {
        delete(&state, req, &user, vec![device_id.0], body.0.auth).await
    }

    /// `POST /_matrix/client/v3/delete_devices`
    ///
    /// Deletes several of the user's devices, after user-interactive authentication with the
    /// password.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3delete_devices>
    #[oai(path = "/_matrix/client/v3/delete_devices", method = "post", operation_id = "deleteDevices")]
    async fn delete_devices(
        &self,
        state: Data<&AppState>,
        req: &Request,
        user: AuthedUser,
        body: Json<DeleteDevices>,
    ) -> Result<Json<Empty>, UiaError> {
        let body = body.0;
        delete(&state, req, &user, body.devices, body.auth).await
    }
}

async fn delete(
    state: &AppState,
    req: &Request,
    user: &AuthedUser,
    device_ids: Vec<String>,
    auth: Option<AuthData>,
) -> Result<Json<Empty>, UiaError> {
    let uia_request = uia::Request {
        purpose: "delete_devices",
        flows: &[&[uia::PASSWORD]],
        user_id: Some(&user.user_id),
        ip: client_ip(req),
    };
    let completed = uia::authenticate(state, uia_request, auth.as_ref()).await?;
    let position = state.storage.delete_devices(&user.user_id, &device_ids).await?;
    state.notify(position);
    crate::federation::edus::device_list_changed(state, &user.user_id, &[], &device_ids).await;
    completed.finish(state).await?;
    Ok(Json(Empty {}))
}

/// Checks a client-chosen device ID.
pub fn check_device_id(device_id: &str) -> Result<(), MatrixError> {
    if device_id.is_empty() || device_id.len() > MAX_DEVICE_FIELD_BYTES || device_id.chars().any(char::is_control) {
        return Err(MatrixError::invalid_param("Device IDs must be 1 to 255 bytes without control characters"));
    }
    Ok(())
}
