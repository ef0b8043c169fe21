//! Cross-signing keys and the signatures users make with them.
//! <https://spec.matrix.org/v1.19/client-server-api/#cross-signing>

use std::collections::BTreeMap;

use serde_json::Value;

use super::keys::same_signed_content;
use super::{E2eeError, JsonObject, canonical};
use crate::storage::{KeySignature, Storage};

/// The three kinds of cross-signing key, as stored and as named in `usage`.
pub const KEY_TYPES: [&str; 3] = ["master", "self_signing", "user_signing"];

/// The public key of a cross-signing key object: the value of its single `keys` entry.
pub fn public_key(key: &JsonObject) -> Option<String> {
    let keys = key.get("keys")?.as_object()?;
    let (name, value) = keys.iter().next().filter(|_| keys.len() == 1)?;
    let value = value.as_str()?;
    (name.strip_prefix("ed25519:") == Some(value)).then(|| value.to_owned())
}

/// Cross-signing keys in an upload, by type.
pub type KeyUpload = BTreeMap<&'static str, JsonObject>;

/// Whether the upload must be confirmed with user-interactive authentication: yes, unless the
/// user has no master key yet, or the upload only repeats the keys stored (a retried request).
pub async fn needs_authentication(storage: &Storage, user_id: &str, upload: &KeyUpload) -> Result<bool, E2eeError> {
    let stored = storage.cross_signing_keys(user_id).await?;
    if !stored.contains_key("master") {
        return Ok(false);
    }
    for (key_type, key) in upload {
        let same = stored
            .get(*key_type)
            .and_then(|json| serde_json::from_str::<JsonObject>(json).ok())
            .is_some_and(|stored| &stored == key);
        if !same {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Checks and stores cross-signing keys; returns the device list change's stream position.
pub async fn upload(storage: &Storage, user_id: &str, upload: KeyUpload) -> Result<Option<i64>, E2eeError> {
    if upload.is_empty() {
        return Ok(None);
    }
    let devices: Vec<String> = storage.device_keys(user_id).await?.into_iter().map(|d| d.device_id).collect();
    for (key_type, key) in &upload {
        if key.get("user_id").and_then(Value::as_str) != Some(user_id) {
            return Err(E2eeError::Invalid(format!("the {key_type} key's user_id must be the caller")));
        }
        let usage_ok = key
            .get("usage")
            .and_then(Value::as_array)
            .is_some_and(|usage| usage.iter().any(|u| u.as_str() == Some(key_type)));
        if !usage_ok {
            return Err(E2eeError::Invalid(format!("the {key_type} key's usage must include {key_type:?}")));
        }
        let Some(public) = public_key(key) else {
            return Err(E2eeError::Invalid(format!("the {key_type} key must hold one ed25519 key named by itself")));
        };
        if devices.contains(&public) {
            return Err(E2eeError::Forbidden("the public key is the ID of one of your devices".into()));
        }
    }
    // The self-signing and user-signing keys must be signed by the master key: the uploaded one,
    // or the one stored.
    let master = match upload.get("master") {
        Some(master) => Some(master.clone()),
        None => match storage.cross_signing_keys(user_id).await?.get("master") {
            Some(json) => serde_json::from_str(json).ok(),
            None => None,
        },
    };
    for key_type in ["self_signing", "user_signing"] {
        let Some(key) = upload.get(key_type) else { continue };
        let Some(master) = &master else {
            return Err(E2eeError::Missing("no master key to check the signature with".into()));
        };
        let master_public = public_key(master).unwrap_or_default();
        let object = canonical(key)?;
        crate::crypto::verify_signature(&object, user_id, &format!("ed25519:{master_public}"), &master_public)
            .map_err(E2eeError::InvalidSignature)?;
    }
    let mut keys = Vec::with_capacity(upload.len());
    for (key_type, key) in upload {
        keys.push((key_type, serde_json::to_string(&key).map_err(|e| E2eeError::Invalid(e.to_string()))?));
    }
    Ok(Some(storage.set_cross_signing_keys(user_id, &keys).await?))
}

/// The result of a signature upload: failures by user and key, and the stream position of the
/// device list change when signatures were stored.
#[derive(Debug, Default)]
pub struct SignatureResult {
    /// User → key ID → Matrix error object.
    pub failures: BTreeMap<String, BTreeMap<String, Value>>,
    /// The device list change, if anything was stored.
    pub position: Option<i64>,
}

/// Checks and stores signatures `signer` made: on their own devices (with their self-signing
/// key), on their own master key (with one of their devices), and on other users' master keys
/// (with their user-signing key). Each object must match the key as stored.
pub async fn upload_signatures(
    storage: &Storage,
    signer: &str,
    objects: &BTreeMap<String, BTreeMap<String, JsonObject>>,
) -> Result<SignatureResult, E2eeError> {
    let mut result = SignatureResult::default();
    let own_keys = storage.cross_signing_keys(signer).await?;
    let own_key = |key_type: &str| -> Option<JsonObject> { serde_json::from_str(own_keys.get(key_type)?).ok() };
    let own_devices = storage.device_keys(signer).await?;
    let mut accepted = Vec::new();
    for (target_user, by_key) in objects {
        let target_keys = match target_user == signer {
            true => own_keys.clone(),
            false => storage.cross_signing_keys(target_user).await?,
        };
        let target_master: Option<JsonObject> =
            target_keys.get("master").and_then(|json| serde_json::from_str(json).ok());
        for (key_id, object) in by_key {
            let checked = check_signature(
                signer,
                target_user,
                key_id,
                object,
                (&own_devices, own_key("self_signing"), own_key("user_signing")),
                target_master.as_ref(),
            );
            match checked {
                Ok(signature) => accepted.push(signature),
                Err(E2eeError::Storage(err)) => return Err(err.into()),
                Err(err) => {
                    let errcode = match err {
                        E2eeError::InvalidSignature(_) => "M_INVALID_SIGNATURE",
                        E2eeError::Missing(_) => "M_NOT_FOUND",
                        _ => "M_INVALID_PARAM",
                    };
                    result
                        .failures
                        .entry(target_user.clone())
                        .or_default()
                        .insert(key_id.clone(), serde_json::json!({"errcode": errcode, "error": err.to_string()}));
                }
            }
        }
    }
    result.position = storage.add_key_signatures(&accepted).await?;
    Ok(result)
}

/// Checks one signed object; returns the signature to store.
fn check_signature(
    signer: &str,
    target_user: &str,
    key_id: &str,
    object: &JsonObject,
    (own_devices, self_signing, user_signing): (
        &[crate::storage::StoredDeviceKeys],
        Option<JsonObject>,
        Option<JsonObject>,
    ),
    target_master: Option<&JsonObject>,
) -> Result<KeySignature, E2eeError> {
    let is_target_master = target_master.is_some_and(|m| public_key(m).as_deref() == Some(key_id));
    let (signing_key_id, signing_public) = if target_user == signer && !is_target_master {
        // One of the signer's devices, signed with their self-signing key.
        let device = own_devices
            .iter()
            .find(|d| d.device_id == key_id)
            .ok_or_else(|| E2eeError::Missing(format!("no device {key_id}")))?;
        let stored: JsonObject =
            serde_json::from_str(&device.key_json).map_err(|e| E2eeError::Invalid(e.to_string()))?;
        if !same_signed_content(&stored, object) {
            return Err(E2eeError::Invalid("the object does not match the device's keys".into()));
        }
        let ssk = self_signing.ok_or_else(|| E2eeError::Missing("no self-signing key".into()))?;
        let public = public_key(&ssk).unwrap_or_default();
        (format!("ed25519:{public}"), public)
    } else if target_user == signer {
        // Their own master key, signed with one of their devices.
        if !same_signed_content(target_master.expect("checked above"), object) {
            return Err(E2eeError::Invalid("the object does not match the master key".into()));
        }
        let signed_by = object
            .get("signatures")
            .and_then(|s| s.get(signer))
            .and_then(Value::as_object)
            .and_then(|by_key| {
                by_key
                    .keys()
                    .filter_map(|k| k.strip_prefix("ed25519:"))
                    .find(|d| own_devices.iter().any(|o| o.device_id == *d))
            })
            .ok_or_else(|| E2eeError::InvalidSignature("no signature by one of your devices".into()))?;
        let device = own_devices.iter().find(|d| d.device_id == signed_by).expect("found above");
        let stored: JsonObject =
            serde_json::from_str(&device.key_json).map_err(|e| E2eeError::Invalid(e.to_string()))?;
        let key_name = format!("ed25519:{signed_by}");
        let public = stored.get("keys").and_then(|k| k.get(&key_name)).and_then(Value::as_str).unwrap_or_default();
        (key_name, public.to_owned())
    } else {
        // Another user's master key, signed with the signer's user-signing key.
        let Some(master) = target_master.filter(|_| is_target_master) else {
            return Err(E2eeError::Missing(format!("{key_id} is not {target_user}'s master key")));
        };
        if !same_signed_content(master, object) {
            return Err(E2eeError::Invalid("the object does not match the master key".into()));
        }
        let usk = user_signing.ok_or_else(|| E2eeError::Missing("no user-signing key".into()))?;
        let public = public_key(&usk).unwrap_or_default();
        (format!("ed25519:{public}"), public)
    };
    crate::crypto::verify_signature(&canonical(object)?, signer, &signing_key_id, &signing_public)
        .map_err(E2eeError::InvalidSignature)?;
    let signature = object["signatures"][signer][&signing_key_id].as_str().unwrap_or_default().to_owned();
    Ok(KeySignature {
        target_user_id: target_user.to_owned(),
        target_key_id: key_id.to_owned(),
        signer_user_id: signer.to_owned(),
        signer_key_id: signing_key_id,
        signature,
    })
}

/// The cross-signing keys of an upload body, by type, if they are objects.
pub fn collect_upload(
    master: Option<JsonObject>,
    self_signing: Option<JsonObject>,
    user_signing: Option<JsonObject>,
) -> KeyUpload {
    let mut upload = KeyUpload::new();
    for (key_type, key) in KEY_TYPES.into_iter().zip([master, self_signing, user_signing]) {
        if let Some(key) = key {
            upload.insert(key_type, key);
        }
    }
    upload
}
