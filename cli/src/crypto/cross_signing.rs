//! Cross-signing: our master, self-signing and user-signing keys, and checking whether another
//! user's devices are signed by their owner's self-signing key.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use vodozemac::{Ed25519PublicKey, Ed25519SecretKey};

use super::{add_signature, signing_bytes, verify_signature};
use crate::client::Client;

/// The secret under which the private cross-signing keys are sealed.
const CROSS_SIGNING: &str = "cross_signing_keys";
/// New keys not yet accepted by the homeserver (kept in case the answer was lost).
const PENDING: &str = "cross_signing_keys.pending";

#[derive(Serialize, Deserialize)]
struct PrivateKeys {
    master: String,
    self_signing: String,
    user_signing: String,
}

/// Another user's device as their cross-signing keys describe it.
#[derive(Serialize)]
pub struct DeviceTrust {
    pub device_id: String,
    pub display_name: Option<String>,
    pub ed25519: String,
    pub curve25519: String,
    /// Signed by its owner's self-signing key, itself signed by their master key.
    pub cross_signed: bool,
}

fn public_id(key: &Ed25519SecretKey) -> String {
    key.public_key().to_base64()
}

/// A cross-signing key object for `usage`, as `/keys/device_signing/upload` takes it.
fn key_object(user_id: &str, usage: &str, key: &Ed25519SecretKey) -> Value {
    let public = public_id(key);
    json!({ "user_id": user_id, "usage": [usage], "keys": { format!("ed25519:{public}"): public } })
}

fn sign_with(object: &mut Value, user_id: &str, key: &Ed25519SecretKey) -> anyhow::Result<()> {
    let signature = key.sign(signing_bytes(object)?.as_bytes());
    add_signature(object, user_id, &public_id(key), signature);
    Ok(())
}

impl Client {
    /// Creates and publishes cross-signing keys, and signs this device with the self-signing
    /// key, so other users who verify us trust this device. Replacing existing keys needs the
    /// account password.
    pub async fn bootstrap_cross_signing(&self, password: Option<&str>) -> anyhow::Result<Value> {
        let user = self.profile.user_id.clone();
        let (master, self_signing, user_signing) =
            (Ed25519SecretKey::new(), Ed25519SecretKey::new(), Ed25519SecretKey::new());
        let mut master_key = key_object(&user, "master", &master);
        // The device's signature on the master key lets our other devices trust it.
        let device_signature = self.account.sign(signing_bytes(&master_key)?);
        add_signature(&mut master_key, &user, &self.profile.device_id, device_signature);
        let mut self_signing_key = key_object(&user, "self_signing", &self_signing);
        sign_with(&mut self_signing_key, &user, &master)?;
        let mut user_signing_key = key_object(&user, "user_signing", &user_signing);
        sign_with(&mut user_signing_key, &user, &master)?;
        // Kept (as pending) before publishing: published public keys without their private
        // halves would leave the account with keys nobody can sign with; and the current keys
        // stay until the server has taken the new ones.
        let private = PrivateKeys {
            master: master.to_base64(),
            self_signing: self_signing.to_base64(),
            user_signing: user_signing.to_base64(),
        };
        self.store.set_secret(PENDING, &private).await?;
        let url = self.api.client_url(&["keys", "device_signing", "upload"])?;
        let body = json!({
            "master_key": master_key,
            "self_signing_key": self_signing_key,
            "user_signing_key": user_signing_key,
        });
        let _: Value =
            crate::api::with_password_auth(&self.api, reqwest::Method::POST, url, body, &user, password).await?;
        self.store.set_secret(CROSS_SIGNING, &private).await?;
        let mut device = self.device_keys()?;
        sign_with(&mut device, &user, &self_signing)?;
        let signatures = json!({ &user: { &self.profile.device_id: device } });
        let response: Value = self.api.post(&["keys", "signatures", "upload"], &signatures).await?;
        anyhow::ensure!(
            response["failures"].as_object().is_none_or(|f| f.is_empty()),
            "the homeserver refused the device signature: {}",
            response["failures"]
        );
        Ok(json!({
            "master_key": public_id(&master),
            "self_signing_key": public_id(&self_signing),
            "user_signing_key": public_id(&user_signing),
            "signed_device": self.profile.device_id,
        }))
    }

    /// Our master key's public part, if we set up cross-signing.
    pub async fn master_public_key(&self) -> anyhow::Result<Option<String>> {
        let private: Option<PrivateKeys> = self.store.secret(CROSS_SIGNING).await?;
        private
            .map(|keys| Ok(public_id(&Ed25519SecretKey::from_base64(&keys.master).context("a damaged master key")?)))
            .transpose()
    }

    /// `user`'s master key (its ID and the object as published), if they have one.
    pub async fn master_key_of(&self, user: &str) -> anyhow::Result<Option<(String, Value)>> {
        let response: Value = self.api.post(&["keys", "query"], &json!({ "device_keys": { user: [] } })).await?;
        let object = &response["master_keys"][user];
        let id = object["keys"].as_object().and_then(|keys| keys.values().next()).and_then(Value::as_str);
        Ok(id.filter(|_| object["user_id"] == user).map(|id| (id.to_owned(), object.clone())))
    }

    /// Signs another user's (SAS-verified) master key with our user-signing key, so our other
    /// devices and their clients see that we trust them.
    pub async fn sign_master_key(&self, user: &str, master: &str, mut object: Value) -> anyhow::Result<()> {
        let Some(private) = self.store.secret::<PrivateKeys>(CROSS_SIGNING).await? else { return Ok(()) };
        let user_signing =
            Ed25519SecretKey::from_base64(&private.user_signing).context("a damaged user-signing key")?;
        if let Some(object) = object.as_object_mut() {
            object.remove("unsigned");
        }
        let me = self.profile.user_id.clone();
        sign_with(&mut object, &me, &user_signing)?;
        let response: Value =
            self.api.post(&["keys", "signatures", "upload"], &json!({ user: { master: object } })).await?;
        anyhow::ensure!(
            response["failures"].as_object().is_none_or(|f| f.is_empty()),
            "the homeserver refused our signature of {user}'s master key: {}",
            response["failures"]
        );
        Ok(())
    }

    /// The devices of `user`, each checked against the user's cross-signing keys.
    pub async fn device_trust(&self, user: &str) -> anyhow::Result<Vec<DeviceTrust>> {
        let response: Value = self
            .api
            .post(&["keys", "query"], &json!({ "device_keys": { user: [] } }))
            .await
            .context("fetching device keys")?;
        let self_signing = checked_self_signing_key(&response, user);
        let devices = self.query_devices(&[user.to_owned()]).await?;
        Ok(devices
            .into_iter()
            .map(|device| {
                let keys = &response["device_keys"][user][&device.device_id];
                let cross_signed =
                    self_signing.as_ref().is_some_and(|(id, key)| verify_signature(keys, user, id, key).is_ok());
                DeviceTrust {
                    device_id: device.device_id,
                    display_name: device.display_name,
                    ed25519: device.ed25519,
                    curve25519: device.curve25519,
                    cross_signed,
                }
            })
            .collect())
    }
}

/// The user's self-signing key, if it carries a valid signature of their master key.
fn checked_self_signing_key(response: &Value, user: &str) -> Option<(String, Ed25519PublicKey)> {
    let single_key = |object: &Value| -> Option<(String, Ed25519PublicKey)> {
        let (id, key) = object["keys"].as_object()?.iter().next()?;
        let id = id.strip_prefix("ed25519:")?.to_owned();
        Some((id, Ed25519PublicKey::from_base64(key.as_str()?).ok()?))
    };
    let master = &response["master_keys"][user];
    let self_signing = &response["self_signing_keys"][user];
    let (master_id, master_key) = single_key(master)?;
    if master["user_id"] != user || self_signing["user_id"] != user {
        return None;
    }
    verify_signature(self_signing, user, &master_id, &master_key).ok()?;
    single_key(self_signing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_objects_are_signed_by_the_master_key() {
        let master = Ed25519SecretKey::new();
        let self_signing = Ed25519SecretKey::new();
        let mut object = key_object("@a:b", "self_signing", &self_signing);
        sign_with(&mut object, "@a:b", &master).unwrap();
        let response = json!({
            "master_keys": { "@a:b": key_object("@a:b", "master", &master) },
            "self_signing_keys": { "@a:b": object },
        });
        let (id, key) = checked_self_signing_key(&response, "@a:b").unwrap();
        assert_eq!(id, public_id(&self_signing));
        assert_eq!(key, self_signing.public_key());
        // A self-signing key signed by anything else is not trusted.
        let mut forged = key_object("@a:b", "self_signing", &self_signing);
        sign_with(&mut forged, "@a:b", &Ed25519SecretKey::new()).unwrap();
        let response = json!({
            "master_keys": { "@a:b": key_object("@a:b", "master", &master) },
            "self_signing_keys": { "@a:b": forged },
        });
        assert!(checked_self_signing_key(&response, "@a:b").is_none());
    }
}
