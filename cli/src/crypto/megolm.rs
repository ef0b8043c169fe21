//! Megolm-encrypted room events (`m.megolm.v1.aes-sha2`): one outbound session per room, its
//! key shared over Olm with every device allowed to read, rotated when readers leave or the
//! room's rotation limits are reached; inbound sessions kept so history decrypts later.

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sqlx::Row;
use vodozemac::megolm::{
    ExportedSessionKey, GroupSession, GroupSessionPickle, InboundGroupSession, InboundGroupSessionPickle,
    MegolmMessage, SessionConfig, SessionKey, SessionOrdering,
};

use super::keys::Device;
use super::{MEGOLM_ALGORITHM, now_ms};
use crate::client::Client;

/// The spec's defaults for `m.room.encryption`'s rotation limits.
const DEFAULT_ROTATION_MS: i64 = 604_800_000;
const DEFAULT_ROTATION_MSGS: i64 = 100;

/// Why a room event could not be decrypted.
#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    /// The room key has not arrived (yet): the event may decrypt later.
    #[error("the room key for this message has not arrived (session {0})")]
    UnknownSession(String),
    /// The event is forged, replayed or broken: it never decrypts.
    #[error("{0}")]
    Rejected(String),
}

/// A decrypted room event.
pub struct Decrypted {
    pub event_type: String,
    pub content: Value,
    /// The sending device, if it is (still) in the sender's device list.
    pub device_id: Option<String>,
}

/// The outbound session of a room, with what decides its rotation.
struct Outbound {
    session: GroupSession,
    created_ms: i64,
    messages: i64,
    shared_with: BTreeSet<String>,
}

impl Client {
    /// Encrypts a room event, first making sure every device that may read it holds the key.
    pub async fn encrypt_room_event(
        &mut self,
        room_id: &str,
        encryption: &Value,
        event_type: &str,
        content: &Value,
    ) -> anyhow::Result<Value> {
        let readers = self.room_readers(room_id).await?;
        let devices: Vec<Device> = self
            .query_devices(&readers)
            .await?
            .into_iter()
            .filter(|device| !(device.user_id == self.profile.user_id && device.device_id == self.profile.device_id))
            .collect();
        let labels: BTreeSet<String> = devices.iter().map(Device::label).collect();
        // One process at a time advances the room's session: two encrypting at the same
        // message index would look like a replay to every reader.
        let _lock = self.lock().await?;
        let rotation_ms = encryption["rotation_period_ms"].as_i64().unwrap_or(DEFAULT_ROTATION_MS);
        let rotation_msgs = encryption["rotation_period_msgs"].as_i64().unwrap_or(DEFAULT_ROTATION_MSGS);
        let mut outbound = match self.outbound_session(room_id).await? {
            // Someone who had the key can no longer read: they must not read what comes next.
            Some(old)
                if old.shared_with.is_subset(&labels)
                    && now_ms() - old.created_ms < rotation_ms
                    && old.messages < rotation_msgs =>
            {
                old
            }
            _ => self.new_outbound_session(room_id).await?,
        };
        let newcomers: Vec<Device> =
            devices.into_iter().filter(|device| !outbound.shared_with.contains(&device.label())).collect();
        if !newcomers.is_empty() {
            let room_key = json!({
                "algorithm": MEGOLM_ALGORITHM,
                "room_id": room_id,
                "session_id": outbound.session.session_id(),
                "session_key": outbound.session.session_key().to_base64(),
            });
            let reached = self.send_encrypted_to_devices(&newcomers, "m.room_key", &room_key).await?;
            outbound.shared_with.extend(reached.iter().map(Device::label));
            // Remember who has the key before using it, so a retry does not re-send it.
            self.save_outbound(room_id, &outbound).await?;
        }
        let plaintext = json!({ "type": event_type, "content": content, "room_id": room_id });
        let message = outbound.session.encrypt(serde_json::to_vec(&plaintext)?);
        outbound.messages += 1;
        self.save_outbound(room_id, &outbound).await?;
        Ok(json!({
            "algorithm": MEGOLM_ALGORITHM,
            "sender_key": self.curve25519(),
            "device_id": self.profile.device_id,
            "session_id": outbound.session.session_id(),
            "ciphertext": message.to_base64(),
        }))
    }

    /// Users whose devices get the room key: joined members, and invited ones unless the
    /// history visibility is `joined`.
    async fn room_readers(&self, room_id: &str) -> anyhow::Result<Vec<String>> {
        let visibility: Option<Value> = self.state_event(room_id, "m.room.history_visibility", "").await?;
        let invited_read = visibility.as_ref().and_then(|v| v["history_visibility"].as_str()) != Some("joined");
        let members: Value = self
            .api
            .get(&["rooms", room_id, "members"], &[("not_membership", "leave".to_owned())])
            .await
            .context("listing the room's members")?;
        let mut readers = BTreeSet::new();
        for event in members["chunk"].as_array().into_iter().flatten() {
            let membership = event["content"]["membership"].as_str().unwrap_or_default();
            if (membership == "join" || (membership == "invite" && invited_read))
                && let Some(user) = event["state_key"].as_str()
            {
                readers.insert(user.to_owned());
            }
        }
        Ok(readers.into_iter().collect())
    }

    async fn new_outbound_session(&self, room_id: &str) -> anyhow::Result<Outbound> {
        let session = GroupSession::new(SessionConfig::version_1());
        // Our own inbound copy lets this device read its own messages in history.
        let mut inbound = InboundGroupSession::new(&session.session_key(), SessionConfig::version_1());
        let me = self.profile.user_id.clone();
        self.save_inbound(room_id, &me, &self.curve25519(), &self.ed25519(), &mut inbound).await?;
        Ok(Outbound { session, created_ms: now_ms(), messages: 0, shared_with: BTreeSet::new() })
    }

    async fn outbound_session(&self, room_id: &str) -> anyhow::Result<Option<Outbound>> {
        let row = sqlx::query(
            "SELECT pickle, created_ms, messages, shared_with FROM outbound_group_sessions WHERE room_id = $1",
        )
        .bind(room_id)
        .fetch_optional(&self.store.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let pickle: GroupSessionPickle = self.store.cipher.open_json(&row.get::<Vec<u8>, _>(0))?;
        Ok(Some(Outbound {
            session: GroupSession::from_pickle(pickle),
            created_ms: row.get(1),
            messages: row.get(2),
            shared_with: serde_json::from_str(&row.get::<String, _>(3))?,
        }))
    }

    async fn save_outbound(&self, room_id: &str, outbound: &Outbound) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO outbound_group_sessions (room_id, session_id, pickle, created_ms, messages, shared_with)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (room_id) DO UPDATE SET session_id = excluded.session_id, pickle = excluded.pickle,
                 created_ms = excluded.created_ms, messages = excluded.messages, shared_with = excluded.shared_with",
        )
        .bind(room_id)
        .bind(outbound.session.session_id())
        .bind(self.store.cipher.seal_json(&outbound.session.pickle())?)
        .bind(outbound.created_ms)
        .bind(outbound.messages)
        .bind(serde_json::to_string(&outbound.shared_with)?)
        .execute(&self.store.pool)
        .await?;
        Ok(())
    }

    /// Forgets a room's outbound session, so the next message starts (and shares) a new one.
    pub async fn discard_outbound_session(&self, room_id: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM outbound_group_sessions WHERE room_id = $1")
            .bind(room_id)
            .execute(&self.store.pool)
            .await?;
        Ok(())
    }

    /// Stores an inbound session. A copy of a known session replaces it only when it is the
    /// same ratchet reaching further back; anything else about a known session is refused.
    /// `sender_user` is empty for keys from a file, whose origin nothing vouches for.
    pub async fn save_inbound(
        &self,
        room_id: &str,
        sender_user: &str,
        sender_key: &str,
        claimed_ed25519: &str,
        session: &mut InboundGroupSession,
    ) -> anyhow::Result<bool> {
        let session_id = session.session_id();
        if let Some((mut existing, existing_sender, _)) = self.inbound_session(room_id, &session_id).await? {
            if existing_sender != sender_key {
                bail!("a room key for session {session_id} arrived from another device");
            }
            if session.compare(&mut existing) != SessionOrdering::Better {
                return Ok(false);
            }
        }
        sqlx::query(
            "INSERT INTO inbound_group_sessions
                 (room_id, session_id, sender_key, claimed_ed25519, pickle, first_index, sender_user)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (room_id, session_id) DO UPDATE SET pickle = excluded.pickle, first_index = excluded.first_index",
        )
        .bind(room_id)
        .bind(&session_id)
        .bind(sender_key)
        .bind(claimed_ed25519)
        .bind(self.store.cipher.seal_json(&session.pickle())?)
        .bind(i64::from(session.first_known_index()))
        .bind(sender_user)
        .execute(&self.store.pool)
        .await?;
        Ok(true)
    }

    async fn inbound_session(
        &self,
        room_id: &str,
        session_id: &str,
    ) -> anyhow::Result<Option<(InboundGroupSession, String, String)>> {
        let row = sqlx::query(
            "SELECT pickle, sender_key, sender_user FROM inbound_group_sessions WHERE room_id = $1 AND session_id = $2",
        )
        .bind(room_id)
        .bind(session_id)
        .fetch_optional(&self.store.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let pickle: InboundGroupSessionPickle = self.store.cipher.open_json(&row.get::<Vec<u8>, _>(0))?;
        Ok(Some((InboundGroupSession::from_pickle(pickle), row.get(1), row.get(2))))
    }

    /// An `m.room_key` that arrived over Olm from `sender`'s device `sender_key`.
    pub async fn receive_room_key(
        &self,
        sender: &str,
        sender_key: &str,
        claimed_ed25519: &str,
        content: &Value,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(content["algorithm"] == MEGOLM_ALGORITHM, "a room key for an unknown algorithm");
        let room_id = content["room_id"].as_str().context("a room key without room_id")?;
        let session_id = content["session_id"].as_str().context("a room key without session_id")?;
        let key = SessionKey::from_base64(content["session_key"].as_str().unwrap_or_default())
            .context("a malformed room key")?;
        let mut session = InboundGroupSession::new(&key, SessionConfig::version_1());
        anyhow::ensure!(session.session_id() == session_id, "a room key whose session_id does not match its key");
        self.save_inbound(room_id, sender, sender_key, claimed_ed25519, &mut session).await?;
        Ok(())
    }

    /// An imported (exported) room key: from a key file or backup.
    pub async fn import_room_key(
        &self,
        room_id: &str,
        sender_key: &str,
        claimed_ed25519: &str,
        session_key: &str,
    ) -> anyhow::Result<bool> {
        let key = ExportedSessionKey::from_base64(session_key).context("a malformed exported room key")?;
        let mut session = InboundGroupSession::import(&key, SessionConfig::version_1());
        self.save_inbound(room_id, "", sender_key, claimed_ed25519, &mut session).await
    }

    /// Every inbound session, exported at its first known index (for key export).
    pub async fn export_room_keys(&self) -> anyhow::Result<Vec<crate::key_export::ExportedRoomKey>> {
        let rows =
            sqlx::query("SELECT room_id, session_id, sender_key, claimed_ed25519, pickle FROM inbound_group_sessions")
                .fetch_all(&self.store.pool)
                .await?;
        let mut keys = Vec::new();
        for row in rows {
            let pickle: InboundGroupSessionPickle = self.store.cipher.open_json(&row.get::<Vec<u8>, _>(4))?;
            let session = InboundGroupSession::from_pickle(pickle);
            keys.push(crate::key_export::ExportedRoomKey {
                algorithm: MEGOLM_ALGORITHM.to_owned(),
                room_id: row.get(0),
                session_id: row.get(1),
                sender_key: row.get(2),
                sender_claimed_keys: [("ed25519".to_owned(), row.get::<String, _>(3))].into(),
                session_key: session.export_at_first_known_index().to_base64(),
                forwarding_curve25519_key_chain: Vec::new(),
            });
        }
        Ok(keys)
    }

    /// Decrypts an `m.room.encrypted` event, rejecting events whose key came from a device that
    /// is not the sender's, whose plaintext belongs to another room, or that reuse a message
    /// index another event already used (a replay).
    pub async fn decrypt_room_event(&self, room_id: &str, event: &Value) -> Result<Decrypted, DecryptError> {
        let reject = |reason: &str| DecryptError::Rejected(reason.to_owned());
        let content = &event["content"];
        if content["algorithm"] != MEGOLM_ALGORITHM {
            return Err(reject("encrypted with an unsupported algorithm"));
        }
        let sender = event["sender"].as_str().ok_or_else(|| reject("no sender"))?;
        let event_id = event["event_id"].as_str().ok_or_else(|| reject("no event_id"))?;
        let session_id = content["session_id"].as_str().ok_or_else(|| reject("no session_id"))?;
        let message = MegolmMessage::from_base64(content["ciphertext"].as_str().unwrap_or_default())
            .map_err(|_| reject("a malformed Megolm message"))?;
        let internal = |err: anyhow::Error| DecryptError::Rejected(format!("{err:#}"));
        let (mut session, sender_key, key_sender) = self
            .inbound_session(room_id, session_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| DecryptError::UnknownSession(session_id.to_owned()))?;
        if let Some(claimed) = content["sender_key"].as_str()
            && claimed != sender_key
        {
            return Err(reject("the event's sender_key is not the key its session came from"));
        }
        let decrypted = session.decrypt(&message).map_err(|err| match err {
            vodozemac::megolm::DecryptionError::UnknownMessageIndex(..) => {
                DecryptError::UnknownSession(format!("{session_id}, from an earlier message index"))
            }
            other => reject(&format!("Megolm decryption failed: {other}")),
        })?;
        // A key that came over Olm names the user whose device sent it: only that user's events
        // may use it. Keys from a file fall back to the device list.
        if !key_sender.is_empty() && key_sender != sender {
            return Err(reject("sent with a room key that came from another user"));
        }
        let device = if sender_key == self.curve25519() {
            if sender != self.profile.user_id {
                return Err(reject("sent with our own device's room key by someone else"));
            }
            Some(self.profile.device_id.clone())
        } else {
            self.device_by_curve25519(sender, &sender_key).await.map_err(internal)?.map(|device| device.device_id)
        };
        let plaintext: Value =
            serde_json::from_slice(&decrypted.plaintext).map_err(|_| reject("the plaintext is not JSON"))?;
        if plaintext["room_id"] != room_id {
            return Err(reject("the plaintext belongs to another room"));
        }
        self.check_replay(session_id, decrypted.message_index, event_id).await.map_err(internal)??;
        Ok(Decrypted {
            event_type: plaintext["type"].as_str().unwrap_or_default().to_owned(),
            content: plaintext["content"].clone(),
            device_id: device,
        })
    }

    async fn check_replay(
        &self,
        session_id: &str,
        index: u32,
        event_id: &str,
    ) -> anyhow::Result<Result<(), DecryptError>> {
        sqlx::query(
            "INSERT INTO megolm_indexes (session_id, message_index, event_id) VALUES ($1, $2, $3)
             ON CONFLICT (session_id, message_index) DO NOTHING",
        )
        .bind(session_id)
        .bind(i64::from(index))
        .bind(event_id)
        .execute(&self.store.pool)
        .await?;
        let first: String =
            sqlx::query("SELECT event_id FROM megolm_indexes WHERE session_id = $1 AND message_index = $2")
                .bind(session_id)
                .bind(i64::from(index))
                .fetch_one(&self.store.pool)
                .await?
                .get(0);
        Ok(if first == event_id {
            Ok(())
        } else {
            Err(DecryptError::Rejected(format!("a replay: message index {index} was already used by {first}")))
        })
    }

    /// The content of a room's state event, or `None` when it is not set.
    pub async fn state_event(&self, room_id: &str, event_type: &str, state_key: &str) -> anyhow::Result<Option<Value>> {
        let segments: &[&str] = if state_key.is_empty() {
            &["rooms", room_id, "state", event_type]
        } else {
            &["rooms", room_id, "state", event_type, state_key]
        };
        match self.api.get::<Value>(segments, &[]).await {
            Ok(content) => Ok(Some(content)),
            Err(err) if crate::api::errcode(&err) == Some("M_NOT_FOUND") => Ok(None),
            Err(err) => Err(err),
        }
    }
}
