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
    client: Client,
}

/// An HTTP client for one server (or one process of several serving one server name).
pub struct Client {
    pub base_url: String,
    pub http: reqwest::Client,
}

impl std::ops::Deref for Harness {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Harness {
    pub async fn start(backend: TestBackend) -> Self {
        Self::with(TestServer::start(backend).await)
    }

    pub async fn start_with(backend: TestBackend, configure: impl FnOnce(&mut myelin_homeserver::Config)) -> Self {
        Self::with(TestServer::start_with(backend, configure).await)
    }

    pub fn with(server: TestServer) -> Self {
        let client = Client::new(&server.base_url);
        Self { server, client }
    }

    pub async fn restart(self) -> Self {
        Self::with(self.server.restart().await)
    }

    pub fn server_name(&self) -> &str {
        &self.server.config.server_name
    }
}

impl Client {
    pub fn new(base_url: &str) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        Self { base_url: base_url.to_owned(), http }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
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

impl Client {
    /// Every event of the room in timeline order, read forwards through `/messages`.
    pub async fn timeline(&self, account: &Account, room: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut from: Option<String> = None;
        loop {
            let mut path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=100");
            if let Some(from) = &from {
                path.push_str(&format!("&from={from}"));
            }
            let (status, page) = self.get(&path, Some(&account.access_token)).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let chunk = page["chunk"].as_array().unwrap();
            if chunk.is_empty() || page["end"].is_null() {
                events.extend(chunk.iter().cloned());
                return events;
            }
            events.extend(chunk.iter().cloned());
            from = Some(page["end"].as_str().unwrap().to_owned());
        }
    }

    /// A PUT to a server that may die under it: the answer on 200, `None` when the connection
    /// failed or the server answered 5xx (the outcome is unknown); panics on a refusal.
    pub async fn try_put(&self, path: &str, token: &str, body: &Value) -> Option<Value> {
        let response = self.http.put(self.url(path)).bearer_auth(token).json(body).send().await.ok()?;
        let status = response.status();
        let body: Value = response.json().await.ok()?;
        assert!(status == StatusCode::OK || status.is_server_error(), "{status}: {body}");
        (status == StatusCode::OK).then_some(body)
    }

    /// `POST /createRoom`; panics unless it succeeds.
    pub async fn create_room(&self, account: &Account, body: Value) -> String {
        let (status, created) = self.post("/_matrix/client/v3/createRoom", Some(&account.access_token), body).await;
        assert_eq!(status, StatusCode::OK, "{created}");
        created["room_id"].as_str().unwrap().to_owned()
    }

    /// Sends an `m.text` message with a fresh transaction ID.
    pub async fn send_text(&self, account: &Account, room_id: &str, text: &str) -> (StatusCode, Value) {
        let txn = uuid::Uuid::new_v4().simple().to_string();
        let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}");
        self.put(&path, Some(&account.access_token), json!({"msgtype": "m.text", "body": text})).await
    }

    /// A membership action (`join`, `leave`, `invite`, `kick`, `ban`, `unban`).
    pub async fn membership(
        &self,
        account: &Account,
        room_id: &str,
        action: &str,
        target: Option<&str>,
    ) -> (StatusCode, Value) {
        let body = match target {
            Some(user_id) => json!({"user_id": user_id}),
            None => json!({}),
        };
        self.post(&format!("/_matrix/client/v3/rooms/{room_id}/{action}"), Some(&account.access_token), body).await
    }

    /// `GET /sync` with optional `since`, `timeout` and filter.
    pub async fn sync(&self, account: &Account, since: Option<&str>, timeout_ms: u64, filter: Option<&str>) -> Value {
        let mut query = vec![("timeout".to_owned(), timeout_ms.to_string())];
        if let Some(since) = since {
            query.push(("since".to_owned(), since.to_owned()));
        }
        if let Some(filter) = filter {
            query.push(("filter".to_owned(), filter.to_owned()));
        }
        let resp = self
            .http
            .get(self.url("/_matrix/client/v3/sync"))
            .bearer_auth(&account.access_token)
            .query(&query)
            .send()
            .await
            .unwrap();
        let (status, body) = decode(resp).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

/// The bodies of `m.room.message` events in a list of client events.
pub fn bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}
