//! The homeserver under test: a fresh Myelin this tool starts (SQLite or PostgreSQL), or any
//! already-running homeserver given by URL.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::{Connection, Executor};

/// A homeserver to drive.
pub struct Target {
    /// Label in reports.
    pub name: String,
    /// Base URL of its client API.
    pub base_url: String,
    /// Its process, when this tool started it (for CPU and memory readings).
    pub pid: Option<u32>,
    child: Option<Child>,
    _data: Option<tempfile::TempDir>,
    database: Option<(String, String)>,
}

impl Target {
    /// An existing homeserver.
    pub fn external(name: &str, base_url: &str) -> Self {
        Self {
            name: name.to_owned(),
            base_url: base_url.to_owned(),
            pid: None,
            child: None,
            _data: None,
            database: None,
        }
    }

    /// Starts a fresh Myelin (the `myelin-server` binary built beside this tool) on an ephemeral
    /// port with rate limits off, on SQLite in a temporary directory, or on a new database of the
    /// PostgreSQL server at `postgres` (`postgres://user@host:port/db`).
    pub async fn start_myelin(postgres: Option<&str>) -> anyhow::Result<Self> {
        let binary = server_binary()?;
        let data = tempfile::tempdir().context("temporary data directory")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut command = Command::new(&binary);
        command
            // The tool's own setting, not a server configuration key (the server refuses unknown keys).
            .env_remove("MYELIN_SERVER_BIN")
            .env("MYELIN_SERVER_NAME", format!("localhost:{port}"))
            .env("MYELIN_LISTEN__CLIENT", format!("127.0.0.1:{port}"))
            .env("MYELIN_DATA_DIR", data.path())
            .env("MYELIN_RATE_LIMITS__ENABLED", "false")
            .env("MYELIN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let mut database = None;
        let name = if let Some(admin_url) = postgres {
            let db = format!("myelin_bench_{}", uuid::Uuid::new_v4().simple());
            let mut admin = sqlx::PgConnection::connect(admin_url).await.context("connecting to PostgreSQL")?;
            admin.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).await?;
            let url = match admin_url.rsplit_once('/') {
                Some((server, _)) if server.contains("://") && server.len() > "postgres://".len() => {
                    format!("{server}/{db}")
                }
                _ => format!("{}/{db}", admin_url.trim_end_matches('/')),
            };
            command.env("MYELIN_DATABASE__URL", url);
            database = Some((admin_url.to_owned(), db));
            "myelin (PostgreSQL)"
        } else {
            "myelin (SQLite)"
        };
        let child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;
        let target = Self {
            name: name.to_owned(),
            base_url: format!("http://127.0.0.1:{port}"),
            pid: Some(child.id()),
            child: Some(child),
            _data: Some(data),
            database,
        };
        crate::client::Client::new(&target.base_url)?.wait_until_up(Duration::from_secs(60)).await?;
        Ok(target)
    }

    /// Stops a server this tool started and drops its PostgreSQL database.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // SIGTERM for a graceful stop, then make sure.
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            for _ in 0..100 {
                if child.try_wait()?.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some((admin_url, db)) = self.database.take() {
            let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
            admin.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))).await?;
        }
        Ok(())
    }
}

/// `myelin-server` from the directory this tool was built into (`target/release` when run with
/// `cargo run --release`), or from `MYELIN_SERVER_BIN`.
fn server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("MYELIN_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let here = std::env::current_exe()?;
    let candidate = here.with_file_name("myelin-server");
    if !candidate.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release --bin myelin-server) or set MYELIN_SERVER_BIN",
            candidate.display()
        );
    }
    Ok(candidate)
}
