//! Users, devices and access tokens.

use sqlx::Row;

use super::{Error, Result, Storage, on_conflict};

/// A device of a user, as `GET /devices` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The device ID.
    pub device_id: String,
    /// The display name, if one was set.
    pub display_name: Option<String>,
    /// The IP address the device was last seen at.
    pub last_seen_ip: Option<String>,
    /// When the device was last seen, in milliseconds since the epoch.
    pub last_seen_ts: Option<i64>,
}

/// Who an access token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenOwner {
    /// The user ID.
    pub user_id: String,
    /// The device the token was issued to.
    pub device_id: String,
    /// When the device was last seen (to throttle updates of it).
    pub last_seen_ts: Option<i64>,
}

/// A login to record: a device (created unless it exists) and its new access token.
#[derive(Clone, Debug)]
pub struct NewLogin<'a> {
    /// The device to log in on.
    pub device_id: &'a str,
    /// Display name for the device, used only when the device is new.
    pub initial_display_name: Option<&'a str>,
    /// SHA-256 of the new access token.
    pub token_hash: &'a str,
    /// The client's IP address.
    pub ip: Option<&'a str>,
    /// Now, in milliseconds since the epoch.
    pub now: i64,
}

impl Storage {
    /// Creates a user and, unless `login` is `None`, its first device and access token, in one
    /// transaction. Fails with [`Error::Conflict`] when the user ID is taken.
    pub async fn create_user(
        &self,
        user_id: &str,
        password_hash: Option<&str>,
        now: i64,
        login: Option<NewLogin<'_>>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO users (user_id, password_hash, created_ts) VALUES ($1, $2, $3)")
            .bind(user_id)
            .bind(password_hash)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(on_conflict("users.user_id"))?;
        if let Some(login) = login {
            record_login(&mut tx, user_id, &login).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Whether a user ID is registered.
    pub async fn user_exists(&self, user_id: &str) -> Result<bool> {
        let row =
            sqlx::query("SELECT 1 FROM users WHERE user_id = $1").bind(user_id).fetch_optional(&self.pool).await?;
        Ok(row.is_some())
    }

    /// The stored password hash of a user: `None` if the user does not exist,
    /// `Some(None)` if the account has no password.
    pub async fn password_hash(&self, user_id: &str) -> Result<Option<Option<String>>> {
        let row = sqlx::query("SELECT password_hash FROM users WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get::<Option<String>, _>(0)).transpose().map_err(Into::into)
    }

    /// Replaces a user's password hash and, when `keep_device` is given, logs out every other
    /// device of the user (deleting them, as the spec's `logout_devices` asks), atomically.
    /// Returns the position of the device list change when devices were deleted.
    pub async fn set_password_hash(
        &self,
        user_id: &str,
        password_hash: &str,
        logout_others: Option<&str>,
    ) -> Result<Option<i64>> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE users SET password_hash = $1 WHERE user_id = $2")
            .bind(password_hash)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound);
        }
        let mut position = None;
        if let Some(keep) = logout_others {
            let others = sqlx::query("SELECT device_id FROM devices WHERE user_id = $1 AND device_id <> $2")
                .bind(user_id)
                .bind(keep)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<Vec<String>, _>>()?;
            sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id <> $2")
                .bind(user_id)
                .bind(keep)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM devices WHERE user_id = $1 AND device_id <> $2")
                .bind(user_id)
                .bind(keep)
                .execute(&mut *tx)
                .await?;
            for device_id in &others {
                super::keys::delete_device_data(&mut tx, user_id, device_id).await?;
            }
            if !others.is_empty() {
                position = Some(super::keys::mark_device_list_change(&mut tx, user_id).await?);
            }
        }
        tx.commit().await?;
        Ok(position)
    }

    /// Records a login: creates the device if it is new and issues the token, replacing any
    /// token the device had before (the spec lets a re-used device ID invalidate old tokens).
    pub async fn login(&self, user_id: &str, login: NewLogin<'_>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        record_login(&mut tx, user_id, &login).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Resolves an access token hash to its owner.
    pub async fn token_owner(&self, token_hash: &str) -> Result<Option<TokenOwner>> {
        let row = sqlx::query(
            "SELECT t.user_id, t.device_id, d.last_seen_ts FROM access_tokens t \
             JOIN devices d ON d.user_id = t.user_id AND d.device_id = t.device_id \
             WHERE t.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(TokenOwner { user_id: r.try_get(0)?, device_id: r.try_get(1)?, last_seen_ts: r.try_get(2)? }))
    }

    /// Notes that a device was seen now from `ip`.
    pub async fn touch_device(&self, user_id: &str, device_id: &str, ip: Option<&str>, now: i64) -> Result<()> {
        sqlx::query("UPDATE devices SET last_seen_ip = $1, last_seen_ts = $2 WHERE user_id = $3 AND device_id = $4")
            .bind(ip)
            .bind(now)
            .bind(user_id)
            .bind(device_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// All devices of a user, ordered by device ID.
    pub async fn devices(&self, user_id: &str) -> Result<Vec<Device>> {
        let rows = sqlx::query(
            "SELECT device_id, display_name, last_seen_ip, last_seen_ts FROM devices \
             WHERE user_id = $1 ORDER BY device_id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(device_from_row).collect()
    }

    /// One device of a user.
    pub async fn device(&self, user_id: &str, device_id: &str) -> Result<Option<Device>> {
        let row = sqlx::query(
            "SELECT device_id, display_name, last_seen_ip, last_seen_ts FROM devices \
             WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// Sets a device's display name; [`Error::NotFound`] if the user has no such device.
    pub async fn rename_device(&self, user_id: &str, device_id: &str, display_name: &str) -> Result<()> {
        let done = sqlx::query("UPDATE devices SET display_name = $1 WHERE user_id = $2 AND device_id = $3")
            .bind(display_name)
            .bind(user_id)
            .bind(device_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound);
        }
        Ok(())
    }

    /// Deletes devices of a user together with their access tokens, keys and pending to-device
    /// messages. Unknown IDs are skipped. Returns the position of the device list change.
    pub async fn delete_devices(&self, user_id: &str, device_ids: &[String]) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        for device_id in device_ids {
            // Tokens go first and explicitly: the foreign key cascade would do it too, but
            // correctness must not depend on a per-connection SQLite pragma.
            sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM devices WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .execute(&mut *tx)
                .await?;
            super::keys::delete_device_data(&mut tx, user_id, device_id).await?;
        }
        let position = super::keys::mark_device_list_change(&mut tx, user_id).await?;
        tx.commit().await?;
        Ok(position)
    }

    /// Deletes every device of a user as [`Self::delete_devices`] does.
    pub async fn delete_all_devices(&self, user_id: &str) -> Result<i64> {
        let devices = sqlx::query("SELECT device_id FROM devices WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<Vec<String>, _>>()?;
        self.delete_devices(user_id, &devices).await
    }
}

async fn record_login(tx: &mut super::WriteTx, user_id: &str, login: &NewLogin<'_>) -> Result<()> {
    // An existing device keeps its display name; only its tokens are replaced.
    sqlx::query(
        "INSERT INTO devices (user_id, device_id, display_name, last_seen_ip, last_seen_ts, created_ts) \
         VALUES ($1, $2, $3, $4, $5, $5) \
         ON CONFLICT (user_id, device_id) DO UPDATE SET last_seen_ip = $4, last_seen_ts = $5",
    )
    .bind(user_id)
    .bind(login.device_id)
    .bind(login.initial_display_name)
    .bind(login.ip)
    .bind(login.now)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2")
        .bind(user_id)
        .bind(login.device_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts) VALUES ($1, $2, $3, $4)")
        .bind(login.token_hash)
        .bind(user_id)
        .bind(login.device_id)
        .bind(login.now)
        .execute(&mut **tx)
        .await
        .map_err(on_conflict("access_tokens.token_hash"))?;
    Ok(())
}

fn device_from_row(r: &sqlx::any::AnyRow) -> Result<Device> {
    Ok(Device {
        device_id: r.try_get(0)?,
        display_name: r.try_get(1)?,
        last_seen_ip: r.try_get(2)?,
        last_seen_ts: r.try_get(3)?,
    })
}

impl Storage {
    /// Every local user ID, in order.
    pub async fn all_user_ids(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT user_id FROM users ORDER BY user_id").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// The server notices room of a user.
    pub async fn server_notice_room(&self, user_id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT room_id FROM server_notice_rooms WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(r.try_get(0)?)).transpose()
    }

    /// Remembers a user's server notices room.
    pub async fn set_server_notice_room(&self, user_id: &str, room_id: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO server_notice_rooms (user_id, room_id) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO UPDATE SET room_id = $2",
        )
        .bind(user_id)
        .bind(room_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
