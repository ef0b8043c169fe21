//! The few Client-Server API calls the workloads need, against any homeserver.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// A logged-in user.
#[derive(Clone, Debug)]
pub struct User {
    /// The access token.
    pub token: String,
}

/// An HTTP client for one homeserver, which may be several processes: requests then go to
/// them in turn (round-robin, as a load balancer in front of them would).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    bases: Arc<[String]>,
    next: Arc<AtomicUsize>,
}

impl Client {
    /// A client for the homeserver at `base` (e.g. `http://127.0.0.1:8008`).
    pub fn new(base: &str) -> anyhow::Result<Self> {
        Self::round_robin(&[base.to_owned()])
    }

    /// A client taking turns over the processes at `bases`.
    pub fn round_robin(bases: &[String]) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(120))
            .build()
            .context("HTTP client")?;
        let bases: Vec<String> = bases.iter().map(|base| base.trim_end_matches('/').to_owned()).collect();
        anyhow::ensure!(!bases.is_empty(), "no server address");
        Ok(Self { http, bases: bases.into(), next: Arc::default() })
    }

    fn base(&self) -> &str {
        &self.bases[self.next.fetch_add(1, Ordering::Relaxed) % self.bases.len()]
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base()));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.with_context(|| format!("request to {path}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Waits until `/versions` answers on every process.
    pub async fn wait_until_up(&self, deadline: Duration) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        for base in self.bases.iter() {
            let one = Self::new(base)?;
            loop {
                if one
                    .call(reqwest::Method::GET, "/_matrix/client/versions", None, None)
                    .await
                    .is_ok_and(|(s, _)| s == 200)
                {
                    break;
                }
                if start.elapsed() > deadline {
                    bail!("{base} did not answer /_matrix/client/versions");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Registers `username` through the `m.login.dummy` flow (as Myelin and Synapse offer it).
    pub async fn register(&self, username: &str, password: &str) -> anyhow::Result<User> {
        let path = "/_matrix/client/v3/register";
        let mut body = json!({"username": username, "password": password, "inhibit_login": false});
        let (status, first) = self.call(reqwest::Method::POST, path, None, Some(&body)).await?;
        if status != 401 {
            bail!("register {username}: expected a 401 challenge, got {status} {first}");
        }
        body["auth"] = json!({"type": "m.login.dummy", "session": first["session"]});
        let (status, done) = self.call(reqwest::Method::POST, path, None, Some(&body)).await?;
        if status != 200 {
            bail!("register {username}: {status} {done}");
        }
        Ok(User { token: str_field(&done, "access_token")? })
    }

    /// Creates a public room and returns its ID.
    pub async fn create_room(&self, user: &User, name: &str) -> anyhow::Result<String> {
        let body = json!({"preset": "public_chat", "name": name});
        let (status, created) =
            self.call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(&user.token), Some(&body)).await?;
        if status != 200 {
            bail!("createRoom: {status} {created}");
        }
        str_field(&created, "room_id")
    }

    /// Joins a room.
    pub async fn join(&self, user: &User, room_id: &str) -> anyhow::Result<()> {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/join");
        let (status, body) = self.call(reqwest::Method::POST, &path, Some(&user.token), Some(&json!({}))).await?;
        if status != 200 {
            bail!("join {room_id}: {status} {body}");
        }
        Ok(())
    }

    /// Sends a text message; returns the event ID.
    pub async fn send_text(&self, user: &User, room_id: &str, text: &str) -> anyhow::Result<String> {
        let txn = uuid::Uuid::new_v4().simple().to_string();
        let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}");
        let body = json!({"msgtype": "m.text", "body": text});
        let (status, sent) = self.call(reqwest::Method::PUT, &path, Some(&user.token), Some(&body)).await?;
        if status != 200 {
            bail!("send: {status} {sent}");
        }
        str_field(&sent, "event_id")
    }

    /// `GET /sync`.
    pub async fn sync(&self, user: &User, since: Option<&str>, timeout_ms: u64) -> anyhow::Result<Value> {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(since) = since {
            path.push_str(&format!("&since={since}"));
        }
        let (status, body) = self.call(reqwest::Method::GET, &path, Some(&user.token), None).await?;
        if status != 200 {
            bail!("sync: {status} {body}");
        }
        Ok(body)
    }
}

fn str_field(body: &Value, field: &str) -> anyhow::Result<String> {
    body[field].as_str().map(str::to_owned).with_context(|| format!("response without {field}: {body}"))
}
