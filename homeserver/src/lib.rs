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
//! - [`wakeups`]: other processes' commits (PostgreSQL `NOTIFY`) waking this one's waiters.
//!
//! Dependencies point downwards: `api` → `accounts`/`rate_limit`/`crypto` → `storage`.
//! The binary (`main.rs`) only parses arguments and calls [`run`]; tests call the same [`run`].

#![warn(missing_docs)]

pub mod accounts;
pub mod api;
pub mod config;
pub mod connections;
pub mod crypto;
pub mod e2ee;
pub mod federation;
pub mod media;
pub mod rate_limit;
pub mod rooms;
pub mod state;
pub mod storage;
pub mod sync;
#[doc(hidden)]
pub mod test_support;
pub mod wakeups;

use std::future::Future;
use std::time::Duration;

use poem::listener::{AcceptorExt, TcpAcceptor};

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
    /// Federation could not be set up (TLS files, CA file).
    #[error(transparent)]
    Federation(#[from] federation::FederationError),
}

/// The sockets a server answers on.
#[derive(Debug)]
pub struct Listeners {
    /// The Client-Server API (plain HTTP; TLS is a reverse proxy's job).
    pub client: tokio::net::TcpListener,
    /// The Server-Server API (TLS), when federation is enabled.
    pub federation: Option<tokio::net::TcpListener>,
}

/// Runs the homeserver on an already-bound listener until `shutdown` completes, then lets
/// in-flight requests finish and closes the database.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    serve(config, Listeners { client: listener, federation: None }, shutdown).await
}

/// Like [`run`], with a federation listener too.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let data_dir_error = |source| RunError::DataDir { path: config.data_dir.display().to_string(), source };
    std::fs::create_dir_all(&config.data_dir).map_err(data_dir_error)?;
    let media =
        media::MediaStore::open(config.media.store.as_deref(), &config.media.store_options, &config.media_dir())?;
    let signing_key = SigningKey::load_or_generate(&config.data_dir.join("signing.key"))?;
    let federation_tls = match (&listeners.federation, config.federation.enabled) {
        (Some(_), true) => Some(federation_tls(&config.federation)?),
        _ => None,
    };
    let storage = Storage::connect(&config.database_url(), config.database_connections()).await?;

    let address = listeners.client.local_addr()?;
    let data_dir = std::fs::canonicalize(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    tracing::info!(
        "myelin listening on http://{address} for server name {} (database: {:?}, data: {})",
        config.server_name,
        storage.backend(),
        data_dir.display(),
    );

    // Listening first, then reading the position: nothing committed in between goes unheard.
    let changes = storage.changes().await?;
    let position = storage.max_stream_ordering().await?;
    let state = match AppState::new(config, storage.clone(), signing_key, media, position) {
        Ok(state) => state,
        Err(err) => {
            storage.close().await;
            return Err(err.into());
        }
    };
    let connections = connection_limit(&state.config.limits);
    // One shutdown signal for both listeners.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stopping = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let federation = match (listeners.federation, federation_tls) {
        (Some(listener), Some(tls)) => {
            tracing::info!("federation listening on https://{}", listener.local_addr()?);
            let tcp = ConfigFirst { inner: TcpAcceptor::from_tokio(listener)?, started: false };
            let acceptor = connections.bound(tcp.rustls(futures_util::stream::iter([tls])));
            let server = poem::Server::new_with_acceptor(acceptor);
            let app = api::federation::app(state.clone());
            let stopped = stopping(stopped.clone());
            Some(tokio::spawn(
                async move { server.run_with_graceful_shutdown(app, stopped, Some(SHUTDOWN_GRACE)).await },
            ))
        }
        _ => None,
    };
    let sender = state
        .federation_client
        .is_some()
        .then(|| tokio::spawn(federation::sender::run(state.clone(), stopped.clone())));
    let wakeups = changes.map(|changes| tokio::spawn(wakeups::run(state.clone(), changes, stopped.clone())));
    let server = poem::Server::new_with_acceptor(connections.bound(TcpAcceptor::from_tokio(listeners.client)?));
    let client = server.run_with_graceful_shutdown(api::app(state), stopping(stopped), Some(SHUTDOWN_GRACE));
    let signal = async {
        shutdown.await;
        let _ = stop.send(true);
    };
    let (result, ()) = tokio::join!(client, signal);
    let federation_result = match federation {
        Some(task) => task.await.unwrap_or_else(|err| Err(std::io::Error::other(err))),
        None => Ok(()),
    };
    if let Some(sender) = sender {
        let _ = sender.await;
    }
    if let Some(wakeups) = wakeups {
        let _ = wakeups.await;
    }
    storage.close().await;
    tracing::info!("myelin stopped");
    result?;
    Ok(federation_result?)
}

/// The connection cap and deadlines both listeners share.
fn connection_limit(limits: &config::Limits) -> connections::ConnectionLimit {
    // Descriptors kept for the database pool, media files and outgoing federation requests.
    const RESERVE: u64 = 256;
    let mut max = limits.max_connections;
    if let Some(budget) = connections::descriptor_budget(RESERVE)
        && (budget as usize) < max
    {
        tracing::warn!(
            "limits.max_connections lowered from {max} to {budget}: the file descriptor limit allows no more"
        );
        max = (budget as usize).max(1);
    }
    let deadlines = connections::Deadlines {
        head: Duration::from_millis(limits.head_timeout_ms),
        idle: Duration::from_millis(limits.idle_timeout_ms),
    };
    connections::ConnectionLimit::new(max, deadlines)
}

/// Holds back the very first `accept` for one scheduler turn. poem's TLS acceptor races its
/// configuration stream against incoming connections and drops a connection that wins before
/// the certificate is loaded; a peer connecting while we start (its connection already queued on
/// the bound socket) would see a reset.
struct ConfigFirst<A> {
    inner: A,
    started: bool,
}

impl<A: poem::listener::Acceptor> poem::listener::Acceptor for ConfigFirst<A> {
    type Io = A::Io;

    fn local_addr(&self) -> Vec<poem::web::LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(
        &mut self,
    ) -> std::io::Result<(Self::Io, poem::web::LocalAddr, poem::web::RemoteAddr, poem::http::uri::Scheme)> {
        if !self.started {
            self.started = true;
            tokio::task::yield_now().await;
        }
        self.inner.accept().await
    }
}

/// Whether a PEM certificate chain and key make a usable TLS server configuration.
fn check_certificate(cert: &[u8], key: &[u8]) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the file".to_owned());
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("the key is not PEM: {e}"))?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map(|_| ())
        .map_err(|e| format!("the certificate and key do not go together: {e}"))
}

/// The federation listener's certificate and key, read once at start-up.
fn federation_tls(config: &config::Federation) -> Result<poem::listener::RustlsConfig, RunError> {
    let read = |key: &str, path: &Option<std::path::PathBuf>| -> Result<Vec<u8>, RunError> {
        let path = path.as_ref().ok_or_else(|| {
            federation::FederationError::Setup(format!("federation.{key} is required when federation is enabled"))
        })?;
        std::fs::read(path)
            .map_err(|e| federation::FederationError::Setup(format!("federation.{key} {}: {e}", path.display())).into())
    };
    let (cert, key) = (read("tls_cert", &config.tls_cert)?, read("tls_key", &config.tls_key)?);
    // Checked now: poem would only log a bad certificate and leave the listener refusing
    // every connection while the rest of the server runs.
    check_certificate(&cert, &key)
        .map_err(|reason| federation::FederationError::Setup(format!("federation.tls_cert / tls_key: {reason}")))?;
    let certificate = poem::listener::RustlsCertificate::new().cert(cert).key(key);
    Ok(poem::listener::RustlsConfig::new().fallback(certificate))
}
