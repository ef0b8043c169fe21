//! The server's own cryptographic keys, and checking signatures made with users' keys.

mod signing_key;

pub(crate) use signing_key::LENIENT_BASE64;

/// The file in the data directory that keeps rotated-out signing keys.
pub const OLD_KEYS_FILE: &str = "old_signing_keys.json";
pub use signing_key::{OldKey, SigningKey, SigningKeyError, load_old_keys};

use base64::Engine;
use ruma_common::CanonicalJsonObject;

/// Checks `signer`'s Ed25519 signature `key_id` (`ed25519:<name>`) on a signed JSON object
/// against `public_key` (base64), per the spec's "Signing JSON": over the canonical JSON without
/// `signatures` and `unsigned`.
///
/// Not `ruma_signatures::verify_json`: it requires a public key for every entity that signed
/// the object, while a device's keys also carry signatures by cross-signing keys we check
/// separately. The canonical JSON and the Ed25519 check are still ruma's.
pub fn verify_signature(
    object: &CanonicalJsonObject,
    signer: &str,
    key_id: &str,
    public_key: &str,
) -> Result<(), String> {
    let signature = match object.get("signatures") {
        Some(ruma_common::CanonicalJsonValue::Object(by_signer)) => match by_signer.get(signer) {
            Some(ruma_common::CanonicalJsonValue::Object(by_key)) => match by_key.get(key_id) {
                Some(ruma_common::CanonicalJsonValue::String(signature)) => signature.clone(),
                _ => return Err(format!("no signature by {signer} with {key_id}")),
            },
            _ => return Err(format!("no signature by {signer}")),
        },
        _ => return Err("the object is not signed".into()),
    };
    if !key_id.starts_with("ed25519:") {
        return Err(format!("unsupported signing algorithm in {key_id}"));
    }
    let signature = LENIENT_BASE64.decode(signature).map_err(|_| "the signature is not base64".to_owned())?;
    let public_key = LENIENT_BASE64.decode(public_key).map_err(|_| "the public key is not base64".to_owned())?;
    let canonical = ruma_signatures::to_canonical_json_string_for_signing(object).map_err(|e| e.to_string())?;
    ruma_signatures::verify_canonical_json_bytes(
        &ruma_common::SigningKeyAlgorithm::Ed25519,
        &public_key,
        &signature,
        canonical.as_bytes(),
    )
    .map_err(|_| format!("the signature by {signer} with {key_id} does not verify"))
}
