//! `/.well-known/matrix/*`: server discovery for clients and for other servers.

use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::Tag;
use super::error::{ApiResult, MatrixError};
use crate::state::AppState;

/// Discovery endpoints.
#[derive(Default)]
pub struct WellKnownApi;

/// `m.homeserver` / `m.identity_server` entries.
#[derive(Debug, Object)]
pub struct BaseUrl {
    /// The base URL.
    pub base_url: String,
}

/// The client discovery document.
#[derive(Debug, Object)]
pub struct ClientWellKnown {
    /// Where the Client-Server API is.
    #[oai(rename = "m.homeserver")]
    pub homeserver: BaseUrl,
}

/// The server delegation document.
#[derive(Debug, Object)]
pub struct ServerWellKnown {
    /// `host[:port]` to use for federation.
    #[oai(rename = "m.server")]
    pub server: String,
}

#[OpenApi(tag = "Tag::ServerDiscovery")]
impl WellKnownApi {
    /// `GET /.well-known/matrix/client`
    ///
    /// Tells clients where the Client-Server API of this server name lives.
    /// <https://spec.matrix.org/v1.19/client-server-api/#getwell-knownmatrixclient>
    #[oai(path = "/.well-known/matrix/client", method = "get", operation_id = "getWellknown")]
    async fn client(&self, state: poem::web::Data<&AppState>) -> ApiResult<Json<ClientWellKnown>> {
        Ok(Json(ClientWellKnown { homeserver: BaseUrl { base_url: state.config.public_baseurl() } }))
    }

    /// `GET /.well-known/matrix/server`
    ///
    /// Tells other servers where to send federation traffic, when delegation is configured.
    /// <https://spec.matrix.org/v1.19/server-server-api/#getwell-knownmatrixserver>
    #[oai(path = "/.well-known/matrix/server", method = "get", operation_id = "getWellKnownServer")]
    async fn server(&self, state: poem::web::Data<&AppState>) -> ApiResult<Json<ServerWellKnown>> {
        match &state.config.well_known.server {
            Some(server) => Ok(Json(ServerWellKnown { server: server.clone() })),
            None => Err(MatrixError::not_found("No federation delegation is configured")),
        }
    }
}
