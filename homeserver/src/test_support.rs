//! Helpers for tests (this crate's and other crates'): throwaway databases on each backend.
//!
//! PostgreSQL tests run when `MYELIN_TEST_POSTGRES_URL` names a server to create databases on
//! (e.g. `postgres://postgres@127.0.0.1:5432/postgres`); each test gets a fresh database that
//! is dropped when the test ends, even when it fails.

use sqlx::{Connection, Executor};

/// Which database a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestBackend {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A fresh database on the server named by `MYELIN_TEST_POSTGRES_URL`.
    Postgres,
}

/// A database that exists for the lifetime of this value.
#[derive(Debug)]
pub struct TestDatabase {
    /// The URL to give to `database.url`.
    pub url: String,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl TestDatabase {
    /// Creates an empty database on `backend`.
    pub async fn create(backend: TestBackend) -> Self {
        match backend {
            TestBackend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
                Self { url, cleanup: Cleanup::Sqlite(dir) }
            }
            TestBackend::Postgres => {
                let admin_url = std::env::var("MYELIN_TEST_POSTGRES_URL")
                    .expect("MYELIN_TEST_POSTGRES_URL must be set for PostgreSQL tests");
                let name = format!("myelin_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = sqlx::PgConnection::connect(&admin_url).await.expect("connect to PostgreSQL");
                admin
                    .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await
                    .expect("create test database");
                let _ = admin.close().await;
                let url = match admin_url.rsplit_once('/') {
                    Some((server, last)) if !last.contains('@') && !server.ends_with('/') => format!("{server}/{name}"),
                    _ => format!("{}/{name}", admin_url.trim_end_matches('/')),
                };
                Self { url, cleanup: Cleanup::Postgres { admin_url, name } }
            }
        }
    }

    /// Everything the database holds, as text: to check what it does *not* hold (plaintext,
    /// secrets). SQLite: the database file and its write-ahead log; PostgreSQL: every row of
    /// every table.
    pub async fn dump(&self) -> String {
        match &self.cleanup {
            Cleanup::Sqlite(_) => {
                let path = self.url.trim_start_matches("sqlite://").split('?').next().unwrap_or_default().to_owned();
                let mut text = String::new();
                for file in [path.clone(), format!("{path}-wal")] {
                    if let Ok(bytes) = std::fs::read(&file) {
                        text.push_str(&String::from_utf8_lossy(&bytes));
                    }
                }
                text
            }
            Cleanup::Postgres { .. } => {
                use sqlx::Row;
                let mut conn = sqlx::PgConnection::connect(&self.url).await.expect("connect to the test database");
                let tables: Vec<String> =
                    sqlx::query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'")
                        .fetch_all(&mut conn)
                        .await
                        .expect("list tables")
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                let mut text = String::new();
                for table in tables {
                    // Table names come from the catalogue, quoted.
                    let sql = format!("SELECT CAST(t AS TEXT) FROM \"{table}\" t");
                    for row in sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut conn).await.expect("read table") {
                        text.push_str(&row.get::<String, _>(0));
                        text.push('\n');
                    }
                }
                let _ = conn.close().await;
                text
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Cleanup::Postgres { admin_url, name } = &self.cleanup else { return };
        let (admin_url, name) = (admin_url.clone(), name.clone());
        let label = name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread with
        // its own runtime. FORCE disconnects pools that have not noticed the end of the test.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .await
                    .ok()?;
                admin.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop test database {label}");
        }
    }
}

/// Declares, for each named `async fn(TestBackend)`, a SQLite test and a PostgreSQL test (the
/// latter ignored unless `MYELIN_TEST_POSTGRES_URL` was set when the tests were built).
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::test_support::TestBackend::Sqlite).await;
            }

            #[tokio::test]
            #[cfg_attr(not(myelin_postgres_tests), ignore = "set MYELIN_TEST_POSTGRES_URL to run")]
            async fn postgres() {
                super::$name($crate::test_support::TestBackend::Postgres).await;
            }
        }
    )*};
}

/// A homeserver running in this process on an ephemeral loopback port, with its own data
/// directory and database.
#[derive(Debug)]
pub struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// The configuration it runs with.
    pub config: crate::Config,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), crate::RunError>>>,
    data_dir: std::sync::Arc<tempfile::TempDir>,
    database: std::sync::Arc<TestDatabase>,
}

impl TestServer {
    /// Starts a server on `backend` with test defaults: rate limits off, open registration.
    pub async fn start(backend: TestBackend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Like [`TestServer::start`], letting `configure` change the configuration first.
    pub async fn start_with(backend: TestBackend, configure: impl FnOnce(&mut crate::Config)) -> Self {
        Self::start_federated(backend, None, configure).await
    }

    /// Like [`TestServer::start_with`], also serving federation on `federation` (whose port
    /// then makes the server name `localhost:PORT`; `configure` must enable federation and
    /// give it certificates).
    pub async fn start_federated(
        backend: TestBackend,
        federation: Option<tokio::net::TcpListener>,
        configure: impl FnOnce(&mut crate::Config),
    ) -> Self {
        let database = std::sync::Arc::new(TestDatabase::create(backend).await);
        let data_dir = std::sync::Arc::new(tempfile::tempdir().expect("temporary directory"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let named_by = federation.as_ref().unwrap_or(&listener);
        let port = named_by.local_addr().expect("local address").port();
        let mut config = crate::Config {
            server_name: format!("localhost:{port}"),
            data_dir: data_dir.path().to_owned(),
            ..Default::default()
        };
        config.database.url = Some(database.url.clone());
        config.database.max_connections = Some(4);
        config.rate_limits.enabled = false;
        if let Some(federation) = &federation {
            config.listen.federation = federation.local_addr().expect("local address");
        }
        configure(&mut config);
        config.validate().expect("valid test configuration");
        Self::spawn(config, crate::Listeners { client: listener, federation }, data_dir, database)
    }

    fn spawn(
        mut config: crate::Config,
        listeners: crate::Listeners,
        data_dir: std::sync::Arc<tempfile::TempDir>,
        database: std::sync::Arc<TestDatabase>,
    ) -> Self {
        let base_url = format!("http://{}", listeners.client.local_addr().expect("local address"));
        if config.federation.enabled {
            // The server name names the federation port: clients are sent to the client one.
            config.public_baseurl = Some(base_url.clone());
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(crate::serve(config.clone(), listeners, async {
            let _ = rx.await;
        }));
        Self { base_url, config, shutdown: Some(tx), task: Some(task), data_dir, database }
    }

    /// Everything the server's database holds, as text (see [`TestDatabase::dump`]).
    pub async fn database_dump(&self) -> String {
        self.database.dump().await
    }

    /// Stops the server gracefully and waits until it has closed its database.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server ran cleanly");
        }
    }

    /// Stops the server and starts it again on a new port with the same configuration,
    /// data directory and database.
    pub async fn restart(mut self) -> Self {
        self.stop().await;
        let client = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        // The federation port is part of the server name: the same one again.
        let federation = if self.config.federation.enabled {
            Some(tokio::net::TcpListener::bind(self.config.listen.federation).await.expect("bind the federation port"))
        } else {
            None
        };
        let listeners = crate::Listeners { client, federation };
        Self::spawn(self.config.clone(), listeners, self.data_dir.clone(), self.database.clone())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A `myelin-server` process (the real binary, configured from the environment only), for tests
/// that kill it with SIGKILL or run several on one database. It is killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    binary: std::path::PathBuf,
    environment: Vec<(String, String)>,
    log: std::path::PathBuf,
    child: Option<std::process::Child>,
    /// `http://127.0.0.1:<client port>`.
    pub client_url: String,
}

impl ServerProcess {
    /// Starts `binary` with exactly `environment` (plus `MYELIN_LISTEN__CLIENT` on `client_port`),
    /// appending its output to `log`, and waits until its client API answers.
    pub async fn start(
        binary: &std::path::Path,
        environment: Vec<(String, String)>,
        client_port: u16,
        log: std::path::PathBuf,
    ) -> Self {
        let mut environment = environment;
        environment.push(("MYELIN_LISTEN__CLIENT".to_owned(), format!("127.0.0.1:{client_port}")));
        let mut process = Self {
            binary: binary.to_owned(),
            environment,
            log,
            child: None,
            client_url: format!("http://127.0.0.1:{client_port}"),
        };
        process.restart().await;
        process
    }

    /// The operating system's ID of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// SIGKILL: no shutdown, no lease release, connections cut.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }

    /// Starts it (again, after [`ServerProcess::kill`]) with the same environment and port,
    /// and waits until its client API answers.
    pub async fn restart(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = std::process::Command::new(&self.binary)
            .env_clear()
            .envs(self.environment.iter().map(|(key, value)| (key, value)))
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start myelin-server");
        self.child = Some(child);
        let http = reqwest::Client::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while http.get(format!("{}/_matrix/client/versions", self.client_url)).send().await.is_err() {
            assert!(std::time::Instant::now() < deadline, "{} did not come up", self.client_url);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The auth events an event cites, picked from `state` (type and state key → event ID) by the
/// spec's selection as the writer makes it (ruma-state-res): for tests that build events by hand.
pub fn auth_events_from(
    state: &std::collections::BTreeMap<(String, String), ruma_common::OwnedEventId>,
    kind: &ruma_events::TimelineEventType,
    sender: &str,
    state_key: Option<&str>,
    content: &serde_json::Value,
    rules: &ruma_common::room_version_rules::AuthorizationRules,
) -> Vec<ruma_common::OwnedEventId> {
    let sender = ruma_common::UserId::parse(sender).expect("a user ID");
    let content = serde_json::value::to_raw_value(content).expect("JSON");
    let wanted = ruma_state_res::auth_types_for_event(kind, &sender, state_key, &content, rules)
        .expect("an event the selection can take");
    let mut ids: Vec<_> =
        wanted.iter().filter_map(|(kind, key)| state.get(&(kind.to_string(), key.clone())).cloned()).collect();
    ids.sort();
    ids.dedup();
    ids
}
