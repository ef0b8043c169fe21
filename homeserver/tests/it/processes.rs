//! Real `myelin-server` processes — the binary, configured from the environment only — for tests
//! that kill them (SIGKILL) or run several on one database and data directory (the shared
//! signing key and media folder), as behind a load balancer.

use std::process::{Child, Command, Stdio};

use myelin_homeserver::test_support::TestDatabase;

use crate::binary::{free_port, server, wait_until_up};
use crate::support::*;

/// The server name every process of a cluster serves.
pub const SERVER_NAME: &str = "cluster.test";

/// One database, one data directory, N processes.
pub struct Cluster {
    /// The PostgreSQL database; `None` on SQLite, whose file lives in the data directory.
    database: Option<TestDatabase>,
    data: tempfile::TempDir,
    processes: Vec<Process>,
}

struct Process {
    child: Option<Child>,
    port: u16,
    client: Client,
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
        let mut cluster = Self { database, data, processes: Vec::new() };
        for index in 0..count {
            let port = free_port();
            let child = cluster.spawn(index, port);
            let client = Client::new(&format!("http://127.0.0.1:{port}"));
            cluster.processes.push(Process { child: Some(child), port, client });
        }
        for process in &cluster.processes {
            wait_until_up(&process.client.http, &process.client.base_url).await;
        }
        cluster
    }

    fn spawn(&self, index: usize, port: u16) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join(format!("process-{index}.log")))
            .unwrap();
        let mut command: Command = server(self.data.path(), port);
        command
            .env("MYELIN_SERVER_NAME", SERVER_NAME)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        if let Some(database) = &self.database {
            command.env("MYELIN_DATABASE__URL", &database.url).env("MYELIN_DATABASE__MAX_CONNECTIONS", "6");
        }
        command.spawn().unwrap()
    }

    /// SIGKILL: no shutdown, no lease release, connections cut.
    pub fn kill(&mut self, index: usize) {
        let mut child = self.processes[index].child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts a killed process again on its port.
    pub async fn restart(&mut self, index: usize) {
        let child = self.spawn(index, self.processes[index].port);
        self.processes[index].child = Some(child);
        let process = &self.processes[index];
        wait_until_up(&process.client.http, &process.client.base_url).await;
    }
}

impl std::ops::Index<usize> for Cluster {
    type Output = Client;

    fn index(&self, index: usize) -> &Client {
        &self.processes[index].client
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
