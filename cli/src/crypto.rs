//! End-to-end encryption on vodozemac: our Olm account and device keys ([`keys`]), Olm-encrypted
//! to-device messages ([`olm`]), Megolm-encrypted room events ([`megolm`]) and cross-signing
//! ([`cross_signing`]).
//!
//! Everything secret is pickled and sealed with the store key before it reaches the store, and
//! every state change (a used one-time key, a ratchet step) is saved before its effect leaves
//! the process, so a crash can lose a message but never desynchronise a session.

pub mod cross_signing;
pub mod keys;
pub mod megolm;
pub mod olm;
pub mod sas;

use anyhow::Context;
use serde_json::{Map, Value};
use vodozemac::{Ed25519PublicKey, Ed25519Signature};

pub const OLM_ALGORITHM: &str = "m.olm.v1.curve25519-aes-sha2";
pub const MEGOLM_ALGORITHM: &str = "m.megolm.v1.aes-sha2";

/// The canonical JSON of an object without `signatures` and `unsigned`: what signatures cover.
pub fn signing_bytes(object: &Value) -> anyhow::Result<String> {
    let mut object = object.as_object().context("a signed value must be a JSON object")?.clone();
    object.remove("signatures");
    object.remove("unsigned");
    let canonical = ruma_common::CanonicalJsonValue::try_from(Value::Object(object))
        .context("a signed value must be canonical JSON (integers in range, no floats)")?;
    Ok(canonical.to_string())
}

/// Checks `signatures[user_id]["ed25519:" + key_id]` of `object` against `key`.
pub fn verify_signature(object: &Value, user_id: &str, key_id: &str, key: &Ed25519PublicKey) -> anyhow::Result<()> {
    let signature = object["signatures"][user_id][format!("ed25519:{key_id}")]
        .as_str()
        .with_context(|| format!("no signature by {user_id}'s key {key_id}"))?;
    let signature = Ed25519Signature::from_base64(signature).context("a malformed signature")?;
    key.verify(signing_bytes(object)?.as_bytes(), &signature)
        .with_context(|| format!("a bad signature by {user_id}'s key {key_id}"))
}

/// Adds a signature to `object["signatures"][user_id]["ed25519:" + key_id]`.
pub fn add_signature(object: &mut Value, user_id: &str, key_id: &str, signature: Ed25519Signature) {
    let signatures =
        object.as_object_mut().map(|object| object.entry("signatures").or_insert_with(|| Value::Object(Map::new())));
    if let Some(Value::Object(signatures)) = signatures {
        let by_user = signatures.entry(user_id).or_insert_with(|| Value::Object(Map::new()));
        by_user[format!("ed25519:{key_id}")] = Value::String(signature.to_base64());
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
