//! Server keys: our own key document, and other servers' keys fetched, verified and cached
//! (<https://spec.matrix.org/v1.19/server-server-api/#retrieving-server-keys>).

use ruma_common::CanonicalJsonObject;
use serde_json::{Value, json};

use super::FederationError;
use crate::crypto::SigningKey;
use crate::state::AppState;
use crate::storage::{ServerKey, now_ms};

/// How long others may cache our key document. Short, so that a rotated key spreads quickly.
const OWN_KEYS_VALIDITY_MS: i64 = 24 * 3600 * 1000;
/// Room versions ≥ 5 forbid trusting a key document for more than seven days.
const MAX_KEY_VALIDITY_MS: i64 = 7 * 24 * 3600 * 1000;

/// Our signed key document (`GET /_matrix/key/v2/server`).
pub fn own_key_document(
    server_name: &str,
    key: &SigningKey,
    old: &std::collections::BTreeMap<String, crate::crypto::OldKey>,
) -> Result<Value, FederationError> {
    let document = json!({
        "server_name": server_name,
        "valid_until_ts": now_ms() + OWN_KEYS_VALIDITY_MS,
        "verify_keys": { key.key_id(): { "key": key.public_key_base64() } },
        "old_verify_keys": old,
    });
    sign(server_name, key, document)
}

/// Adds `server_name`'s signature to a JSON object.
pub fn sign(server_name: &str, key: &SigningKey, value: Value) -> Result<Value, FederationError> {
    let mut object: CanonicalJsonObject = serde_json::from_value(value)
        .map_err(|e| FederationError::Invalid(format!("not a canonical JSON object: {e}")))?;
    ruma_signatures::sign_json(server_name, key.ruma_key_pair(), &mut object)
        .map_err(|e| FederationError::Invalid(e.to_string()))?;
    serde_json::to_value(object).map_err(|e| FederationError::Invalid(e.to_string()))
}

/// Checks a key document of `server_name` (self-signed by every key it lists as current) and
/// returns its keys, current and old.
pub fn verify_key_document(document: &Value, server_name: &str) -> Result<Vec<(String, ServerKey)>, FederationError> {
    let invalid = |reason: String| FederationError::Invalid(format!("{server_name}'s key document: {reason}"));
    if document["server_name"] != server_name {
        return Err(invalid(format!("it names {}", document["server_name"])));
    }
    let valid_until = document["valid_until_ts"].as_i64().ok_or_else(|| invalid("no valid_until_ts".into()))?;
    let object: CanonicalJsonObject =
        serde_json::from_value(document.clone()).map_err(|e| invalid(format!("not canonical JSON: {e}")))?;
    let current = document["verify_keys"].as_object().filter(|k| !k.is_empty());
    let current = current.ok_or_else(|| invalid("no verify_keys".into()))?;
    let mut keys = Vec::new();
    for (key_id, key) in current {
        let public = key["key"].as_str().ok_or_else(|| invalid(format!("{key_id} has no key")))?;
        crate::crypto::verify_signature(&object, server_name, key_id, public).map_err(invalid)?;
        keys.push((
            key_id.clone(),
            ServerKey { public_key: public.to_owned(), valid_until_ts: valid_until, expired_ts: None },
        ));
    }
    for (key_id, key) in document["old_verify_keys"].as_object().into_iter().flatten() {
        let (Some(public), Some(expired)) = (key["key"].as_str(), key["expired_ts"].as_i64()) else { continue };
        keys.push((
            key_id.clone(),
            ServerKey { public_key: public.to_owned(), valid_until_ts: expired, expired_ts: Some(expired) },
        ));
    }
    Ok(keys)
}

/// The public key `key_id` of `server_name`, valid at `at_ts` (ms): from the cache, else
/// fetched from the server itself.
pub async fn server_key(
    state: &AppState,
    server_name: &str,
    key_id: &str,
    at_ts: i64,
) -> Result<String, FederationError> {
    if server_name == state.config.server_name {
        let own = &state.signing_key;
        return match state.old_signing_keys.get(key_id) {
            _ if key_id == own.key_id() => Ok(own.public_key_base64()),
            Some(old) if old.expired_ts >= at_ts => Ok(old.key.clone()),
            Some(_) => Err(FederationError::Invalid(format!("our key {key_id} had expired by then"))),
            None => Err(FederationError::Invalid(format!("{key_id} is not one of our keys"))),
        };
    }
    let usable = |key: &ServerKey| key.valid_until_ts >= at_ts;
    if let Some(key) = state.storage.server_key(server_name, key_id).await?
        && usable(&key)
    {
        return Ok(key.public_key);
    }
    let _turn = state.federation()?.key_fetch_turn(server_name).await;
    // Whoever had the turn before may have fetched just this.
    if let Some(key) = state.storage.server_key(server_name, key_id).await?
        && usable(&key)
    {
        return Ok(key.public_key);
    }
    fetch_keys(state, server_name).await?;
    match state.storage.server_key(server_name, key_id).await? {
        Some(key) if usable(&key) => Ok(key.public_key),
        Some(_) => Err(FederationError::Invalid(format!("{server_name}'s key {key_id} has expired"))),
        None => Err(FederationError::Invalid(format!("{server_name} has no key {key_id}"))),
    }
}

/// A current key of `server_name` for checking a request's signature: old keys sign events
/// of the past, never requests.
pub async fn request_key(state: &AppState, server_name: &str, key_id: &str) -> Result<String, FederationError> {
    if server_name != state.config.server_name
        && let Some(key) = state.storage.server_key(server_name, key_id).await?
        && key.expired_ts.is_some()
    {
        return Err(FederationError::Invalid(format!("{server_name}'s key {key_id} is retired")));
    }
    if server_name == state.config.server_name && key_id != state.signing_key.key_id() {
        return Err(FederationError::Invalid(format!("{key_id} is not our current key")));
    }
    server_key(state, server_name, key_id, now_ms()).await
}

/// Fetches `server_name`'s key document, verifies and caches it; returns it. A server whose
/// fetch failed is not asked again for a minute, so that unsigned requests naming it cannot
/// make us hammer it (or ourselves).
pub async fn fetch_keys(state: &AppState, server_name: &str) -> Result<Value, FederationError> {
    let client = state.federation()?;
    client.recent_key_failure(server_name)?;
    let document = match client.get_small(server_name, "/_matrix/key/v2/server").await {
        Ok(document) => document,
        Err(err) => {
            client.note_key_failure(server_name);
            return Err(err);
        }
    };
    let mut keys = verify_key_document(&document, server_name)?;
    let now = now_ms();
    for (_, key) in &mut keys {
        key.valid_until_ts = key.valid_until_ts.min(now + MAX_KEY_VALIDITY_MS);
    }
    state.storage.store_server_keys(server_name, &keys, &document.to_string(), now).await?;
    Ok(document)
}

/// What we answer as a notary for `server_name`: its key documents valid until at least
/// `minimum_valid_until_ts` (fetched again if the cached ones are older), each also signed by us.
pub async fn notary_documents(
    state: &AppState,
    server_name: &str,
    minimum_valid_until_ts: i64,
) -> Result<Vec<Value>, FederationError> {
    if server_name == state.config.server_name {
        return Ok(vec![own_key_document(server_name, &state.signing_key, &state.old_signing_keys)?]);
    }
    let cached = state.storage.server_key_responses(server_name).await?;
    let fresh = cached.iter().any(|(_, valid_until)| *valid_until >= minimum_valid_until_ts);
    let documents: Vec<Value> = if fresh {
        cached.iter().filter_map(|(json, _)| serde_json::from_str(json).ok()).collect()
    } else {
        match fetch_keys(state, server_name).await {
            Ok(document) => vec![document],
            // The server is down: what we have is better than nothing.
            Err(err) => {
                tracing::info!("notary: cannot refresh {server_name}'s keys: {err}");
                cached.iter().filter_map(|(json, _)| serde_json::from_str(json).ok()).collect()
            }
        }
    };
    documents.into_iter().map(|doc| sign(&state.config.server_name, &state.signing_key, doc)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_document_verifies_and_tampering_is_caught() {
        let key = SigningKey::spec_test_vector();
        let old = std::collections::BTreeMap::from([(
            "ed25519:old".to_owned(),
            crate::crypto::OldKey { key: "b2xkIGtleQ".into(), expired_ts: 1000 },
        )]);
        let document = own_key_document("a.example", &key, &old).unwrap();
        let keys = verify_key_document(&document, "a.example").unwrap();
        assert_eq!(keys.len(), 2, "the current key and the old one");
        assert_eq!(keys[0].0, "ed25519:1");
        assert_eq!(keys[1].0, "ed25519:old");
        assert_eq!(keys[1].1.expired_ts, Some(1000));
        assert_eq!(keys[0].1.public_key, key.public_key_base64());
        assert!(verify_key_document(&document, "b.example").is_err(), "another server's name");
        let mut tampered = document.clone();
        tampered["valid_until_ts"] = json!(i64::MAX / 2);
        assert!(verify_key_document(&tampered, "a.example").is_err(), "a longer validity than signed");
        let mut swapped = document;
        swapped["verify_keys"]["ed25519:1"]["key"] = json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        assert!(verify_key_document(&swapped, "a.example").is_err(), "a substituted key");
    }
}
