//! Olm-encrypted to-device messages (`m.olm.v1.curve25519-aes-sha2`): how room keys reach
//! other devices.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Value, json};
use sqlx::Row;
use vodozemac::olm::{OlmMessage, PreKeyMessage, Session, SessionConfig, SessionPickle};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey};

use super::keys::Device;
use super::{OLM_ALGORITHM, now_ms, verify_signature};
use crate::client::Client;

/// A to-device event after Olm decryption and the spec's checks of its plaintext.
pub struct DecryptedToDevice {
    pub event_type: String,
    pub content: Value,
    pub sender: String,
    pub sender_key: String,
    /// The Ed25519 key the sender's device claims to have (checked against the device list
    /// when we know the device).
    pub claimed_ed25519: String,
}

impl Client {
    /// Encrypts `content` for each device and sends it in one `sendToDevice` request, claiming
    /// one-time keys for devices we have no Olm session with yet. Devices whose key claim
    /// fails are reported and skipped.
    pub async fn send_encrypted_to_devices(
        &mut self,
        devices: &[Device],
        event_type: &str,
        content: &Value,
    ) -> anyhow::Result<Vec<Device>> {
        let mut sessions = BTreeMap::new();
        let mut missing = Vec::new();
        for device in devices {
            match self.newest_session(&device.curve25519).await? {
                Some(session) => {
                    sessions.insert(device.label(), session);
                }
                None => missing.push(device),
            }
        }
        for (device, session) in self.claim_sessions(&missing).await? {
            sessions.insert(device, session);
        }
        let mut messages: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
        let mut reached = Vec::new();
        for device in devices {
            let Some(session) = sessions.get_mut(&device.label()) else { continue };
            let payload = json!({
                "type": event_type,
                "content": content,
                "sender": self.profile.user_id,
                "sender_device": self.profile.device_id,
                "recipient": device.user_id,
                "recipient_keys": { "ed25519": device.ed25519 },
                "keys": { "ed25519": self.ed25519() },
            });
            let message = session.encrypt(serde_json::to_vec(&payload)?).context("Olm encryption failed")?;
            // The ratchet step must be stored before the message leaves.
            self.save_session(&device.curve25519, session).await?;
            let (kind, body) = match message {
                OlmMessage::PreKey(message) => (0, message.to_base64()),
                OlmMessage::Normal(message) => (1, message.to_base64()),
            };
            messages.entry(device.user_id.clone()).or_default().insert(
                device.device_id.clone(),
                json!({
                    "algorithm": OLM_ALGORITHM,
                    "sender_key": self.curve25519(),
                    "ciphertext": { device.curve25519.clone(): { "type": kind, "body": body } },
                }),
            );
            reached.push(device.clone());
        }
        if !messages.is_empty() {
            let txn = uuid::Uuid::new_v4().to_string();
            let _: Value = self
                .api
                .put(&["sendToDevice", "m.room.encrypted", &txn], &json!({ "messages": messages }))
                .await
                .context("sending to-device messages")?;
        }
        Ok(reached)
    }

    /// Claims a one-time (or fallback) key for each device, checks the device's signature on
    /// it, and starts an outbound Olm session.
    async fn claim_sessions(&self, devices: &[&Device]) -> anyhow::Result<Vec<(String, Session)>> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let mut request: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
        for device in devices {
            request.entry(&device.user_id).or_default().insert(&device.device_id, "signed_curve25519");
        }
        let response: Value = self
            .api
            .post(&["keys", "claim"], &json!({ "one_time_keys": request, "timeout": 10000 }))
            .await
            .context("claiming one-time keys")?;
        let mut sessions = Vec::new();
        for device in devices {
            let claimed = response["one_time_keys"][&device.user_id][&device.device_id].as_object();
            let Some((_, key)) = claimed.and_then(|keys| keys.iter().next()) else {
                eprintln!("myelin: {} has no one-time keys left; it will not get this message's key", device.label());
                continue;
            };
            let signing_key = Ed25519PublicKey::from_base64(&device.ed25519)?;
            if let Err(err) = verify_signature(key, &device.user_id, &device.device_id, &signing_key) {
                eprintln!("myelin: refusing {}'s one-time key: {err:#}", device.label());
                continue;
            }
            let one_time_key = Curve25519PublicKey::from_base64(key["key"].as_str().unwrap_or_default())
                .context("a malformed one-time key")?;
            let identity_key = Curve25519PublicKey::from_base64(&device.curve25519)?;
            let session =
                self.account.create_outbound_session(SessionConfig::version_1(), identity_key, one_time_key)?;
            self.save_session(&device.curve25519, &session).await?;
            sessions.push((device.label(), session));
        }
        Ok(sessions)
    }

    async fn newest_session(&self, curve25519: &str) -> anyhow::Result<Option<Session>> {
        let row = sqlx::query(
            "SELECT pickle FROM olm_sessions WHERE sender_key = $1 ORDER BY last_used_ms DESC, rowid DESC LIMIT 1",
        )
        .bind(curve25519)
        .fetch_optional(&self.store.pool)
        .await?;
        row.map(|row| self.store.cipher.open_json::<SessionPickle>(&row.get::<Vec<u8>, _>(0)).map(Session::from_pickle))
            .transpose()
    }

    async fn sessions_with(&self, curve25519: &str) -> anyhow::Result<Vec<Session>> {
        let rows = sqlx::query("SELECT pickle FROM olm_sessions WHERE sender_key = $1 ORDER BY last_used_ms DESC")
            .bind(curve25519)
            .fetch_all(&self.store.pool)
            .await?;
        rows.iter()
            .map(|row| {
                self.store.cipher.open_json::<SessionPickle>(&row.get::<Vec<u8>, _>(0)).map(Session::from_pickle)
            })
            .collect()
    }

    async fn save_session(&self, curve25519: &str, session: &Session) -> anyhow::Result<()> {
        let mut conn = self.store.pool.acquire().await?;
        upsert_session(&mut conn, &self.store.cipher, curve25519, session).await
    }

    /// Decrypts an `m.room.encrypted` to-device event sent with Olm and checks its plaintext:
    /// it must name its real sender, us as recipient and our Ed25519 key, and claim the Ed25519
    /// key of the device that owns the sending Curve25519 key.
    pub async fn decrypt_to_device(&mut self, event: &Value) -> anyhow::Result<DecryptedToDevice> {
        let sender = event["sender"].as_str().context("no sender")?;
        let content = &event["content"];
        anyhow::ensure!(content["algorithm"] == OLM_ALGORITHM, "not Olm-encrypted");
        let sender_key = content["sender_key"].as_str().context("no sender_key")?;
        let ours = &content["ciphertext"][self.curve25519()];
        let body = ours["body"].as_str().context("not encrypted for this device")?;
        // Before anything changes state: the key must belong to a device of the claimed sender.
        let device = self
            .device_by_curve25519(sender, sender_key)
            .await?
            .with_context(|| format!("the sending key belongs to no device of {sender}"))?;
        let plaintext = match ours["type"].as_u64() {
            Some(0) => self.decrypt_pre_key(sender_key, PreKeyMessage::from_base64(body)?).await?,
            Some(1) => {
                let message = OlmMessage::from_parts(1, &base64_decode(body)?)?;
                self.decrypt_with_existing(sender_key, &message).await?.context("no Olm session can decrypt it")?
            }
            _ => bail!("an unknown Olm message type"),
        };
        let payload: Value = serde_json::from_slice(&plaintext).context("Olm plaintext is not JSON")?;
        anyhow::ensure!(payload["sender"] == sender, "the plaintext names another sender");
        anyhow::ensure!(payload["recipient"] == self.profile.user_id.as_str(), "not meant for us");
        anyhow::ensure!(payload["recipient_keys"]["ed25519"] == self.ed25519().as_str(), "meant for another device");
        let claimed = payload["keys"]["ed25519"].as_str().context("no sender Ed25519 key")?.to_owned();
        anyhow::ensure!(device.ed25519 == claimed, "the sender's keys do not match its device");
        Ok(DecryptedToDevice {
            event_type: payload["type"].as_str().context("no type")?.to_owned(),
            content: payload["content"].clone(),
            sender: sender.to_owned(),
            sender_key: sender_key.to_owned(),
            claimed_ed25519: claimed,
        })
    }

    async fn decrypt_pre_key(&mut self, sender_key: &str, message: PreKeyMessage) -> anyhow::Result<Vec<u8>> {
        let wrapped = OlmMessage::PreKey(message.clone());
        if let Some(plaintext) = self.decrypt_with_existing(sender_key, &wrapped).await? {
            return Ok(plaintext);
        }
        // A session that exists but cannot decrypt it has seen it already: a replay, which must
        // not reset the session (a fallback key would let it start over).
        let existing = sqlx::query("SELECT 1 FROM olm_sessions WHERE session_id = $1")
            .bind(message.session_id())
            .fetch_optional(&self.store.pool)
            .await?;
        anyhow::ensure!(existing.is_none(), "a replayed Olm message");
        let identity_key = Curve25519PublicKey::from_base64(sender_key)?;
        let created = self
            .account
            .create_inbound_session(SessionConfig::version_1(), identity_key, &message)
            .context("cannot start an Olm session from this message")?;
        // The session and the account (its one-time key now used) are stored together.
        let mut tx = self.store.pool.begin().await?;
        upsert_session(&mut tx, &self.store.cipher, sender_key, &created.session).await?;
        sqlx::query(
            "INSERT INTO secrets (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(super::keys::ACCOUNT)
        .bind(self.store.cipher.seal_json(&self.account.pickle())?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(created.plaintext)
    }

    async fn decrypt_with_existing(&self, sender_key: &str, message: &OlmMessage) -> anyhow::Result<Option<Vec<u8>>> {
        let pre_key_session = match message {
            OlmMessage::PreKey(message) => Some(message.session_id()),
            OlmMessage::Normal(_) => None,
        };
        for mut session in self.sessions_with(sender_key).await? {
            if pre_key_session.as_ref().is_some_and(|id| *id != session.session_id()) {
                continue;
            }
            if let Ok(plaintext) = session.decrypt(message) {
                self.save_session(sender_key, &session).await?;
                return Ok(Some(plaintext));
            }
        }
        Ok(None)
    }
}

async fn upsert_session(
    conn: &mut sqlx::SqliteConnection,
    cipher: &crate::store::Cipher,
    curve25519: &str,
    session: &Session,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO olm_sessions (session_id, sender_key, pickle, last_used_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (session_id) DO UPDATE SET pickle = excluded.pickle, last_used_ms = excluded.last_used_ms",
    )
    .bind(session.session_id())
    .bind(curve25519)
    .bind(cipher.seal_json(&session.pickle())?)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn base64_decode(input: &str) -> anyhow::Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD_NO_PAD.decode(input.trim_end_matches('=')).context("malformed base64")
}
