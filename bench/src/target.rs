//! The homeserver under test: a fresh Myelin this tool starts (SQLite, or PostgreSQL with one or
//! more processes on one database), or any already-running homeserver given by URL.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::{Connection, Executor};

/// A homeserver to drive.
pub struct Target {
    /// Label in reports.
    pub name: String,
    /// Base URLs of its client API, one per process.
    pub base_urls: Vec<String>,
    /// Its processes, when this tool started them (for CPU and memory readings).
    pub pids: Vec<u32>,
    children: Vec<Child>,
    _data: Option<tempfile::TempDir>,
    database: Option<(String, String)>,
}

impl Target {
    /// An existing homeserver.
    pub fn external(name: &str, base_url: &str) -> Self {
        Self {
            name: name.to_owned(),
            base_urls: vec![base_url.to_owned()],
            pids: Vec::new(),
            children: Vec::new(),
            _data: None,
            database: None,
        }
    }

    /// Starts a fresh Myelin (the `myelin-server` binary built beside this tool) on ephemeral
    /// ports with rate limits off, on SQLite in a temporary directory, or on a new database of the
    /// PostgreSQL server at `postgres` (`postgres://user@host:port/db`) with `processes`
    /// processes serving one server name from it (and one data directory, for the signing key).
    pub async fn start_myelin(postgres: Option<&str>, processes: usize) -> anyhow::Result<Self> {
        let binary = server_binary()?;
        let data = tempfile::tempdir().context("temporary data directory")?;
        let mut environment = vec![
            ("MYELIN_SERVER_NAME".to_owned(), "bench.localhost".to_owned()),
            ("MYELIN_DATA_DIR".to_owned(), data.path().display().to_string()),
            ("MYELIN_RATE_LIMITS__ENABLED".to_owned(), "false".to_owned()),
            ("MYELIN_LOG".to_owned(), "warn".to_owned()),
        ];
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
            environment.push(("MYELIN_DATABASE__URL".to_owned(), url));
            database = Some((admin_url.to_owned(), db));
            match processes {
                1 => "myelin (PostgreSQL)".to_owned(),
                n => format!("myelin (PostgreSQL, {n} processes)"),
            }
        } else {
            anyhow::ensure!(processes == 1, "several processes share a PostgreSQL database: add --postgres");
            "myelin (SQLite)".to_owned()
        };
        let mut target =
            Self { name, base_urls: Vec::new(), pids: Vec::new(), children: Vec::new(), _data: Some(data), database };
        for _ in 0..processes.max(1) {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let child = Command::new(&binary)
                // The tool's own setting, not a server configuration key (the server refuses unknown keys).
                .env_remove("MYELIN_SERVER_BIN")
                .envs(environment.iter().map(|(key, value)| (key, value)))
                .env("MYELIN_LISTEN__CLIENT", format!("127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            target.pids.push(child.id());
            target.children.push(child);
            target.base_urls.push(format!("http://127.0.0.1:{port}"));
        }
        crate::client::Client::round_robin(&target.base_urls)?.wait_until_up(Duration::from_secs(60)).await?;
        Ok(target)
    }

    /// Stops a server this tool started and drops its PostgreSQL database.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for mut child in std::mem::take(&mut self.children) {
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
