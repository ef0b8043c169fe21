//! Helpers for tests that federate several Myelin homeservers: a test certificate authority,
//! servers with federation switched on (each `localhost:<its federation port>`, with its own
//! certificate signed by the test CA), and users talking to them over the Client-Server API.

use std::path::PathBuf;

use myelin_homeserver::test_support::{TestBackend, TestServer};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};

/// A certificate authority that every test server trusts (`federation.trusted_ca`).
pub struct TestCa {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM).
    pub cert_path: PathBuf,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A new CA in a temporary folder.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(rcgen::DnType::CommonName, "Myelin test CA");
        let cert = params.self_signed(&key).expect("CA certificate");
        let cert_path = dir.path().join("ca.pem");
        std::fs::write(&cert_path, cert.pem()).expect("write the CA certificate");
        Self { dir, issuer: Issuer::new(params, key), cert_path }
    }

    /// A server certificate for `localhost` and `127.0.0.1`: (certificate, key) PEM files.
    pub fn leaf(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("leaf parameters");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        let cert_path = self.dir.path().join(format!("{name}.pem"));
        let key_path = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write the key");
        (cert_path, key_path)
    }
}

/// Starts a homeserver with federation on: TLS with a certificate from `ca`, trusting `ca`,
/// loopback addresses allowed (everything here runs on 127.0.0.1).
pub async fn federated_server(ca: &TestCa, backend: TestBackend) -> TestServer {
    federated_server_with(ca, backend, |_| {}).await
}

/// Like [`federated_server`], letting `configure` change the configuration last.
pub async fn federated_server_with(
    ca: &TestCa,
    backend: TestBackend,
    configure: impl FnOnce(&mut myelin_homeserver::Config),
) -> TestServer {
    // As the binary does first thing: one crypto provider for every TLS user in the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the federation port");
    let port = listener.local_addr().expect("local address").port();
    let (cert, key) = ca.leaf(&format!("server-{port}"));
    TestServer::start_federated(backend, Some(listener), |config| {
        config.federation.enabled = true;
        config.federation.tls_cert = Some(cert);
        config.federation.tls_key = Some(key);
        config.federation.trusted_ca = Some(ca.cert_path.clone());
        config.federation.allow_private_addresses = true;
        configure(config);
    })
    .await
}

/// The federation base URL of a test server (`https://localhost:PORT`).
pub fn federation_url(server: &TestServer) -> String {
    format!("https://{}", server.config.server_name)
}

/// An HTTP client that trusts the test CA, for talking to federation listeners directly.
pub fn https_client(ca: &TestCa) -> reqwest::Client {
    let pem = std::fs::read(&ca.cert_path).expect("read the CA certificate");
    reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).expect("the CA certificate"))
        .build()
        .expect("HTTP client")
}

/// A user of one of the servers, with an access token.
pub struct User {
    /// The full user ID.
    pub user_id: String,
    /// The client API base URL of their server.
    pub base_url: String,
    token: String,
    http: reqwest::Client,
}

impl User {
    /// Registers `name` on `server`.
    pub async fn register(server: &TestServer, name: &str) -> Self {
        Self::register_at(&server.base_url, name).await
    }

    /// Registers `name` on the server whose client API is at `base_url`.
    pub async fn register_at(base_url: &str, name: &str) -> Self {
        let http = reqwest::Client::new();
        let response: Value = http
            .post(format!("{base_url}/_matrix/client/v3/register"))
            .json(&json!({ "username": name, "password": "federation test password", "auth": { "type": "m.login.dummy" } }))
            .send()
            .await
            .expect("register")
            .json()
            .await
            .expect("register response");
        Self {
            user_id: response["user_id"].as_str().expect("user_id").to_owned(),
            token: response["access_token"].as_str().expect("access_token").to_owned(),
            base_url: base_url.to_owned(),
            http,
        }
    }

    /// The same account, on `server` as it runs now (a restarted server has a new client port).
    pub fn on(&self, server: &TestServer) -> User {
        self.at(&server.base_url)
    }

    /// The same account, through the client API at `base_url` (another process of its server).
    pub fn at(&self, base_url: &str) -> User {
        User {
            user_id: self.user_id.clone(),
            base_url: base_url.to_owned(),
            token: self.token.clone(),
            http: self.http.clone(),
        }
    }

    /// A client API request; returns the status and the JSON body.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request =
            self.http.request(method, format!("{}/_matrix/client/v3{path}", self.base_url)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("client API request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A request to any path of the server (media), with a raw body; returns the status,
    /// the `Content-Type` and the body.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> (u16, Option<String>, Vec<u8>) {
        let mut request = self.http.request(method, format!("{}{path}", self.base_url)).bearer_auth(&self.token);
        if let Some((bytes, content_type)) = body {
            request = request.header("Content-Type", content_type).body(bytes);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
        (status, content_type, response.bytes().await.expect("body").to_vec())
    }

    /// A GET that must succeed.
    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// A POST that must succeed.
    pub async fn post(&self, path: &str, body: Value) -> Value {
        let (status, body) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, 200, "POST {path}: {body}");
        body
    }

    /// A PUT that must succeed.
    pub async fn put(&self, path: &str, body: Value) -> Value {
        let (status, body) = self.call(reqwest::Method::PUT, path, Some(body)).await;
        assert_eq!(status, 200, "PUT {path}: {body}");
        body
    }
}

/// Percent-encodes one path segment (user and room IDs carry `@`, `:`, `!`, `#`).
pub fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One federating server run by several `myelin-server` processes (the real binary, configured
/// from the environment only) on one PostgreSQL database and one data directory. Its name is
/// `localhost:<the first process's federation port>`: other servers reach that process; every
/// process sends.
pub struct Processes {
    /// The server name.
    pub server_name: String,
    /// The processes.
    pub processes: Vec<myelin_homeserver::test_support::ServerProcess>,
    /// The database the processes share.
    pub database: myelin_homeserver::test_support::TestDatabase,
    _data: tempfile::TempDir,
}

impl Processes {
    /// Starts `count` processes with certificates from `ca`, and waits until each answers.
    pub async fn start(ca: &TestCa, count: usize) -> Self {
        let database = myelin_homeserver::test_support::TestDatabase::create(TestBackend::Postgres).await;
        let data = tempfile::tempdir().expect("temporary directory");
        let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let federation_ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
        let server_name = format!("localhost:{}", federation_ports[0]);
        let (cert, key) = ca.leaf(&format!("processes-{}", federation_ports[0]));
        let path = |p: &std::path::Path| p.display().to_string();
        let environment: Vec<(String, String)> = [
            ("MYELIN_SERVER_NAME", server_name.clone()),
            ("MYELIN_DATA_DIR", path(data.path())),
            ("MYELIN_DATABASE__URL", database.url.clone()),
            ("MYELIN_DATABASE__MAX_CONNECTIONS", "6".to_owned()),
            ("MYELIN_RATE_LIMITS__ENABLED", "false".to_owned()),
            ("MYELIN_FEDERATION__ENABLED", "true".to_owned()),
            ("MYELIN_FEDERATION__TLS_CERT", path(&cert)),
            ("MYELIN_FEDERATION__TLS_KEY", path(&key)),
            ("MYELIN_FEDERATION__TRUSTED_CA", path(&ca.cert_path)),
            ("MYELIN_FEDERATION__ALLOW_PRIVATE_ADDRESSES", "true".to_owned()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
        let binary = server_binary();
        let mut processes = Vec::new();
        for (index, federation_port) in federation_ports.into_iter().enumerate() {
            let client_port = free_port();
            let mut environment = environment.clone();
            environment.push(("MYELIN_LISTEN__FEDERATION".to_owned(), format!("127.0.0.1:{federation_port}")));
            environment.push(("MYELIN_PUBLIC_BASEURL".to_owned(), format!("http://127.0.0.1:{client_port}")));
            let log = data.path().join(format!("process-{index}.log"));
            let process =
                myelin_homeserver::test_support::ServerProcess::start(&binary, environment, client_port, log).await;
            processes.push(process);
        }
        Self { server_name, processes, database, _data: data }
    }

    /// Each process's client API base URL.
    pub fn client_url(&self, index: usize) -> &str {
        &self.processes[index].client_url
    }

    /// Kills the process with this PID with SIGKILL (no shutdown: its leases stay taken).
    pub fn kill(&mut self, pid: u32) {
        self.processes.iter_mut().find(|p| p.pid() == Some(pid)).expect("one of ours").kill();
    }
}

/// The `myelin-server` binary of this build (`target/<profile>/`), built first if missing, or
/// the one `MYELIN_SERVER_BIN` names.
fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MYELIN_SERVER_BIN") {
        return PathBuf::from(path);
    }
    // Tests run from target/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable");
    let binary = exe.parent().and_then(|deps| deps.parent()).expect("target directory").join("myelin-server");
    if !binary.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "myelin-homeserver", "--bin", "myelin-server"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building myelin-server failed");
    }
    binary
}
