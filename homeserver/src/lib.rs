//! Myelin: a Matrix homeserver.
//!
//! # Layout
//! - [`config`]: defaults, TOML file and `MYELIN_*` environment overrides.
//! - [`api`]: the HTTP edge — poem-openapi endpoints (one file per spec area), Matrix error
//!   mapping, access-token authentication, user-interactive authentication.
//! - [`accounts`]: password hashing, token and ID generation, user ID rules (no I/O).
//! - [`rate_limit`]: per-IP and per-account token buckets.
//! - [`crypto`]: the server's ed25519 signing key.
//! - [`storage`]: one storage API over SQLite and PostgreSQL, schema from `migrations/`.
//! - [`state`]: the [`state::AppState`] handed to handlers.
//!
//! Dependencies point downwards: `api` → `accounts`/`rate_limit`/`crypto` → `storage`.
//! The binary (`main.rs`) only parses arguments and calls [`run`]; tests call the same [`run`].

#![warn(missing_docs)]

pub mod accounts;
pub mod api;
pub mod config;
pub mod crypto;
pub mod e2ee;
pub mod media;
pub mod rate_limit;
pub mod rooms;
pub mod state;
pub mod storage;
pub mod sync;
#[doc(hidden)]
pub mod test_support;

use std::future::Future;
use std::time::Duration;

use poem::listener::TcpAcceptor;

pub use config::Config;

use crate::crypto::SigningKey;
use crate::state::AppState;
use crate::storage::Storage;

/// How long in-flight requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The signing key could not be loaded or created.
    #[error(transparent)]
    SigningKey(#[from] crypto::SigningKeyError),
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Storage(#[from] storage::Error),
    /// The media store could not be opened.
    #[error(transparent)]
    Media(#[from] media::MediaError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the homeserver on an already-bound listener until `shutdown` completes, then lets
/// in-flight requests finish and closes the database.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let data_dir_error = |source| RunError::DataDir { path: config.data_dir.display().to_string(), source };
    std::fs::create_dir_all(&config.data_dir).map_err(data_dir_error)?;
    let media =
        media::MediaStore::open(config.media.store.as_deref(), &config.media.store_options, &config.media_dir())?;
    let signing_key = SigningKey::load_or_generate(&config.data_dir.join("signing.key"))?;
    let storage = Storage::connect(&config.database_url(), config.database_connections()).await?;

    let address = listener.local_addr()?;
    let data_dir = std::fs::canonicalize(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    tracing::info!(
        "myelin listening on http://{address} for server name {} (database: {:?}, data: {})",
        config.server_name,
        storage.backend(),
        data_dir.display(),
    );

    let position = storage.max_stream_ordering().await?;
    let state = AppState::new(config, storage.clone(), signing_key, media, position);
    let server = poem::Server::new_with_acceptor(TcpAcceptor::from_tokio(listener)?);
    let result = server.run_with_graceful_shutdown(api::app(state), shutdown, Some(SHUTDOWN_GRACE)).await;
    storage.close().await;
    tracing::info!("myelin stopped");
    Ok(result?)
}
