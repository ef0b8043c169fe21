//! To-device messages: stored per recipient device until a later sync acknowledges them.

use sqlx::Row;

use super::streams::next_position;
use super::{Error, Result, Storage, on_conflict};

/// A to-device message waiting for its device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToDeviceMessage {
    /// Its stream position.
    pub stream_id: i64,
    /// Who sent it.
    pub sender: String,
    /// The event type.
    pub event_type: String,
    /// The content as JSON.
    pub content: String,
}

/// One recipient of a `sendToDevice` request: a device, or `*` for all of the user's devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// The user.
    pub user_id: String,
    /// The device ID, or `*`.
    pub device_id: String,
    /// The content as JSON.
    pub content: String,
}

impl Storage {
    /// Queues to-device messages for local devices, and `remote` (`m.direct_to_device` EDUs) for
    /// other servers, once per `(sender, sender device, txn_id)`.
    /// Returns the messages' stream position, or `None` when the transaction was carried out
    /// before. Unknown users and devices are skipped.
    pub async fn send_to_device(
        &self,
        (sender, sender_device, txn_id): (&str, &str, &str),
        event_type: &str,
        recipients: &[Recipient],
        remote: &[super::Outgoing],
        now: i64,
    ) -> Result<Option<i64>> {
        let mut tx = self.begin_write().await?;
        let first =
            sqlx::query("INSERT INTO to_device_txns (user_id, device_id, txn_id, created_ts) VALUES ($1, $2, $3, $4)")
                .bind(sender)
                .bind(sender_device)
                .bind(txn_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(on_conflict("to_device_txns"));
        match first {
            Ok(_) => {}
            Err(Error::Conflict { .. }) => return Ok(None),
            Err(other) => return Err(other),
        }
        let position = next_position(&mut tx).await?;
        // Messages for other servers' users leave with the same transaction; queued after the
        // stream position is taken, whose row lock orders writers, so queue order is commit order.
        super::federation_queue::enqueue(&mut tx, remote, now).await?;
        for recipient in recipients {
            let devices: Vec<String> = if recipient.device_id == "*" {
                sqlx::query("SELECT device_id FROM devices WHERE user_id = $1")
                    .bind(&recipient.user_id)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?
            } else {
                sqlx::query("SELECT device_id FROM devices WHERE user_id = $1 AND device_id = $2")
                    .bind(&recipient.user_id)
                    .bind(&recipient.device_id)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?
            };
            for device_id in devices {
                sqlx::query(
                    "INSERT INTO to_device_messages (user_id, device_id, stream_id, sender, event_type, content) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (user_id, device_id, stream_id) DO UPDATE SET content = $6",
                )
                .bind(&recipient.user_id)
                .bind(&device_id)
                .bind(position)
                .bind(sender)
                .bind(event_type)
                .bind(&recipient.content)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(Some(position))
    }

    /// A device's messages up to position `until`, oldest first, at most `limit`.
    pub async fn to_device_messages(
        &self,
        user_id: &str,
        device_id: &str,
        until: i64,
        limit: i64,
    ) -> Result<Vec<ToDeviceMessage>> {
        let rows = sqlx::query(
            "SELECT stream_id, sender, event_type, content FROM to_device_messages \
             WHERE user_id = $1 AND device_id = $2 AND stream_id <= $3 ORDER BY stream_id LIMIT $4",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(until)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ToDeviceMessage {
                    stream_id: r.try_get(0)?,
                    sender: r.try_get(1)?,
                    event_type: r.try_get(2)?,
                    content: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Deletes a device's messages up to position `up_to`: the client has them.
    pub async fn acknowledge_to_device(&self, user_id: &str, device_id: &str, up_to: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = $2 AND stream_id <= $3")
            .bind(user_id)
            .bind(device_id)
            .bind(up_to)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
