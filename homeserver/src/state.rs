//! Shared state handed to every request through poem's `.data()`: no globals.

use std::sync::Arc;

use crate::config::Config;
use crate::crypto::SigningKey;
use crate::federation::{FederationClient, FederationError};
use crate::media::MediaStore;
use crate::rate_limit::Limiters;
use crate::rooms::timeline::Writer;
use crate::storage::Storage;

/// Everything a request handler may need. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

/// The contents of [`AppState`].
#[derive(Debug)]
pub struct Inner {
    /// The configuration the server started with.
    pub config: Config,
    /// The database.
    pub storage: Storage,
    /// The server's signing key.
    pub signing_key: Arc<SigningKey>,
    /// Keys it signed with before rotations, by key ID.
    pub old_signing_keys: std::collections::BTreeMap<String, crate::crypto::OldKey>,
    /// Request rate limits.
    pub limits: Limiters,
    /// The latest stream position committed by any process; waiting syncs watch it.
    pub notifier: Arc<tokio::sync::watch::Sender<i64>>,
    /// Appends events to rooms, in groups.
    pub writer: Writer,
    /// Where media bytes live.
    pub media: MediaStore,
    /// Wakes downloads waiting for a reserved media ID's upload (any process's: see [`crate::wakeups`]).
    pub media_uploaded: tokio::sync::Notify,
    /// The memory thumbnailing may hold at once, in MiB: decoding images is memory-heavy.
    pub thumbnail_memory: tokio::sync::Semaphore,
    /// Requests to other servers; `None` when federation is disabled.
    pub federation_client: Option<FederationClient>,
    /// Wakes the federation sender when something was queued for another server.
    pub outbox_ready: Arc<tokio::sync::Notify>,
}

impl AppState {
    /// Bundles the parts and starts the event writer (so: within a Tokio runtime).
    pub fn new(
        config: Config,
        storage: Storage,
        signing_key: SigningKey,
        media: MediaStore,
        stream_position: i64,
    ) -> Result<Self, FederationError> {
        let old_signing_keys = crate::crypto::load_old_keys(&config.data_dir.join(crate::crypto::OLD_KEYS_FILE))
            .map_err(|e| FederationError::Setup(e.to_string()))?;
        let limits = Limiters::new(&config.rate_limits, &config.admins);
        let notifier = Arc::new(tokio::sync::watch::Sender::new(stream_position));
        let signing_key = Arc::new(signing_key);
        let federation_client =
            config.federation.enabled.then(|| FederationClient::new(&config, signing_key.clone())).transpose()?;
        let outbox_ready = Arc::new(tokio::sync::Notify::new());
        let writer = Writer::start(
            storage.clone(),
            signing_key.clone(),
            notifier.clone(),
            outbox_ready.clone(),
            config.server_name.clone(),
        );
        Ok(Self(Arc::new(Inner {
            config,
            storage,
            signing_key,
            old_signing_keys,
            limits,
            notifier,
            writer,
            media,
            media_uploaded: tokio::sync::Notify::new(),
            thumbnail_memory: tokio::sync::Semaphore::new(crate::api::media::THUMBNAIL_MEMORY_MIB as usize),
            federation_client,
            outbox_ready,
        })))
    }
}

impl AppState {
    /// The federation client, or [`FederationError::Disabled`].
    pub fn federation(&self) -> Result<&FederationClient, FederationError> {
        self.federation_client.as_ref().ok_or(FederationError::Disabled)
    }

    /// Wakes waiting syncs after a change committed at stream `position`.
    pub fn notify(&self, position: i64) {
        notify(&self.notifier, position);
    }
}

/// Publishes stream `position` unless a later one was published already.
pub fn notify(notifier: &tokio::sync::watch::Sender<i64>, position: i64) {
    notifier.send_if_modified(|latest| {
        let newer = position > *latest;
        *latest = (*latest).max(position);
        newer
    });
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
