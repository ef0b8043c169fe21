//! The HTTP API: every endpoint declared with poem-openapi, one `#[OpenApi]` struct per spec
//! area, combined into one service that also serves its own OpenAPI document.

pub mod admin;
pub mod auth;
pub mod client;
pub mod error;
pub mod federation;
pub mod http;
pub mod media;
pub mod uia;
pub mod well_known;

use poem::middleware::CatchPanic;
use poem::{Endpoint, EndpointExt, Route};
use poem_openapi::{OpenApiService, Tags};

use crate::state::AppState;

/// Where the OpenAPI document is served.
pub const OPENAPI_JSON_PATH: &str = "/_myelin/openapi.json";
/// Where the interactive API documentation is served.
pub const DOCS_PATH: &str = "/_myelin/docs";

/// Sections of the API, as the spec groups its endpoints.
#[derive(Tags)]
pub enum Tag {
    /// Server administration (Myelin-specific).
    Admin,
    /// Creating accounts and managing passwords.
    #[oai(rename = "Account management")]
    AccountManagement,
    /// Features the server supports.
    Capabilities,
    /// A user's devices.
    #[oai(rename = "Device management")]
    DeviceManagement,
    /// The media repository: uploads and downloads.
    Media,
    /// Keys for end-to-end encryption, to-device messages, key backup.
    #[oai(rename = "End-to-end encryption")]
    EndToEndEncryption,
    /// Finding the server and the spec versions it speaks.
    #[oai(rename = "Server discovery")]
    ServerDiscovery,
    /// Logging in and out.
    #[oai(rename = "Session management")]
    SessionManagement,
    /// Rooms: creation, membership, events and state.
    Rooms,
    /// Profiles.
    #[oai(rename = "User data")]
    UserData,
}

/// Accounts, sessions and profiles.
type AccountApis = (
    well_known::WellKnownApi,
    client::versions::VersionsApi,
    client::capabilities::CapabilitiesApi,
    client::register::RegisterApi,
    client::login::LoginApi,
    client::account::AccountApi,
    client::devices::DevicesApi,
    client::profile::ProfileApi,
    client::account_data::AccountDataApi,
    client::presence::PresenceApi,
);

/// Rooms and sync.
type RoomApis = (
    client::rooms::RoomsApi,
    client::room_events::RoomEventsApi,
    client::sync::SyncApi,
    client::ephemeral::EphemeralApi,
    client::directory::DirectoryApi,
    admin::AdminApi,
);

/// Every API area; nested because tuples implement `Default` only up to twelve elements.
type E2eeApis = (client::keys::KeysApi, client::to_device::ToDeviceApi, client::key_backup::KeyBackupApi);

type MediaApis = media::MediaApi;

type Apis = (AccountApis, RoomApis, E2eeApis, MediaApis);

/// The OpenAPI service with every endpoint.
pub fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(Apis::default(), "Myelin homeserver", env!("CARGO_PKG_VERSION")).description(
        "The Matrix Client-Server API as Myelin serves it, shaped as in the Matrix specification \
         (https://spec.matrix.org). Errors are Matrix error bodies: `{\"errcode\": \"M_…\", \"error\": \"…\"}`.",
    )
}

/// The OpenAPI document as pretty-printed JSON: what `openapi/myelin.json` holds.
pub fn openapi_json() -> String {
    let mut spec = service().spec();
    spec.push('\n');
    spec
}

/// The whole HTTP application.
pub fn app(state: AppState) -> impl Endpoint {
    let service = service();
    let spec = service.spec_endpoint();
    let docs = service.swagger_ui();
    Route::new()
        .at(OPENAPI_JSON_PATH, spec)
        .nest(DOCS_PATH, docs)
        .nest("/", service)
        .around(http::matrix_edge)
        .with(CatchPanic::new().with_handler(http::panic_response))
        .data(state)
}
