//! `GET /_matrix/client/versions`

use std::collections::BTreeMap;

use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use crate::api::Tag;
use crate::api::error::ApiResult;

/// The spec versions whose Client-Server API this server implements.
pub const SUPPORTED_VERSIONS: &[&str] = &["v1.19"];

/// The versions endpoint.
#[derive(Default)]
pub struct VersionsApi;

/// Supported spec versions.
#[derive(Debug, Object)]
pub struct Versions {
    /// The supported versions.
    pub versions: Vec<String>,
    /// Experimental features, by namespaced name.
    pub unstable_features: BTreeMap<String, bool>,
}

#[OpenApi(tag = "Tag::ServerDiscovery")]
impl VersionsApi {
    /// `GET /_matrix/client/versions`
    ///
    /// The versions of the specification the server supports.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientversions>
    #[oai(path = "/_matrix/client/versions", method = "get", operation_id = "getVersions")]
    async fn versions(&self) -> ApiResult<Json<Versions>> {
        Ok(Json(Versions {
            versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
            unstable_features: BTreeMap::new(),
        }))
    }
}
