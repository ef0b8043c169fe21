//! End-to-end encryption keys: device keys, one-time and fallback keys, cross-signing keys, the
//! signatures on them, and the device list stream that tells other users to re-fetch them.

use std::collections::BTreeMap;

use sqlx::Row;

use super::streams::{next_position, room_mates_of_1};
use super::{Backend, Error, Result, Storage, WriteTx};

/// A device's identity keys as stored, with its display name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDeviceKeys {
    /// The device.
    pub device_id: String,
    /// The signed `DeviceKeys` JSON as uploaded.
    pub key_json: String,
    /// The device's display name.
    pub display_name: Option<String>,
}

/// A key of a one-time or fallback key upload: `algorithm:key_id` split, with its JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadedKey {
    /// E.g. `signed_curve25519`.
    pub algorithm: String,
    /// The key's ID.
    pub key_id: String,
    /// The key object (or string) as JSON.
    pub key_json: String,
}

/// A signature to attach to a key: `signer_user_id`'s `signer_key_id` over `target_user_id`'s
/// `target_key_id` (a device ID or a cross-signing public key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySignature {
    /// Whose key is signed.
    pub target_user_id: String,
    /// The device ID or cross-signing public key signed.
    pub target_key_id: String,
    /// Who signed.
    pub signer_user_id: String,
    /// With which key, e.g. `ed25519:<public key>`.
    pub signer_key_id: String,
    /// The signature.
    pub signature: String,
}

impl Storage {
    /// Stores a device's identity keys. Returns the stream position of the device list change
    /// when they are new or different.
    pub async fn set_device_keys(&self, user_id: &str, device_id: &str, key_json: &str) -> Result<Option<i64>> {
        let mut tx = self.begin_write().await?;
        let existing = sqlx::query("SELECT key_json FROM device_keys WHERE user_id = $1 AND device_id = $2")
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?;
        if existing.as_deref() == Some(key_json) {
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = $3",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(key_json)
        .execute(&mut *tx)
        .await?;
        let position = mark_device_list_change(&mut tx, user_id).await?;
        tx.commit().await?;
        Ok(Some(position))
    }

    /// Identity keys of a user's existing devices (all of them, or those listed).
    pub async fn device_keys(&self, user_id: &str) -> Result<Vec<StoredDeviceKeys>> {
        let rows = sqlx::query(
            "SELECT k.device_id, k.key_json, d.display_name FROM device_keys k \
             JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id \
             WHERE k.user_id = $1 ORDER BY k.device_id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredDeviceKeys { device_id: r.try_get(0)?, key_json: r.try_get(1)?, display_name: r.try_get(2)? })
            })
            .collect()
    }

    /// Adds one-time keys. Uploading a key ID again with the same key is a no-op; with a
    /// different key it is a [`Error::Conflict`] and nothing is stored.
    pub async fn add_one_time_keys(&self, user_id: &str, device_id: &str, keys: &[UploadedKey]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for key in keys {
            let existing = sqlx::query(
                "SELECT key_json FROM one_time_keys \
                 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(&key.algorithm)
            .bind(&key.key_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?;
            match existing {
                Some(json) if json == key.key_json => continue,
                Some(_) => return Err(Error::Conflict { constraint: format!("{}:{}", key.algorithm, key.key_id) }),
                None => {}
            }
            sqlx::query(
                "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, key_json) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(&key.algorithm)
            .bind(&key.key_id)
            .bind(&key.key_json)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Unclaimed one-time keys of a device, by algorithm.
    pub async fn one_time_key_counts(&self, user_id: &str, device_id: &str) -> Result<BTreeMap<String, i64>> {
        let rows = sqlx::query(
            "SELECT algorithm, COUNT(*) FROM one_time_keys WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Replaces a device's fallback key of each algorithm given. Re-uploading the current key
    /// keeps whether it was used.
    pub async fn set_fallback_keys(&self, user_id: &str, device_id: &str, keys: &[UploadedKey]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for key in keys {
            sqlx::query(
                "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key_json, used) \
                 VALUES ($1, $2, $3, $4, $5, 0) \
                 ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET key_id = $4, key_json = $5, used = 0 \
                 WHERE fallback_keys.key_id <> $4 OR fallback_keys.key_json <> $5",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(&key.algorithm)
            .bind(&key.key_id)
            .bind(&key.key_json)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Algorithms of a device's fallback keys that were not claimed yet.
    pub async fn unused_fallback_algorithms(&self, user_id: &str, device_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT algorithm FROM fallback_keys WHERE user_id = $1 AND device_id = $2 AND used = 0 ORDER BY algorithm",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Claims one key per `(user, device, algorithm)`: the oldest one-time key, which is then
    /// gone for good, or else the fallback key. Returns `(user, device, key)` for each found.
    pub async fn claim_keys(&self, wanted: &[(String, String, String)]) -> Result<Vec<(String, String, UploadedKey)>> {
        // Concurrent claims must never get the same key: SQLite has one writer at a time; on
        // PostgreSQL the row lock makes a concurrent claim skip to the next key.
        let pick = match self.backend {
            Backend::Sqlite => {
                "SELECT id, key_id, key_json FROM one_time_keys \
                 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 ORDER BY id LIMIT 1"
            }
            Backend::Postgres => {
                "SELECT id, key_id, key_json FROM one_time_keys \
                 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
            }
        };
        let mut tx = self.begin_write().await?;
        let mut claimed = Vec::new();
        for (user_id, device_id, algorithm) in wanted {
            let row = sqlx::query(pick).bind(user_id).bind(device_id).bind(algorithm).fetch_optional(&mut *tx).await?;
            let key = match row {
                Some(row) => {
                    let id: i64 = row.try_get(0)?;
                    sqlx::query("DELETE FROM one_time_keys WHERE id = $1").bind(id).execute(&mut *tx).await?;
                    Some((row.try_get(1)?, row.try_get(2)?))
                }
                None => sqlx::query(
                    "UPDATE fallback_keys SET used = 1 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
                     RETURNING key_id, key_json",
                )
                .bind(user_id)
                .bind(device_id)
                .bind(algorithm)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| Ok::<_, Error>((row.try_get(0)?, row.try_get(1)?)))
                .transpose()?,
            };
            if let Some((key_id, key_json)) = key {
                let key = UploadedKey { algorithm: algorithm.clone(), key_id, key_json };
                claimed.push((user_id.clone(), device_id.clone(), key));
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// A user's cross-signing keys by type (`master`, `self_signing`, `user_signing`).
    pub async fn cross_signing_keys(&self, user_id: &str) -> Result<BTreeMap<String, String>> {
        let rows = sqlx::query("SELECT key_type, key_json FROM cross_signing_keys WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Stores cross-signing keys `(type, JSON)`; returns the device list change's position.
    pub async fn set_cross_signing_keys(&self, user_id: &str, keys: &[(&str, String)]) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        for (key_type, key_json) in keys {
            sqlx::query(
                "INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = $3",
            )
            .bind(user_id)
            .bind(key_type)
            .bind(key_json)
            .execute(&mut *tx)
            .await?;
        }
        let position = mark_device_list_change(&mut tx, user_id).await?;
        tx.commit().await?;
        Ok(position)
    }

    /// Stores signatures; returns the position of the device list change of their targets.
    pub async fn add_key_signatures(&self, signatures: &[KeySignature]) -> Result<Option<i64>> {
        if signatures.is_empty() {
            return Ok(None);
        }
        let mut tx = self.begin_write().await?;
        for s in signatures {
            sqlx::query(
                "INSERT INTO key_signatures (target_user_id, target_key_id, signer_user_id, signer_key_id, signature) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id) DO UPDATE SET signature = $5",
            )
            .bind(&s.target_user_id)
            .bind(&s.target_key_id)
            .bind(&s.signer_user_id)
            .bind(&s.signer_key_id)
            .bind(&s.signature)
            .execute(&mut *tx)
            .await?;
        }
        let mut position = 0;
        let mut targets: Vec<&str> = signatures.iter().map(|s| s.target_user_id.as_str()).collect();
        targets.sort_unstable();
        targets.dedup();
        for target in targets {
            position = mark_device_list_change(&mut tx, target).await?;
        }
        tx.commit().await?;
        Ok(Some(position))
    }

    /// Signatures uploaded for a user's keys.
    pub async fn key_signatures(&self, target_user_id: &str) -> Result<Vec<KeySignature>> {
        let rows = sqlx::query(
            "SELECT target_key_id, signer_user_id, signer_key_id, signature FROM key_signatures \
             WHERE target_user_id = $1",
        )
        .bind(target_user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KeySignature {
                    target_user_id: target_user_id.to_owned(),
                    target_key_id: r.try_get(0)?,
                    signer_user_id: r.try_get(1)?,
                    signer_key_id: r.try_get(2)?,
                    signature: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Users whose device lists changed in `(after, until]`: `user_id` itself and those who share
    /// a joined room with it.
    pub async fn device_list_changes(&self, user_id: &str, after: i64, until: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(concat!(
            "SELECT user_id FROM device_list_changes \
             WHERE stream_id > $2 AND stream_id <= $3 AND (user_id = $1 OR user_id IN (",
            room_mates_of_1!(),
            "))"
        ))
        .bind(user_id)
        .bind(after)
        .bind(until)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }
}

impl Storage {
    /// The stream position of `user_id`'s latest device list change (0: none recorded).
    pub async fn device_list_stream_id(&self, user_id: &str) -> Result<i64> {
        let row = sqlx::query("SELECT stream_id FROM device_list_changes WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?.unwrap_or(0))
    }
}

impl Storage {
    /// Records that a user of another server changed devices or keys (they told us): users
    /// sharing a room with them see it in sync's `device_lists.changed`.
    pub async fn note_device_list_change(&self, user_id: &str) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let position = mark_device_list_change(&mut tx, user_id).await?;
        tx.commit().await?;
        Ok(position)
    }
}

/// Records that `user_id`'s devices or keys changed, at a new stream position.
pub(super) async fn mark_device_list_change(tx: &mut WriteTx, user_id: &str) -> Result<i64> {
    let position = next_position(tx).await?;
    sqlx::query(
        "INSERT INTO device_list_changes (user_id, stream_id) VALUES ($1, $2) \
         ON CONFLICT (user_id) DO UPDATE SET stream_id = $2",
    )
    .bind(user_id)
    .bind(position)
    .execute(&mut **tx)
    .await?;
    Ok(position)
}

/// Deletes what belongs to a device besides the device itself: its keys, the signatures on them
/// and its pending to-device messages.
pub(super) async fn delete_device_data(tx: &mut WriteTx, user_id: &str, device_id: &str) -> Result<()> {
    for sql in [
        "DELETE FROM device_keys WHERE user_id = $1 AND device_id = $2",
        "DELETE FROM one_time_keys WHERE user_id = $1 AND device_id = $2",
        "DELETE FROM fallback_keys WHERE user_id = $1 AND device_id = $2",
        "DELETE FROM key_signatures WHERE target_user_id = $1 AND target_key_id = $2",
        "DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = $2",
    ] {
        sqlx::query(sql).bind(user_id).bind(device_id).execute(&mut **tx).await?;
    }
    Ok(())
}
