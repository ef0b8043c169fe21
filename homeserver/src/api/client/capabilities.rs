//! `GET /_matrix/client/v3/capabilities`

use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use crate::api::Tag;
use crate::api::auth::AuthedUser;
use crate::api::error::ApiResult;

/// The capabilities endpoint.
#[derive(Default)]
pub struct CapabilitiesApi;

/// A capability that is on or off.
#[derive(Debug, Object)]
pub struct BooleanCapability {
    /// Whether the capability is available.
    pub enabled: bool,
}

/// Which profile fields users may change.
#[derive(Debug, Object)]
pub struct ProfileFieldsCapability {
    /// Whether users may create, change and delete profile fields.
    pub enabled: bool,
}

/// The room versions the server supports.
#[derive(Debug, Object)]
pub struct RoomVersionsCapability {
    /// The version of new rooms.
    pub default: String,
    /// Every supported version with its stability.
    pub available: std::collections::BTreeMap<String, String>,
}

/// The server's capabilities.
#[derive(Debug, Object)]
pub struct Capabilities {
    /// The room versions the server supports.
    #[oai(rename = "m.room_versions")]
    pub room_versions: RoomVersionsCapability,
    /// Users may change their password.
    #[oai(rename = "m.change_password")]
    pub change_password: BooleanCapability,
    /// Users may change their display name (deprecated in favour of `m.profile_fields`).
    #[oai(rename = "m.set_displayname")]
    pub set_displayname: BooleanCapability,
    /// Users may change their avatar (deprecated in favour of `m.profile_fields`).
    #[oai(rename = "m.set_avatar_url")]
    pub set_avatar_url: BooleanCapability,
    /// Users may change their third-party identifiers: not supported.
    #[oai(rename = "m.3pid_changes")]
    pub threepid_changes: BooleanCapability,
    /// Users may generate login tokens: not supported.
    #[oai(rename = "m.get_login_token")]
    pub get_login_token: BooleanCapability,
    /// Users may change extended profile fields.
    #[oai(rename = "m.profile_fields")]
    pub profile_fields: ProfileFieldsCapability,
}

/// The capabilities response.
#[derive(Debug, Object)]
pub struct CapabilitiesResponse {
    /// The capabilities.
    pub capabilities: Capabilities,
}

#[OpenApi(tag = "Tag::Capabilities")]
impl CapabilitiesApi {
    /// `GET /_matrix/client/v3/capabilities`
    ///
    /// The features the server supports for this user.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3capabilities>
    #[oai(path = "/_matrix/client/v3/capabilities", method = "get", operation_id = "getCapabilities")]
    async fn capabilities(&self, _user: AuthedUser) -> ApiResult<Json<CapabilitiesResponse>> {
        let on = || BooleanCapability { enabled: true };
        let off = || BooleanCapability { enabled: false };
        Ok(Json(CapabilitiesResponse {
            capabilities: Capabilities {
                room_versions: RoomVersionsCapability {
                    default: crate::rooms::version::DEFAULT.to_string(),
                    available: crate::rooms::version::SUPPORTED
                        .iter()
                        .map(|v| (v.to_string(), "stable".to_owned()))
                        .collect(),
                },
                change_password: on(),
                set_displayname: on(),
                set_avatar_url: on(),
                threepid_changes: off(),
                get_login_token: off(),
                profile_fields: ProfileFieldsCapability { enabled: true },
            },
        }))
    }
}
