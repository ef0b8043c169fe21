//! Our Olm account (identity keys, one-time keys, fallback key) and other devices' keys.

use std::collections::{BTreeMap, HashSet};

use anyhow::Context;
use serde_json::{Value, json};
use sqlx::Row;
use vodozemac::olm::{Account, AccountPickle};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey};

use super::{MEGOLM_ALGORITHM, OLM_ALGORITHM, add_signature, verify_signature};
use crate::client::Client;

/// The secret under which the pickled account is sealed.
pub const ACCOUNT: &str = "olm_account";

/// A device of some user, with keys checked against the device's own signature.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Device {
    pub user_id: String,
    pub device_id: String,
    pub curve25519: String,
    pub ed25519: String,
    pub display_name: Option<String>,
}

impl Device {
    pub fn label(&self) -> String {
        format!("{} {}", self.user_id, self.device_id)
    }
}

pub async fn load_account(store: &crate::store::Store) -> anyhow::Result<Option<Account>> {
    Ok(store.secret::<AccountPickle>(ACCOUNT).await?.map(Account::from_pickle))
}

impl Client {
    pub async fn save_account(&self) -> anyhow::Result<()> {
        self.store.set_secret(ACCOUNT, &self.account.pickle()).await
    }

    pub fn curve25519(&self) -> String {
        self.account.curve25519_key().to_base64()
    }

    pub fn ed25519(&self) -> String {
        self.account.ed25519_key().to_base64()
    }

    /// Our device keys, signed by our device's Ed25519 key.
    pub fn device_keys(&self) -> anyhow::Result<Value> {
        let (user, device) = (&self.profile.user_id, &self.profile.device_id);
        let mut keys = json!({
            "user_id": user,
            "device_id": device,
            "algorithms": [OLM_ALGORITHM, MEGOLM_ALGORITHM],
            "keys": {
                format!("curve25519:{device}"): self.curve25519(),
                format!("ed25519:{device}"): self.ed25519(),
            },
        });
        self.sign(&mut keys)?;
        Ok(keys)
    }

    fn sign(&self, object: &mut Value) -> anyhow::Result<()> {
        let signature = self.account.sign(super::signing_bytes(object)?);
        add_signature(object, &self.profile.user_id, &self.profile.device_id, signature);
        Ok(())
    }

    /// Publishes device keys (when `with_device_keys`), tops one-time keys up to half of what
    /// the account can hold when the server reports fewer (`otk_count`; `None` only at first
    /// publication, when keys are generated anyway), and replaces the fallback key once it has been used. Keys left unpublished
    /// by an interrupted upload go out again.
    pub async fn publish_keys(
        &mut self,
        with_device_keys: bool,
        otk_count: Option<u64>,
        fallback_used: bool,
    ) -> anyhow::Result<()> {
        let target = self.account.max_number_of_one_time_keys() / 2;
        let pending = self.account.one_time_keys().len();
        let wanted = otk_count.map_or(0, |have| {
            target.saturating_sub(usize::try_from(have).unwrap_or(usize::MAX)).saturating_sub(pending)
        });
        if wanted > 0 {
            self.account.generate_one_time_keys(wanted);
        }
        // Only when no new fallback key is still waiting to be published: generating twice
        // would push out the used one, which peers may still have messages for.
        if (with_device_keys || fallback_used) && self.account.fallback_key().is_empty() {
            self.account.generate_fallback_key();
        }
        let (one_time_keys, fallback_key) = (self.account.one_time_keys(), self.account.fallback_key());
        if !with_device_keys && one_time_keys.is_empty() && fallback_key.is_empty() {
            return Ok(());
        }
        let mut body = json!({ "one_time_keys": self.signed_keys(one_time_keys, false)? });
        if with_device_keys {
            body["device_keys"] = self.device_keys()?;
        }
        if !fallback_key.is_empty() {
            body["fallback_keys"] = self.signed_keys(fallback_key, true)?;
        }
        // The private keys must be on disk before the server hands the public ones out.
        self.save_account().await?;
        let _: Value = self.api.post(&["keys", "upload"], &body).await.context("uploading encryption keys")?;
        self.account.mark_keys_as_published();
        self.save_account().await
    }

    fn signed_keys(
        &self,
        keys: std::collections::HashMap<vodozemac::KeyId, Curve25519PublicKey>,
        fallback: bool,
    ) -> anyhow::Result<Value> {
        let mut out = serde_json::Map::new();
        for (id, key) in keys {
            let mut signed = json!({ "key": key.to_base64() });
            if fallback {
                signed["fallback"] = Value::Bool(true);
            }
            self.sign(&mut signed)?;
            out.insert(format!("signed_curve25519:{}", id.to_base64()), signed);
        }
        Ok(Value::Object(out))
    }

    /// Fetches the devices of `users` from the homeserver, keeps those whose keys carry a valid
    /// self-signature, and remembers them. A device whose keys changed since we first saw it is
    /// refused (a device ID never gets new identity keys), and devices the server no longer
    /// lists are forgotten, so they get no further room keys.
    pub async fn query_devices(&self, users: &[String]) -> anyhow::Result<Vec<Device>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let response = self.query_keys(users).await?;
        self.devices_from(&response, users).await
    }

    /// `POST /keys/query` for all devices of `users`: device keys and cross-signing keys.
    pub async fn query_keys(&self, users: &[String]) -> anyhow::Result<Value> {
        let request: BTreeMap<&str, Vec<String>> = users.iter().map(|user| (user.as_str(), Vec::new())).collect();
        self.api
            .post(&["keys", "query"], &json!({ "device_keys": request, "timeout": 10000 }))
            .await
            .context("fetching device keys")
    }

    /// The devices of `users` in a `/keys/query` response, checked and remembered (see
    /// [`Client::query_devices`]).
    pub async fn devices_from(&self, response: &Value, users: &[String]) -> anyhow::Result<Vec<Device>> {
        let mut found = Vec::new();
        for user in users {
            let Some(devices) = response["device_keys"][user].as_object() else { continue };
            let known = self.known_devices(user).await?;
            let mut listed = HashSet::new();
            for (device_id, keys) in devices {
                let device = match checked_device(user, device_id, keys) {
                    Ok(device) => device,
                    Err(err) => {
                        eprintln!("myelin: ignoring device {device_id} of {user}: {err:#}");
                        continue;
                    }
                };
                if let Some(old) = known.iter().find(|old| old.device_id == device.device_id)
                    && (old.curve25519 != device.curve25519 || old.ed25519 != device.ed25519)
                {
                    eprintln!("myelin: ignoring device {device_id} of {user}: its identity keys changed");
                    listed.insert(device.device_id.clone());
                    continue;
                }
                self.remember_device(&device).await?;
                listed.insert(device.device_id.clone());
                found.push(device);
            }
            for gone in known.iter().filter(|old| !listed.contains(&old.device_id)) {
                sqlx::query("DELETE FROM devices WHERE user_id = $1 AND device_id = $2")
                    .bind(&gone.user_id)
                    .bind(&gone.device_id)
                    .execute(&self.store.pool)
                    .await?;
            }
        }
        Ok(found)
    }

    async fn remember_device(&self, device: &Device) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO devices (user_id, device_id, curve25519, ed25519, display_name) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = excluded.display_name",
        )
        .bind(&device.user_id)
        .bind(&device.device_id)
        .bind(&device.curve25519)
        .bind(&device.ed25519)
        .bind(&device.display_name)
        .execute(&self.store.pool)
        .await?;
        Ok(())
    }

    pub async fn known_devices(&self, user: &str) -> anyhow::Result<Vec<Device>> {
        let rows =
            sqlx::query("SELECT user_id, device_id, curve25519, ed25519, display_name FROM devices WHERE user_id = $1")
                .bind(user)
                .fetch_all(&self.store.pool)
                .await?;
        Ok(rows.iter().map(device_of).collect())
    }

    /// The device of `user` that owns `curve25519`, asking the server about `user`'s devices
    /// if we have not seen it yet.
    pub async fn device_by_curve25519(&self, user: &str, curve25519: &str) -> anyhow::Result<Option<Device>> {
        let lookup = || async {
            let row = sqlx::query(
                "SELECT user_id, device_id, curve25519, ed25519, display_name FROM devices
                 WHERE user_id = $1 AND curve25519 = $2",
            )
            .bind(user)
            .bind(curve25519)
            .fetch_optional(&self.store.pool)
            .await?;
            anyhow::Ok(row.as_ref().map(device_of))
        };
        if let Some(device) = lookup().await? {
            return Ok(Some(device));
        }
        self.query_devices(&[user.to_owned()]).await?;
        lookup().await
    }
}

fn device_of(row: &sqlx::sqlite::SqliteRow) -> Device {
    Device {
        user_id: row.get(0),
        device_id: row.get(1),
        curve25519: row.get(2),
        ed25519: row.get(3),
        display_name: row.get(4),
    }
}

/// Device keys as the spec requires them: for this user and device, with both keys, signed by
/// the device's own Ed25519 key.
fn checked_device(user: &str, device_id: &str, keys: &Value) -> anyhow::Result<Device> {
    anyhow::ensure!(keys["user_id"] == user && keys["device_id"] == device_id, "keys for another device");
    let key = |algorithm: &str| {
        keys["keys"][format!("{algorithm}:{device_id}")]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no {algorithm} key"))
    };
    let (curve25519, ed25519) = (key("curve25519")?, key("ed25519")?);
    Curve25519PublicKey::from_base64(&curve25519).context("a malformed curve25519 key")?;
    let signing_key = Ed25519PublicKey::from_base64(&ed25519).context("a malformed ed25519 key")?;
    verify_signature(keys, user, device_id, &signing_key)?;
    Ok(Device {
        user_id: user.to_owned(),
        device_id: device_id.to_owned(),
        curve25519,
        ed25519,
        display_name: keys["unsigned"]["device_display_name"].as_str().map(str::to_owned),
    })
}
