//! A client for the test server and helpers shared by the test modules.

use std::time::Duration;

pub use myelin_homeserver::test_support::{TestBackend, TestServer};
pub use reqwest::StatusCode;
pub use serde_json::{Value, json};

/// A registered, logged-in account.
#[derive(Clone, Debug)]
pub struct Account {
    pub user_id: String,
    pub access_token: String,
    pub device_id: String,
}

/// A running server plus an HTTP client for it.
pub struct Harness {
    pub server: TestServer,
    pub http: reqwest::Client,
}

impl Harness {
    pub async fn start(backend: TestBackend) -> Self {
        Self::with(TestServer::start(backend).await)
    }

    pub async fn start_with(backend: TestBackend, configure: impl FnOnce(&mut myelin_homeserver::Config)) -> Self {
        Self::with(TestServer::start_with(backend, configure).await)
    }

    pub fn with(server: TestServer) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        Self { server, http }
    }

    pub async fn restart(self) -> Self {
        Self::with(self.server.restart().await)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url)
    }

    pub fn server_name(&self) -> &str {
        &self.server.config.server_name
    }

    /// Sends a request with an optional bearer token and JSON body; returns status and JSON.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method.parse().unwrap(), self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        decode(req.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call("GET", path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call("POST", path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call("PUT", path, token, Some(body)).await
    }

    /// Registers through the `m.login.dummy` flow.
    pub async fn register(&self, username: &str, password: &str) -> Account {
        let body = json!({"username": username, "password": password});
        let (status, challenge) = self.post("/_matrix/client/v3/register", None, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
        let mut body = body;
        body["auth"] = json!({"type": "m.login.dummy", "session": challenge["session"]});
        let (status, registered) = self.post("/_matrix/client/v3/register", None, body).await;
        assert_eq!(status, StatusCode::OK, "{registered}");
        account(&registered)
    }

    /// Logs in with a password; panics unless it succeeds.
    pub async fn login(&self, user: &str, password: &str) -> Account {
        let (status, body) = self.try_login(user, password).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        account(&body)
    }

    pub async fn try_login(&self, user: &str, password: &str) -> (StatusCode, Value) {
        let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password});
        self.post("/_matrix/client/v3/login", None, body).await
    }

    /// `GET /account/whoami` with `token`.
    pub async fn whoami(&self, token: &str) -> (StatusCode, Value) {
        self.get("/_matrix/client/v3/account/whoami", Some(token)).await
    }
}

fn account(body: &Value) -> Account {
    Account {
        user_id: body["user_id"].as_str().unwrap().to_owned(),
        access_token: body["access_token"].as_str().unwrap().to_owned(),
        device_id: body["device_id"].as_str().unwrap().to_owned(),
    }
}

pub async fn decode(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    (status, value)
}

/// Asserts a Matrix error with this status and errcode, and that `error` is present.
#[track_caller]
pub fn assert_error(response: &(StatusCode, Value), status: StatusCode, errcode: &str) {
    let (actual, body) = response;
    assert_eq!((*actual, body["errcode"].as_str()), (status, Some(errcode)), "{body}");
    assert!(body["error"].is_string(), "error message missing: {body}");
}
