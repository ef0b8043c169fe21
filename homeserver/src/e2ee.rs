//! End-to-end encryption support: the server's side of key distribution. It checks and stores
//! the keys clients publish (device keys, one-time and fallback keys, cross-signing keys and
//! signatures), hands them out, and tells users whose devices they must re-fetch. It never sees
//! plaintext. Nothing here knows HTTP, so that federation can serve `/user/keys/query`,
//! `/user/keys/claim` and `/user/devices` from the same functions.

pub mod cross_signing;
pub mod device_lists;
pub mod keys;

use crate::storage;

/// A JSON object.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// Errors of the E2EE layer, in domain words.
#[derive(Debug, thiserror::Error)]
pub enum E2eeError {
    /// The uploaded object is malformed or does not belong to the caller.
    #[error("{0}")]
    Invalid(String),
    /// A signature is missing or does not verify.
    #[error("{0}")]
    InvalidSignature(String),
    /// Something the request needs is not there (e.g. a master key to sign with).
    #[error("{0}")]
    Missing(String),
    /// Not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
}

/// Turns a JSON object into canonical JSON, for signature checks.
fn canonical(object: &JsonObject) -> Result<ruma_common::CanonicalJsonObject, E2eeError> {
    match ruma_common::CanonicalJsonValue::try_from(serde_json::Value::Object(object.clone())) {
        Ok(ruma_common::CanonicalJsonValue::Object(object)) => Ok(object),
        _ => Err(E2eeError::Invalid("keys must be canonical JSON (integers in range, no floats)".into())),
    }
}

/// The object without `signatures` and `unsigned`: what signatures cover.
fn signed_part(object: &JsonObject) -> JsonObject {
    let mut object = object.clone();
    object.remove("signatures");
    object.remove("unsigned");
    object
}
