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
    /// Verified by us: directly with SAS, or cross-signed by an owner we verified.
    pub verified: bool,
}

/// Another user's cross-signing identity: their master key, as pinned here.
#[derive(Serialize)]
pub struct Identity {
    pub master_key: String,
    /// This master key was confirmed by a SAS verification with them.
    pub verified: bool,
    /// The key pinned before this one, until a verification confirms the change.
    pub changed_from: Option<String>,
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

    /// `user`'s published cross-signing keys, checked, with their master key pinned.
    pub async fn cross_signing_of(&self, user: &str) -> anyhow::Result<Option<(PublishedKeys, Identity)>> {
        let response = self.query_keys(&[user.to_owned()]).await?;
        self.identity_from(&response, user).await
    }

    async fn identity_from(&self, response: &Value, user: &str) -> anyhow::Result<Option<(PublishedKeys, Identity)>> {
        let Some(keys) = published_keys(response, user) else { return Ok(None) };
        let identity = self.pin_master_key(user, &keys.master).await?;
        Ok(Some((keys, identity)))
    }

    /// Pins `user`'s master key the first time we see one; a different key later is recorded
    /// as a change, and shown as one until a verification confirms the new key.
    async fn pin_master_key(&self, user: &str, master: &str) -> anyhow::Result<Identity> {
        let pool = &self.store.pool;
        let pinned: Option<(String, bool, Option<String>)> =
            sqlx::query_as("SELECT master_key, verified, previous FROM master_keys WHERE user_id = $1")
                .bind(user)
                .fetch_optional(pool)
                .await?;
        let identity = match pinned {
            None => {
                sqlx::query("INSERT INTO master_keys (user_id, master_key) VALUES ($1, $2)")
                    .bind(user)
                    .bind(master)
                    .execute(pool)
                    .await?;
                Identity { master_key: master.to_owned(), verified: false, changed_from: None }
            }
            Some((key, verified, previous)) if key == master => {
                Identity { master_key: key, verified, changed_from: previous }
            }
            Some((old, _, previous)) => {
                // The first unconfirmed key stays the reference: several changes in a row are
                // still one change since what the user last knew.
                let previous = previous.unwrap_or(old);
                sqlx::query("UPDATE master_keys SET master_key = $2, verified = 0, previous = $3 WHERE user_id = $1")
                    .bind(user)
                    .bind(master)
                    .bind(&previous)
                    .execute(pool)
                    .await?;
                eprintln!(
                    "myelin: WARNING: {user}'s identity (master key) changed from {previous} to {master}; \
                     verify them again with `myelin verify {user}`"
                );
                Identity { master_key: master.to_owned(), verified: false, changed_from: Some(previous) }
            }
        };
        Ok(identity)
    }

    /// Records that a SAS verification confirmed `user`'s master key.
    pub async fn confirm_master_key(&self, user: &str, master: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO master_keys (user_id, master_key, verified) VALUES ($1, $2, 1)
             ON CONFLICT (user_id) DO UPDATE SET master_key = excluded.master_key, verified = 1, previous = NULL",
        )
        .bind(user)
        .bind(master)
        .execute(&self.store.pool)
        .await?;
        Ok(())
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

    /// `user`'s identity and devices, each device checked against the user's cross-signing
    /// keys (all from one `/keys/query` answer).
    pub async fn device_trust(&self, user: &str) -> anyhow::Result<(Option<Identity>, Vec<DeviceTrust>)> {
        let users = [user.to_owned()];
        let response = self.query_keys(&users).await?;
        let devices = self.devices_from(&response, &users).await?;
        let identity = self.identity_from(&response, user).await?;
        let verified: Vec<String> =
            sqlx::query_scalar("SELECT device_id FROM devices WHERE user_id = $1 AND verified = 1")
                .bind(user)
                .fetch_all(&self.store.pool)
                .await?;
        let self_signing = identity.as_ref().and_then(|(keys, _)| keys.self_signing.as_ref());
        let identity_trusted = identity.as_ref().is_some_and(|(_, id)| id.verified && id.changed_from.is_none());
        let devices = devices
            .into_iter()
            .map(|device| {
                let keys = &response["device_keys"][user][&device.device_id];
                let cross_signed = self_signing.is_some_and(|(id, key)| verify_signature(keys, user, id, key).is_ok());
                DeviceTrust {
                    verified: verified.contains(&device.device_id) || (cross_signed && identity_trusted),
                    device_id: device.device_id,
                    display_name: device.display_name,
                    ed25519: device.ed25519,
                    curve25519: device.curve25519,
                    cross_signed,
                }
            })
            .collect();
        Ok((identity.map(|(_, identity)| identity), devices))
    }
}

/// A user's published cross-signing keys, checked.
pub struct PublishedKeys {
    /// The master key (also its key ID without `ed25519:`).
    pub master: String,
    /// The master key object as published, for signing it.
    pub master_object: Value,
    /// The self-signing key, if the master key signed one.
    self_signing: Option<(String, Ed25519PublicKey)>,
}

/// The single Ed25519 key of a cross-signing key object for `user` and `usage`.
fn single_key(object: &Value, user: &str, usage: &str) -> Option<(String, Ed25519PublicKey)> {
    if object["user_id"] != user || !object["usage"].as_array()?.iter().any(|u| u == usage) {
        return None;
    }
    let keys = object["keys"].as_object()?;
    let (id, key) = keys.iter().next().filter(|_| keys.len() == 1)?;
    let key = key.as_str()?;
    // A cross-signing key's ID is the key itself.
    (id.strip_prefix("ed25519:")? == key).then_some(())?;
    Some((key.to_owned(), Ed25519PublicKey::from_base64(key).ok()?))
}

/// `user`'s master key and, if it carries a valid signature of that master key, their
/// self-signing key, from a `/keys/query` answer.
fn published_keys(response: &Value, user: &str) -> Option<PublishedKeys> {
    let master_object = &response["master_keys"][user];
    let (master, master_key) = single_key(master_object, user, "master")?;
    let self_signing_object = &response["self_signing_keys"][user];
    let self_signing = single_key(self_signing_object, user, "self_signing")
        .filter(|_| verify_signature(self_signing_object, user, &master, &master_key).is_ok());
    Some(PublishedKeys { master, master_object: master_object.clone(), self_signing })
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
        let response = |master_object: Value, self_signing_object: Value| {
            json!({
                "master_keys": { "@a:b": master_object },
                "self_signing_keys": { "@a:b": self_signing_object },
            })
        };
        let keys = published_keys(&response(key_object("@a:b", "master", &master), object.clone()), "@a:b").unwrap();
        assert_eq!(keys.master, public_id(&master));
        let (id, key) = keys.self_signing.unwrap();
        assert_eq!(id, public_id(&self_signing));
        assert_eq!(key, self_signing.public_key());
        // A self-signing key signed by anything else is not trusted.
        let mut forged = key_object("@a:b", "self_signing", &self_signing);
        sign_with(&mut forged, "@a:b", &Ed25519SecretKey::new()).unwrap();
        let keys = published_keys(&response(key_object("@a:b", "master", &master), forged), "@a:b").unwrap();
        assert!(keys.self_signing.is_none());
        // Nor is a master key published for another usage or user, or under a foreign key ID.
        let wrong_usage = key_object("@a:b", "user_signing", &master);
        assert!(published_keys(&response(wrong_usage, object.clone()), "@a:b").is_none());
        let wrong_user = key_object("@c:b", "master", &master);
        assert!(published_keys(&response(wrong_user, object.clone()), "@a:b").is_none());
        let mut wrong_id = key_object("@a:b", "master", &master);
        wrong_id["keys"] = json!({ "ed25519:OTHER": public_id(&master) });
        assert!(published_keys(&response(wrong_id, object), "@a:b").is_none());
    }
}
