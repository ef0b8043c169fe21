//! The shared stream position, and the non-event streams that use it: account data, receipts,
//! typing and presence.

use sqlx::Row;

use super::{Result, Storage};

/// SQL for the users who share a joined room with user `$1` (`$1` included), as a column
/// `state_key`: presence, device lists and the like go to them.
macro_rules! room_mates_of_1 {
    () => {
        "SELECT other.state_key FROM current_state mine \
         JOIN current_state other ON other.room_id = mine.room_id \
         WHERE mine.event_type = 'm.room.member' AND mine.state_key = $1 AND mine.membership = 'join' \
         AND other.event_type = 'm.room.member' AND other.membership = 'join'"
    };
}
pub(crate) use room_mates_of_1;

/// Takes the next stream position inside a write transaction. The `stream_head` row stays
/// locked until the transaction ends, so positions commit in order.
pub(crate) async fn next_position(tx: &mut super::WriteTx) -> Result<i64> {
    let row = sqlx::query("UPDATE stream_head SET position = position + 1 WHERE id = 0 RETURNING position")
        .fetch_one(&mut **tx)
        .await?;
    Ok(row.try_get(0)?)
}

/// A receipt as sync shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The receipt type, e.g. `m.read`.
    pub receipt_type: String,
    /// The reader.
    pub user_id: String,
    /// The thread, `main`, or empty for unthreaded.
    pub thread_id: String,
    /// The event read up to.
    pub event_id: String,
    /// When.
    pub ts: i64,
}

/// Presence of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presence {
    /// The user.
    pub user_id: String,
    /// `online`, `offline` or `unavailable`.
    pub presence: String,
    /// The status message.
    pub status_msg: Option<String>,
    /// When the user was last active, in milliseconds since the epoch.
    pub last_active_ts: i64,
    /// Position of the last change.
    pub stream_id: i64,
}

impl Storage {
    /// Sets account data (`room_id` empty for global data) and returns its stream position.
    pub async fn set_account_data(&self, user_id: &str, room_id: &str, data_type: &str, content: &str) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let position = next_position(&mut tx).await?;
        sqlx::query(
            "INSERT INTO account_data (user_id, room_id, data_type, content, stream_id) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (user_id, room_id, data_type) DO UPDATE SET content = $4, stream_id = $5",
        )
        .bind(user_id)
        .bind(room_id)
        .bind(data_type)
        .bind(content)
        .bind(position)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(position)
    }

    /// One piece of account data.
    pub async fn account_data(&self, user_id: &str, room_id: &str, data_type: &str) -> Result<Option<String>> {
        let row =
            sqlx::query("SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND data_type = $3")
                .bind(user_id)
                .bind(room_id)
                .bind(data_type)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| Ok(r.try_get(0)?)).transpose()
    }

    /// Account data changed after `after`, as `(room_id, type, content)`.
    pub async fn account_data_since(
        &self,
        user_id: &str,
        after: i64,
        until: i64,
    ) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query(
            "SELECT room_id, data_type, content FROM account_data \
             WHERE user_id = $1 AND stream_id > $2 AND stream_id <= $3 ORDER BY room_id, data_type",
        )
        .bind(user_id)
        .bind(after)
        .bind(until)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()
    }

    /// Records a receipt; an older event than the stored one is still recorded (clients decide).
    pub async fn set_receipt(&self, room_id: &str, receipt: &Receipt) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let position = next_position(&mut tx).await?;
        sqlx::query(
            "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts, stream_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET event_id = $5, ts = $6, stream_id = $7",
        )
        .bind(room_id)
        .bind(&receipt.receipt_type)
        .bind(&receipt.user_id)
        .bind(&receipt.thread_id)
        .bind(&receipt.event_id)
        .bind(receipt.ts)
        .bind(position)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(position)
    }

    /// Receipts in a room changed in `(after, until]` (all of them when `after` is 0).
    pub async fn receipts_since(&self, room_id: &str, after: i64, until: i64) -> Result<Vec<Receipt>> {
        let rows = sqlx::query(
            "SELECT receipt_type, user_id, thread_id, event_id, ts FROM receipts \
             WHERE room_id = $1 AND stream_id > $2 AND stream_id <= $3 ORDER BY stream_id",
        )
        .bind(room_id)
        .bind(after)
        .bind(until)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Receipt {
                    receipt_type: r.try_get(0)?,
                    user_id: r.try_get(1)?,
                    thread_id: r.try_get(2)?,
                    event_id: r.try_get(3)?,
                    ts: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Starts (with an expiry) or stops (`None`) a user's typing notice.
    pub async fn set_typing(&self, room_id: &str, user_id: &str, expires_ts: Option<i64>) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let position = next_position(&mut tx).await?;
        sqlx::query(
            "INSERT INTO typing (room_id, user_id, expires_ts, stream_id) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (room_id, user_id) DO UPDATE SET expires_ts = $3, stream_id = $4",
        )
        .bind(room_id)
        .bind(user_id)
        .bind(expires_ts.unwrap_or(0))
        .bind(position)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(position)
    }

    /// Ends a typing notice whose time ran out, unless it was renewed or stopped meanwhile;
    /// returns the new stream position if it ended one.
    pub async fn expire_typing(&self, room_id: &str, user_id: &str, expires_ts: i64) -> Result<Option<i64>> {
        let mut tx = self.begin_write().await?;
        let still = sqlx::query("SELECT 1 FROM typing WHERE room_id = $1 AND user_id = $2 AND expires_ts = $3")
            .bind(room_id)
            .bind(user_id)
            .bind(expires_ts)
            .fetch_optional(&mut *tx)
            .await?;
        if still.is_none() {
            return Ok(None);
        }
        let position = next_position(&mut tx).await?;
        sqlx::query("UPDATE typing SET expires_ts = 0, stream_id = $1 WHERE room_id = $2 AND user_id = $3")
            .bind(position)
            .bind(room_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(position))
    }

    /// Users typing in a room at `now`.
    pub async fn typing_users(&self, room_id: &str, now: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT user_id FROM typing WHERE room_id = $1 AND expires_ts > $2 ORDER BY user_id")
            .bind(room_id)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Sets a user's presence.
    pub async fn set_presence(&self, user_id: &str, presence: &str, status_msg: Option<&str>, now: i64) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let position = next_position(&mut tx).await?;
        sqlx::query(
            "INSERT INTO presence (user_id, presence, status_msg, last_active_ts, stream_id) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (user_id) DO UPDATE SET presence = $2, status_msg = $3, last_active_ts = $4, stream_id = $5",
        )
        .bind(user_id)
        .bind(presence)
        .bind(status_msg)
        .bind(now)
        .bind(position)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(position)
    }

    /// A user's presence, if ever set.
    pub async fn presence(&self, user_id: &str) -> Result<Option<Presence>> {
        let row = sqlx::query(
            "SELECT user_id, presence, status_msg, last_active_ts, stream_id FROM presence WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(presence_row).transpose()
    }

    /// Users sharing a joined room with `user_id` (including themselves).
    pub async fn users_sharing_rooms(&self, user_id: &str) -> Result<Vec<String>> {
        let rows =
            sqlx::query(concat!("SELECT DISTINCT state_key FROM (", room_mates_of_1!(), ") mates ORDER BY state_key"))
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Presence changes in `(after, until]` of users who share a joined room with `user_id`
    /// (the user included).
    pub async fn presence_changes(&self, user_id: &str, after: i64, until: i64) -> Result<Vec<Presence>> {
        let rows = sqlx::query(concat!(
            "SELECT user_id, presence, status_msg, last_active_ts, stream_id FROM presence \
             WHERE stream_id > $2 AND stream_id <= $3 AND user_id IN (",
            room_mates_of_1!(),
            ") ORDER BY user_id"
        ))
        .bind(user_id)
        .bind(after)
        .bind(until)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(presence_row).collect()
    }

    /// Rooms with events, typing or receipt changes in `(after, until]`.
    pub async fn rooms_changed(&self, after: i64, until: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT room_id FROM events WHERE stream_ordering > $1 AND stream_ordering <= $2 \
             UNION SELECT room_id FROM typing WHERE stream_id > $1 AND stream_id <= $2 \
             UNION SELECT room_id FROM receipts WHERE stream_id > $1 AND stream_id <= $2",
        )
        .bind(after)
        .bind(until)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Of the rooms `user_id` is joined to, those with typing changes (`typing`) and those with
    /// receipts (`receipts`) in `(after, until]`, as `(kind, room ID)`.
    pub async fn ephemeral_rooms(&self, user_id: &str, after: i64, until: i64) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT 'typing', room_id FROM typing WHERE stream_id > $2 AND stream_id <= $3 AND room_id IN ( \
                 SELECT room_id FROM current_state \
                 WHERE event_type = 'm.room.member' AND state_key = $1 AND membership = 'join') \
             UNION SELECT 'receipts', room_id FROM receipts WHERE stream_id > $2 AND stream_id <= $3 AND room_id IN ( \
                 SELECT room_id FROM current_state \
                 WHERE event_type = 'm.room.member' AND state_key = $1 AND membership = 'join')",
        )
        .bind(user_id)
        .bind(after)
        .bind(until)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }
}

fn presence_row(r: &sqlx::any::AnyRow) -> Result<Presence> {
    Ok(Presence {
        user_id: r.try_get(0)?,
        presence: r.try_get(1)?,
        status_msg: r.try_get(2)?,
        last_active_ts: r.try_get(3)?,
        stream_id: r.try_get(4)?,
    })
}
