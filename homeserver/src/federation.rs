//! The Server-Server API's machinery, without HTTP endpoints (those are in
//! `api::federation`): request signatures, server discovery, outbound requests, server keys.

pub mod authorization;
pub mod client;
pub mod discovery;
pub mod e2ee;
pub mod edus;
pub mod inbound;
pub mod keys;
pub mod media;
pub mod rooms;
pub mod sender;

pub use client::FederationClient;

/// Failures talking to (or hearing from) other servers.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// Federation is switched off in the configuration.
    #[error("federation is disabled on this server")]
    Disabled,
    /// The federation client could not be set up (a bad CA file, …).
    #[error("federation setup: {0}")]
    Setup(String),
    /// Not a server name we can talk to.
    #[error("not a server name to federate with: {0}")]
    BadServerName(String),
    /// The server could not be reached (DNS, connection, TLS, timeout, private address).
    #[error("cannot reach {server}: {reason}")]
    Unreachable {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{server} answered HTTP {status}: {body}")]
    Remote {
        /// The server.
        server: String,
        /// The HTTP status.
        status: u16,
        /// Its (Matrix error) body.
        body: serde_json::Value,
    },
    /// Something the other server sent (or signed) is not valid.
    #[error("{0}")]
    Invalid(String),
    /// Our database failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::Error),
    /// The room layer refused or failed.
    #[error(transparent)]
    Room(#[from] crate::rooms::RoomError),
}
