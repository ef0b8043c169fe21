//! End-to-end encryption across servers: asking other servers for their users' device keys and
//! one-time keys, on behalf of our users' `/keys/query` and `/keys/claim`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::e2ee::keys::{ClaimResult, QueryResult};
use crate::state::AppState;

/// How long a client's key request waits for other servers by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The server part of a user ID.
pub fn server_of(user_id: &str) -> &str {
    user_id.split_once(':').map_or("", |(_, server)| server)
}

/// Splits requested users into ours and, per server, others'.
pub fn by_server<T: Clone>(
    state: &AppState,
    wanted: &BTreeMap<String, T>,
) -> (BTreeMap<String, T>, BTreeMap<String, BTreeMap<String, T>>) {
    let mut local = BTreeMap::new();
    let mut remote: BTreeMap<String, BTreeMap<String, T>> = BTreeMap::new();
    for (user, value) in wanted {
        let server = server_of(user);
        if server == state.config.server_name {
            local.insert(user.clone(), value.clone());
        } else {
            remote.entry(server.to_owned()).or_default().insert(user.clone(), value.clone());
        }
    }
    (local, remote)
}

/// POSTs `{field: users}` to `path` of every server at once, each answer within `timeout`;
/// returns the answers, and records a `failures` entry for each server that gave none.
async fn ask_all<T: serde::Serialize>(
    state: &AppState,
    remote: BTreeMap<String, T>,
    path: &str,
    field: &str,
    timeout: Duration,
    failures: &mut BTreeMap<String, Value>,
) -> Vec<(String, Value)> {
    let asks = remote.into_iter().map(|(server, users)| async move {
        let answer = match state.federation() {
            Ok(client) => {
                let body = json!({ field: users });
                match tokio::time::timeout(timeout, client.post(&server, path, &body)).await {
                    Ok(answer) => answer.map_err(|e| failure(&e)),
                    Err(_) => Err(failure(&format!("{server} did not answer in time"))),
                }
            }
            Err(err) => Err(failure(&err)),
        };
        (server, answer)
    });
    let mut answers = Vec::new();
    for (server, answer) in futures_util::future::join_all(asks).await {
        match answer {
            Ok(answer) => answers.push((server, answer)),
            Err(failure) => {
                failures.insert(server, failure);
            }
        }
    }
    answers
}

fn failure(err: &dyn std::fmt::Display) -> Value {
    json!({ "status": 503, "message": err.to_string() })
}

/// Asks each server (concurrently, up to `timeout`) for its users' device and cross-signing
/// keys and adds them to `result`. Keys a server sends for users that are not its own are
/// dropped: a server speaks only for its users.
pub async fn query_remote(
    state: &AppState,
    remote: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    timeout: Duration,
    result: &mut QueryResult,
) {
    let path = "/_matrix/federation/v1/user/keys/query";
    for (server, answer) in ask_all(state, remote, path, "device_keys", timeout, &mut result.failures).await {
        let own = |user: &String| server_of(user) == server;
        for (user, devices) in answer["device_keys"].as_object().into_iter().flatten().filter(|(u, _)| own(u)) {
            let devices = devices.as_object().into_iter().flatten();
            let devices = devices.filter(|(device, keys)| keys["user_id"] == **user && keys["device_id"] == **device);
            result.device_keys.insert(user.clone(), devices.map(|(d, k)| (d.clone(), k.clone())).collect());
        }
        for (field, target) in
            [("master_keys", &mut result.master_keys), ("self_signing_keys", &mut result.self_signing_keys)]
        {
            for (user, key) in answer[field].as_object().into_iter().flatten().filter(|(u, _)| own(u)) {
                if key["user_id"] == **user {
                    target.insert(user.clone(), key.clone());
                }
            }
        }
    }
}

/// Claims one-time keys from each server's users (concurrently, up to `timeout`).
pub async fn claim_remote(
    state: &AppState,
    remote: BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>,
    timeout: Duration,
    result: &mut ClaimResult,
) {
    let path = "/_matrix/federation/v1/user/keys/claim";
    for (server, answer) in ask_all(state, remote, path, "one_time_keys", timeout, &mut result.failures).await {
        for (user, devices) in answer["one_time_keys"].as_object().into_iter().flatten() {
            if server_of(user) != server {
                continue;
            }
            for (device, keys) in devices.as_object().into_iter().flatten() {
                let Some(keys) = keys.as_object() else { continue };
                result
                    .one_time_keys
                    .entry(user.clone())
                    .or_default()
                    .insert(device.clone(), keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
            }
        }
    }
}
