//! Real `myelin-server` processes — the binary, configured from the environment only — for tests
//! that kill them (SIGKILL) or run several on one database and data directory (the shared
//! signing key and media folder), as behind a load balancer.

use myelin_homeserver::test_support::{ServerProcess, TestDatabase};

use crate::binary::free_port;
use crate::support::*;

/// The server name every process of a cluster serves.
pub const SERVER_NAME: &str = "cluster.test";

/// One database, one data directory, N processes.
pub struct Cluster {
    processes: Vec<(ServerProcess, Client)>,
    /// The PostgreSQL database; `None` on SQLite, whose file lives in the data directory.
    _database: Option<TestDatabase>,
    _data: tempfile::TempDir,
}

impl Cluster {
    /// Starts `count` processes on `backend` (several only on PostgreSQL) and waits for each.
    pub async fn start(backend: TestBackend, count: usize) -> Self {
        assert!(count == 1 || backend == TestBackend::Postgres, "several processes share a PostgreSQL database");
        let database = match backend {
            TestBackend::Postgres => Some(TestDatabase::create(backend).await),
            TestBackend::Sqlite => None,
        };
        let data = tempfile::tempdir().unwrap();
        let mut environment = vec![
            ("MYELIN_SERVER_NAME".to_owned(), SERVER_NAME.to_owned()),
            ("MYELIN_DATA_DIR".to_owned(), data.path().display().to_string()),
            ("MYELIN_RATE_LIMITS__ENABLED".to_owned(), "false".to_owned()),
        ];
        if let Some(database) = &database {
            environment.push(("MYELIN_DATABASE__URL".to_owned(), database.url.clone()));
            environment.push(("MYELIN_DATABASE__MAX_CONNECTIONS".to_owned(), "6".to_owned()));
        }
        let mut processes = Vec::new();
        for index in 0..count {
            let log = data.path().join(format!("process-{index}.log"));
            let binary = std::path::Path::new(env!("CARGO_BIN_EXE_myelin-server"));
            let process = ServerProcess::start(binary, environment.clone(), free_port(), log).await;
            let client = Client::new(&process.client_url);
            processes.push((process, client));
        }
        Self { processes, _database: database, _data: data }
    }

    /// SIGKILL: no shutdown, no lease release, connections cut.
    pub fn kill(&mut self, index: usize) {
        self.processes[index].0.kill();
    }

    /// Starts a killed process again on its port.
    pub async fn restart(&mut self, index: usize) {
        self.processes[index].0.restart().await;
    }
}

impl std::ops::Index<usize> for Cluster {
    type Output = Client;

    fn index(&self, index: usize) -> &Client {
        &self.processes[index].1
    }
}
