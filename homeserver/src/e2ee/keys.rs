//! Device keys, one-time keys and fallback keys: upload, query and claim.
//! <https://spec.matrix.org/v1.19/client-server-api/#device-keys>

use std::collections::BTreeMap;

use serde_json::Value;

use super::{E2eeError, JsonObject, canonical, signed_part};
use crate::storage::{KeySignature, Storage, UploadedKey};

/// The most one-time keys one upload may carry; clients upload tens at a time.
const MAX_KEYS_PER_UPLOAD: usize = 1000;

/// What `/keys/upload` carries.
#[derive(Debug, Default)]
pub struct Upload {
    /// The device's identity keys.
    pub device_keys: Option<JsonObject>,
    /// `<algorithm>:<key_id>` → key.
    pub one_time_keys: Option<JsonObject>,
    /// `<algorithm>:<key_id>` → key, one per algorithm.
    pub fallback_keys: Option<JsonObject>,
}

/// Checks and stores a device's upload. Returns the unclaimed one-time key counts and, when
/// the device keys changed, the stream position of the device list change.
pub async fn upload(
    storage: &Storage,
    user_id: &str,
    device_id: &str,
    upload: Upload,
) -> Result<(BTreeMap<String, i64>, Option<i64>), E2eeError> {
    let mut position = None;
    if let Some(device_keys) = &upload.device_keys {
        check_device_keys(device_keys, user_id, device_id)?;
        let json =
            serde_json::to_string(&without_unsigned(device_keys)).map_err(|e| E2eeError::Invalid(e.to_string()))?;
        position = storage.set_device_keys(user_id, device_id, &json).await?;
    }
    if let Some(keys) = &upload.one_time_keys {
        let keys = split_keys(keys)?;
        storage.add_one_time_keys(user_id, device_id, &keys).await.map_err(|e| match e {
            crate::storage::Error::Conflict { constraint } => {
                E2eeError::Invalid(format!("one-time key {constraint} already exists with different contents"))
            }
            other => other.into(),
        })?;
    }
    if let Some(keys) = &upload.fallback_keys {
        let keys = split_keys(keys)?;
        let mut algorithms: Vec<&str> = keys.iter().map(|k| k.algorithm.as_str()).collect();
        algorithms.sort_unstable();
        if algorithms.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(E2eeError::Invalid("at most one fallback key per algorithm".into()));
        }
        storage.set_fallback_keys(user_id, device_id, &keys).await?;
    }
    Ok((storage.one_time_key_counts(user_id, device_id).await?, position))
}

/// The uploaded device keys minus `unsigned` (which the server adds on query).
fn without_unsigned(keys: &JsonObject) -> JsonObject {
    let mut keys = keys.clone();
    keys.remove("unsigned");
    keys
}

/// A device's keys must be its own, name its Ed25519 key, and carry that key's signature.
fn check_device_keys(keys: &JsonObject, user_id: &str, device_id: &str) -> Result<(), E2eeError> {
    let field = |name: &str| keys.get(name).and_then(Value::as_str);
    if field("user_id") != Some(user_id) {
        return Err(E2eeError::Invalid("device_keys.user_id must be the caller's user ID".into()));
    }
    if field("device_id") != Some(device_id) {
        return Err(E2eeError::Invalid("device_keys.device_id must be the caller's device ID".into()));
    }
    if !keys.get("algorithms").is_some_and(|a| a.as_array().is_some_and(|a| a.iter().all(Value::is_string))) {
        return Err(E2eeError::Invalid("device_keys.algorithms must be a list of strings".into()));
    }
    let key_id = format!("ed25519:{device_id}");
    let Some(ed25519) = keys.get("keys").and_then(|k| k.get(&key_id)).and_then(Value::as_str) else {
        return Err(E2eeError::Invalid(format!("device_keys.keys must hold the device's {key_id} key")));
    };
    let object = canonical(keys)?;
    crate::crypto::verify_signature(&object, user_id, &key_id, ed25519).map_err(E2eeError::InvalidSignature)
}

/// Splits `<algorithm>:<key_id>` → key into rows.
fn split_keys(keys: &JsonObject) -> Result<Vec<UploadedKey>, E2eeError> {
    if keys.len() > MAX_KEYS_PER_UPLOAD {
        return Err(E2eeError::Invalid(format!("at most {MAX_KEYS_PER_UPLOAD} keys per upload")));
    }
    keys.iter()
        .map(|(name, key)| {
            let Some((algorithm, key_id)) = name.split_once(':').filter(|(a, k)| !a.is_empty() && !k.is_empty()) else {
                return Err(E2eeError::Invalid(format!("key name {name:?} is not <algorithm>:<key_id>")));
            };
            if !(key.is_string() || key.is_object()) {
                return Err(E2eeError::Invalid(format!("key {name} must be a string or an object")));
            }
            let key_json = serde_json::to_string(key).map_err(|e| E2eeError::Invalid(e.to_string()))?;
            Ok(UploadedKey { algorithm: algorithm.to_owned(), key_id: key_id.to_owned(), key_json })
        })
        .collect()
}

/// The answer to a key query.
#[derive(Debug, Default)]
pub struct QueryResult {
    /// User → device → device keys (with `unsigned.device_display_name`).
    pub device_keys: BTreeMap<String, BTreeMap<String, Value>>,
    /// User → master key.
    pub master_keys: BTreeMap<String, Value>,
    /// User → self-signing key.
    pub self_signing_keys: BTreeMap<String, Value>,
    /// The requester's own user-signing key, if they asked about themselves.
    pub user_signing_keys: BTreeMap<String, Value>,
    /// Server name → why its users could not be queried.
    pub failures: BTreeMap<String, Value>,
}

/// Keys of the given local users' devices (all devices for an empty list) and their
/// cross-signing keys, as `requester` may see them. Users of other servers are reported in
/// `failures` until federation can ask their servers.
pub async fn query(
    storage: &Storage,
    server_name: &str,
    requester: &str,
    wanted: &BTreeMap<String, Vec<String>>,
) -> Result<QueryResult, E2eeError> {
    let mut result = QueryResult::default();
    for (user_id, devices) in wanted {
        if let Some(server) = remote_server(user_id, server_name) {
            result.failures.insert(server.to_owned(), federation_unavailable());
            continue;
        }
        let signatures = storage.key_signatures(user_id).await?;
        // Signatures by the key's owner, and those the requester made, are visible to the requester.
        let visible = |s: &&KeySignature| s.signer_user_id == *user_id || s.signer_user_id == requester;
        let mut by_device = BTreeMap::new();
        for stored in storage.device_keys(user_id).await? {
            if !devices.is_empty() && !devices.contains(&stored.device_id) {
                continue;
            }
            let Ok(Value::Object(mut keys)) = serde_json::from_str::<Value>(&stored.key_json) else { continue };
            merge_signatures(
                &mut keys,
                signatures.iter().filter(visible).filter(|s| s.target_key_id == stored.device_id),
            );
            let mut unsigned = JsonObject::new();
            if let Some(name) = stored.display_name {
                unsigned.insert("device_display_name".into(), name.into());
            }
            keys.insert("unsigned".into(), Value::Object(unsigned));
            by_device.insert(stored.device_id, Value::Object(keys));
        }
        result.device_keys.insert(user_id.clone(), by_device);
        for (key_type, json) in storage.cross_signing_keys(user_id).await? {
            let Ok(Value::Object(mut key)) = serde_json::from_str::<Value>(&json) else { continue };
            let public = super::cross_signing::public_key(&key).unwrap_or_default();
            merge_signatures(&mut key, signatures.iter().filter(visible).filter(|s| s.target_key_id == public));
            let target = match key_type.as_str() {
                "master" => &mut result.master_keys,
                "self_signing" => &mut result.self_signing_keys,
                "user_signing" if user_id == requester => &mut result.user_signing_keys,
                _ => continue,
            };
            target.insert(user_id.clone(), Value::Object(key));
        }
    }
    Ok(result)
}

/// Adds stored signatures to a signed object's `signatures`.
fn merge_signatures<'a>(object: &mut JsonObject, signatures: impl Iterator<Item = &'a KeySignature>) {
    for s in signatures {
        let all = object.entry("signatures").or_insert_with(|| Value::Object(JsonObject::new()));
        if let Some(all) = all.as_object_mut() {
            let by_signer = all.entry(s.signer_user_id.clone()).or_insert_with(|| Value::Object(JsonObject::new()));
            if let Some(by_signer) = by_signer.as_object_mut() {
                by_signer.insert(s.signer_key_id.clone(), s.signature.clone().into());
            }
        }
    }
}

/// The answer to a claim.
#[derive(Debug, Default)]
pub struct ClaimResult {
    /// User → device → `<algorithm>:<key_id>` → key.
    pub one_time_keys: BTreeMap<String, BTreeMap<String, JsonObject>>,
    /// Server name → why its users could not be asked.
    pub failures: BTreeMap<String, Value>,
}

/// Claims one key per requested device and algorithm: a one-time key (each handed out once,
/// oldest first) or, when none is left, the device's fallback key.
pub async fn claim(
    storage: &Storage,
    server_name: &str,
    wanted: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<ClaimResult, E2eeError> {
    let mut result = ClaimResult::default();
    let mut local = Vec::new();
    for (user_id, devices) in wanted {
        if let Some(server) = remote_server(user_id, server_name) {
            result.failures.insert(server.to_owned(), federation_unavailable());
            continue;
        }
        local.extend(devices.iter().map(|(device, algorithm)| (user_id.clone(), device.clone(), algorithm.clone())));
    }
    for (user_id, device_id, key) in storage.claim_keys(&local).await? {
        let value: Value = serde_json::from_str(&key.key_json).unwrap_or(Value::Null);
        result
            .one_time_keys
            .entry(user_id)
            .or_default()
            .entry(device_id)
            .or_default()
            .insert(format!("{}:{}", key.algorithm, key.key_id), value);
    }
    Ok(result)
}

/// The server of a user of another server.
fn remote_server<'a>(user_id: &'a str, server_name: &str) -> Option<&'a str> {
    let server = user_id.split_once(':').map(|(_, server)| server).unwrap_or_default();
    (server != server_name).then_some(server)
}

/// The failure reported for another server's users until federation can ask it.
fn federation_unavailable() -> Value {
    serde_json::json!({"status": 503, "message": "federation with other servers is not available"})
}

/// The object as signed, for comparing an upload with what is stored.
pub(super) fn same_signed_content(a: &JsonObject, b: &JsonObject) -> bool {
    signed_part(a) == signed_part(b)
}
