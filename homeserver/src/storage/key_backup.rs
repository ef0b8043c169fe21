//! Server-side key backup: versions, and the encrypted room keys stored under each.

use sqlx::Row;

use super::{Error, Result, Storage, WriteTx};

/// A backup version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupVersion {
    /// The version number.
    pub version: i64,
    /// The backup algorithm.
    pub algorithm: String,
    /// Algorithm-dependent data, as JSON.
    pub auth_data: String,
    /// Changes whenever the stored keys change.
    pub etag: i64,
    /// Keys stored.
    pub count: i64,
}

/// A backed-up room key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupKey {
    /// The room.
    pub room_id: String,
    /// The Megolm session.
    pub session_id: String,
    /// The first message index the key can decrypt.
    pub first_message_index: i64,
    /// How many times the key was forwarded.
    pub forwarded_count: i64,
    /// Whether the device the key came from was verified.
    pub is_verified: bool,
    /// The encrypted session data, as JSON.
    pub session_data: String,
}

impl BackupKey {
    /// Whether this key should replace `current`: a verified key beats an unverified one, then
    /// the one that decrypts more (lower first message index), then the less forwarded one.
    fn better_than(&self, current: &Self) -> bool {
        if self.is_verified != current.is_verified {
            return self.is_verified;
        }
        if self.first_message_index != current.first_message_index {
            return self.first_message_index < current.first_message_index;
        }
        self.forwarded_count < current.forwarded_count
    }
}

impl Storage {
    /// Creates a backup version; returns its number (never one used before by this user).
    pub async fn create_backup_version(&self, user_id: &str, algorithm: &str, auth_data: &str) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) + 1 FROM backup_versions WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
        let version: i64 = row.try_get(0)?;
        sqlx::query(
            "INSERT INTO backup_versions (user_id, version, algorithm, auth_data, etag, deleted) VALUES ($1, $2, $3, $4, 0, 0)",
        )
        .bind(user_id)
        .bind(version)
        .bind(algorithm)
        .bind(auth_data)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    /// A backup version, or the latest one when `version` is `None`; deleted ones are gone.
    pub async fn backup_version(&self, user_id: &str, version: Option<i64>) -> Result<Option<BackupVersion>> {
        let row = sqlx::query(
            "SELECT v.version, v.algorithm, v.auth_data, v.etag, \
                 (SELECT COUNT(*) FROM backup_keys k WHERE k.user_id = v.user_id AND k.version = v.version) \
             FROM backup_versions v WHERE v.user_id = $1 AND v.deleted = 0 AND ($2 < 0 OR v.version = $2) \
             ORDER BY v.version DESC LIMIT 1",
        )
        .bind(user_id)
        .bind(version.unwrap_or(-1))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(BackupVersion {
                version: r.try_get(0)?,
                algorithm: r.try_get(1)?,
                auth_data: r.try_get(2)?,
                etag: r.try_get(3)?,
                count: r.try_get(4)?,
            })
        })
        .transpose()
    }

    /// Replaces a version's `auth_data` (the algorithm must stay the same; the caller checks).
    pub async fn update_backup_version(&self, user_id: &str, version: i64, auth_data: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE backup_versions SET auth_data = $3 WHERE user_id = $1 AND version = $2 AND deleted = 0",
        )
        .bind(user_id)
        .bind(version)
        .bind(auth_data)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a version and its keys.
    pub async fn delete_backup_version(&self, user_id: &str, version: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let done =
            sqlx::query("UPDATE backup_versions SET deleted = 1 WHERE user_id = $1 AND version = $2 AND deleted = 0")
                .bind(user_id)
                .bind(version)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound);
        }
        sqlx::query("DELETE FROM backup_keys WHERE user_id = $1 AND version = $2")
            .bind(user_id)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores keys in a version, each only if it is better than the one stored. Returns the
    /// version's etag and key count afterwards.
    pub async fn put_backup_keys(&self, user_id: &str, version: i64, keys: &[BackupKey]) -> Result<(i64, i64)> {
        let mut tx = self.begin_write().await?;
        let mut changed = false;
        for key in keys {
            let current = sqlx::query(
                "SELECT first_message_index, forwarded_count, is_verified, session_data FROM backup_keys \
                 WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4",
            )
            .bind(user_id)
            .bind(version)
            .bind(&key.room_id)
            .bind(&key.session_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| {
                Ok::<_, Error>(BackupKey {
                    room_id: key.room_id.clone(),
                    session_id: key.session_id.clone(),
                    first_message_index: r.try_get(0)?,
                    forwarded_count: r.try_get(1)?,
                    is_verified: r.try_get::<i64, _>(2)? != 0,
                    session_data: r.try_get(3)?,
                })
            })
            .transpose()?;
            if current.as_ref().is_some_and(|current| !key.better_than(current)) {
                continue;
            }
            sqlx::query(
                "INSERT INTO backup_keys (user_id, version, room_id, session_id, first_message_index, forwarded_count, is_verified, session_data) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET \
                 first_message_index = $5, forwarded_count = $6, is_verified = $7, session_data = $8",
            )
            .bind(user_id)
            .bind(version)
            .bind(&key.room_id)
            .bind(&key.session_id)
            .bind(key.first_message_index)
            .bind(key.forwarded_count)
            .bind(i64::from(key.is_verified))
            .bind(&key.session_data)
            .execute(&mut *tx)
            .await?;
            changed = true;
        }
        let result = etag_and_count(&mut tx, user_id, version, changed).await?;
        tx.commit().await?;
        Ok(result)
    }

    /// Keys of a version: all, a room's, or one session's.
    pub async fn backup_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Vec<BackupKey>> {
        let rows = sqlx::query(
            "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data FROM backup_keys \
             WHERE user_id = $1 AND version = $2 AND ($3 = '' OR room_id = $3) AND ($4 = '' OR session_id = $4) \
             ORDER BY room_id, session_id",
        )
        .bind(user_id)
        .bind(version)
        .bind(room_id.unwrap_or_default())
        .bind(session_id.unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BackupKey {
                    room_id: r.try_get(0)?,
                    session_id: r.try_get(1)?,
                    first_message_index: r.try_get(2)?,
                    forwarded_count: r.try_get(3)?,
                    is_verified: r.try_get::<i64, _>(4)? != 0,
                    session_data: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Deletes keys of a version: all, a room's, or one session's. Returns the etag and count.
    pub async fn delete_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<(i64, i64)> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "DELETE FROM backup_keys \
             WHERE user_id = $1 AND version = $2 AND ($3 = '' OR room_id = $3) AND ($4 = '' OR session_id = $4)",
        )
        .bind(user_id)
        .bind(version)
        .bind(room_id.unwrap_or_default())
        .bind(session_id.unwrap_or_default())
        .execute(&mut *tx)
        .await?;
        let result = etag_and_count(&mut tx, user_id, version, done.rows_affected() > 0).await?;
        tx.commit().await?;
        Ok(result)
    }
}

/// Advances the version's etag if its keys changed; returns the etag and key count.
async fn etag_and_count(tx: &mut WriteTx, user_id: &str, version: i64, changed: bool) -> Result<(i64, i64)> {
    if changed {
        sqlx::query("UPDATE backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2")
            .bind(user_id)
            .bind(version)
            .execute(&mut **tx)
            .await?;
    }
    let row = sqlx::query(
        "SELECT v.etag, (SELECT COUNT(*) FROM backup_keys k WHERE k.user_id = v.user_id AND k.version = v.version) \
         FROM backup_versions v WHERE v.user_id = $1 AND v.version = $2",
    )
    .bind(user_id)
    .bind(version)
    .fetch_one(&mut **tx)
    .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}
