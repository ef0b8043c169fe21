//! The storage layer: one API over SQLite and PostgreSQL.
//!
//! Queries go through sqlx's `Any` driver with `$n` placeholders and portable SQL, so each
//! query is written once and runs on both backends; the schema comes from `migrations/`.
//! This layer speaks in rows and domain words ([`Error::Conflict`], [`Error::NotFound`]), never
//! in HTTP status codes or Matrix error codes.

mod accounts;
mod aliases;
mod changes;
mod federation_queue;
mod filters;
mod key_backup;
mod keys;
mod media;
mod profile;
mod rooms;
mod server_keys;
mod streams;
mod to_device;
mod uia;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use accounts::{Device, NewLogin, TokenOwner};
pub use changes::{Change, Changes};
pub use federation_queue::{Outgoing, PendingTransaction};
pub use key_backup::{BackupKey, BackupVersion};
pub use keys::{KeySignature, StoredDeviceKeys, UploadedKey};
pub use media::{MediaItem, MediaWrite, Uploaded};
pub use rooms::{NewEvent, Room, RoomWrite, StateIds, StateKey, StoredEvent, TxnKey};
pub use server_keys::ServerKey;
pub use streams::{Presence, Receipt};
pub use to_device::{Recipient, ToDeviceMessage};
pub use uia::UiaSession;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The row to change does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness constraint refused the write (e.g. a user ID that is taken).
    #[error("conflict on {constraint}")]
    Conflict {
        /// The constraint or table that refused it.
        constraint: String,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Backend(#[from] sqlx::Error),
    /// The transaction this write belonged to failed (the cause is logged where it happened).
    #[error("write aborted: {0}")]
    Aborted(String),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

/// Result of the storage layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Turns a unique violation into [`Error::Conflict`], anything else into [`Error::Backend`].
fn on_conflict(constraint: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |err| match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => Error::Conflict { constraint: constraint.to_owned() },
        _ => Error::Backend(err),
    }
}

/// Which database engine is behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, the zero-setup default.
    Sqlite,
    /// PostgreSQL, for scale-out.
    Postgres,
}

/// A pool of connections to the homeserver's database.
#[derive(Clone, Debug)]
pub struct Storage {
    pool: AnyPool,
    backend: Backend,
    sqlite_writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Where the pool connects, for the `LISTEN` connection.
    url: std::sync::Arc<DatabaseUrl>,
}

/// A database URL, which may hold a password: never printed.
struct DatabaseUrl(String);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(…)")
    }
}

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

impl Storage {
    /// Connects to `url` (`sqlite://…` or `postgres://…`) and applies pending migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        if backend == Backend::Sqlite {
            create_private(url)?;
        }
        let options = AnyConnectOptions::from_str(url)?;
        let mut pool_options =
            AnyPoolOptions::new().max_connections(max_connections).acquire_timeout(Duration::from_secs(30));
        if backend == Backend::Sqlite {
            // Per connection: FULL syncs the WAL on every commit, so an acknowledged write
            // survives a crash or power loss, whatever the library was compiled to default to.
            pool_options = pool_options.after_connect(|conn, _meta| {
                Box::pin(async move { conn.execute("PRAGMA synchronous = FULL").await.map(|_| ()) })
            });
        }
        if backend == Backend::Postgres {
            // Every connection is opened up front and kept (replaced in the background when it
            // ages out), never in a request's path: sqlx 0.9 leaves Nagle's algorithm on for
            // PostgreSQL sockets (sqlx#4335, fixed after 0.9.0), and a connection's start-up
            // exchange then waits out delayed ACKs — measured as 40–200 ms stalls on one request
            // in a hundred until the pool was warm.
            pool_options = pool_options.min_connections(max_connections);
        }
        let pool = pool_options.connect_with(options).await?;
        if backend == Backend::Sqlite {
            // WAL lets readers proceed during a write; the mode is stored in the file, so
            // setting it once covers every later connection.
            pool.execute("PRAGMA journal_mode = WAL").await?;
        }
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATOR,
            Backend::Postgres => &POSTGRES_MIGRATOR,
        };
        migrator.run(&pool).await.map_err(|e| Error::Backend(e.into()))?;
        let url = std::sync::Arc::new(DatabaseUrl(url.to_owned()));
        Ok(Self { pool, backend, sqlite_writer: Default::default(), url })
    }

    /// Which engine this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Waits for in-flight queries and closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a transaction that will write.
    ///
    /// SQLite allows one writer at a time. Writers of this process queue on an async mutex
    /// first, in arrival order, instead of meeting in SQLite's busy handler, which retries with
    /// sleeps and turns contention into long latency tails. Then `BEGIN IMMEDIATE` takes the
    /// write lock up front, so a transaction that reads before it writes cannot fail with
    /// `SQLITE_BUSY` halfway.
    async fn begin_write(&self) -> Result<WriteTx> {
        Ok(match self.backend {
            Backend::Sqlite => {
                let guard = self.sqlite_writer.clone().lock_owned().await;
                WriteTx { tx: self.pool.begin_with("BEGIN IMMEDIATE").await?, _writer: Some(guard) }
            }
            Backend::Postgres => WriteTx { tx: self.pool.begin().await?, _writer: None },
        })
    }
}

/// Creates the SQLite database file of `url`, if missing, readable by its owner only: it holds
/// password hashes, keys and messages. SQLite gives its `-wal` and `-shm` files the database
/// file's permissions.
fn create_private(url: &str) -> Result<()> {
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
    let path = options.get_filename();
    if path.as_os_str().is_empty() || path == std::path::Path::new(":memory:") || path.exists() {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new();
    file.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
    match file.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::Backend(sqlx::Error::Io(e))),
    }
}

/// A write transaction; on SQLite it also holds this process's writer slot until it ends.
pub struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _writer: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    /// Commits the transaction (and frees the writer slot).
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;

    fn deref(&self) -> &sqlx::AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod conformance;
