//! The durable outbound federation queue and the record of transactions received.

use sqlx::Row;

use super::{Result, Storage, WriteTx};

/// One thing to send to another server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The destination server.
    pub destination: String,
    /// `pdu` or `edu`.
    pub kind: &'static str,
    /// The PDU or EDU as JSON.
    pub json: String,
}

/// A transaction to send: its ID, the last queue row it holds, and its PDUs and EDUs in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingTransaction {
    /// The transaction ID (the same on every retry).
    pub txn_id: String,
    /// The last outbox row it holds.
    pub last_id: i64,
    /// PDUs, as JSON.
    pub pdus: Vec<String>,
    /// EDUs, as JSON.
    pub edus: Vec<String>,
}

/// The spec's limits on one transaction.
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;
/// The most JSON one transaction carries (receivers limit request bodies; ours takes 16 MiB).
pub const MAX_TRANSACTION_BYTES: usize = 4 * 1024 * 1024;

/// Queues items inside a caller's write transaction, so they are sent if and only if what
/// caused them commits.
pub(crate) async fn enqueue(tx: &mut WriteTx, items: &[Outgoing], now: i64) -> Result<()> {
    for item in items {
        sqlx::query("INSERT INTO federation_outbox (destination, kind, json, created_ts) VALUES ($1, $2, $3, $4)")
            .bind(&item.destination)
            .bind(item.kind)
            .bind(&item.json)
            .bind(now)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

impl Storage {
    /// Queues items for other servers.
    pub async fn enqueue_federation(&self, items: &[Outgoing], now: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        enqueue(&mut tx, items, now).await?;
        tx.commit().await
    }

    /// Destinations with something queued whose retry time has come and that no process holds.
    pub async fn due_destinations(&self, now: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT o.destination FROM federation_outbox o \
             LEFT JOIN federation_destinations d ON d.destination = o.destination \
             WHERE COALESCE(d.retry_at, 0) <= $1 AND COALESCE(d.lease_until, 0) < $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// The earliest time after `now` at which a destination with queued items becomes due: its
    /// retry time, or its lease's end (the holder may have died), whichever is later.
    pub async fn next_due_at(&self, now: i64) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MIN(due) FROM (SELECT CASE WHEN d.retry_at > d.lease_until THEN d.retry_at \
             ELSE d.lease_until + 1 END AS due FROM federation_destinations d \
             WHERE EXISTS (SELECT 1 FROM federation_outbox o WHERE o.destination = d.destination)) AS t \
             WHERE due > $1",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// Takes (or renews) the right to send to `destination` until `until`; `false` when
    /// another process holds it or its retry time has not come.
    pub async fn lease_destination(&self, destination: &str, owner: &str, until: i64, now: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO federation_destinations (destination) VALUES ($1) ON CONFLICT (destination) DO NOTHING",
        )
        .bind(destination)
        .execute(&mut *tx)
        .await?;
        let taken = sqlx::query(
            "UPDATE federation_destinations SET lease_owner = $2, lease_until = $3 \
             WHERE destination = $1 AND retry_at <= $4 AND (lease_until < $4 OR lease_owner = $2)",
        )
        .bind(destination)
        .bind(owner)
        .bind(until)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(taken)
    }

    /// Gives up the right to send to `destination`.
    pub async fn release_destination(&self, destination: &str, owner: &str) -> Result<()> {
        sqlx::query(
            "UPDATE federation_destinations SET lease_owner = NULL, lease_until = 0 \
             WHERE destination = $1 AND lease_owner = $2",
        )
        .bind(destination)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives up every destination `owner` holds (a process shutting down): others take over
    /// at once instead of when the leases run out.
    pub async fn release_all_destinations(&self, owner: &str) -> Result<()> {
        sqlx::query("UPDATE federation_destinations SET lease_owner = NULL, lease_until = 0 WHERE lease_owner = $1")
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The transaction to send to `destination` next: the one in flight again (exactly its
    /// rows), or a new one of the oldest queued items, in queue order, within the spec's
    /// limits and [`MAX_TRANSACTION_BYTES`] (always at least one item).
    pub async fn next_transaction(&self, destination: &str) -> Result<Option<PendingTransaction>> {
        let mut tx = self.begin_write().await?;
        let in_flight: Option<String> =
            sqlx::query("SELECT txn_id FROM federation_destinations WHERE destination = $1")
                .bind(destination)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get::<Option<String>, _>(0))
                .transpose()?
                .flatten();
        let limit = i64::try_from(MAX_PDUS + MAX_EDUS).unwrap_or(150);
        let rows =
            match &in_flight {
                Some(txn_id) => sqlx::query(
                    "SELECT id, kind, json FROM federation_outbox WHERE destination = $1 AND txn_id = $2 ORDER BY id",
                )
                .bind(destination)
                .bind(txn_id)
                .fetch_all(&mut *tx)
                .await?,
                None => {
                    sqlx::query(
                        "SELECT id, kind, json FROM federation_outbox WHERE destination = $1 AND txn_id IS NULL \
                     ORDER BY id LIMIT $2",
                    )
                    .bind(destination)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?
                }
            };
        let (mut pdus, mut edus, mut ids, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), 0usize);
        for row in &rows {
            let (id, kind, json): (i64, String, String) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let full = if kind == "pdu" { pdus.len() >= MAX_PDUS } else { edus.len() >= MAX_EDUS };
            // Queue order is kept: a new transaction ends before the first item that does not fit.
            if in_flight.is_none() && !ids.is_empty() && (full || bytes + json.len() > MAX_TRANSACTION_BYTES) {
                break;
            }
            bytes += json.len();
            if kind == "pdu" {
                pdus.push(json);
            } else {
                edus.push(json);
            }
            ids.push(id);
        }
        let Some(&last_id) = ids.last() else {
            if in_flight.is_some() {
                // Nothing left of it: start anew.
                sqlx::query("UPDATE federation_destinations SET txn_id = NULL WHERE destination = $1")
                    .bind(destination)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            return Ok(None);
        };
        let txn_id = match in_flight {
            Some(txn_id) => txn_id,
            None => {
                // Unique across database restores too: a receiver drops a repeated ID unseen.
                let txn_id = format!("{}-{last_id}-{}", ids[0], uuid::Uuid::new_v4().simple());
                for id in &ids {
                    sqlx::query("UPDATE federation_outbox SET txn_id = $2 WHERE id = $1")
                        .bind(id)
                        .bind(&txn_id)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("UPDATE federation_destinations SET txn_id = $2, txn_last_id = $3 WHERE destination = $1")
                    .bind(destination)
                    .bind(&txn_id)
                    .bind(last_id)
                    .execute(&mut *tx)
                    .await?;
                txn_id
            }
        };
        tx.commit().await?;
        Ok(Some(PendingTransaction { txn_id, last_id, pdus, edus }))
    }

    /// The destination acknowledged transaction `txn_id`: its rows go. Only the lease holder
    /// may say so (a process that lost its lease must not clear another's transaction).
    pub async fn transaction_sent(&self, destination: &str, owner: &str, txn_id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let ours = sqlx::query(
            "UPDATE federation_destinations SET txn_id = NULL, txn_last_id = NULL, failures = 0, retry_at = 0 \
             WHERE destination = $1 AND lease_owner = $2 AND txn_id = $3",
        )
        .bind(destination)
        .bind(owner)
        .bind(txn_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if ours {
            sqlx::query("DELETE FROM federation_outbox WHERE destination = $1 AND txn_id = $2")
                .bind(destination)
                .bind(txn_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Sending failed: the destination waits until `retry_at`; returns how many times in a row
    /// it has failed.
    pub async fn transaction_failed(&self, destination: &str, owner: &str, retry_at: i64) -> Result<i64> {
        let row = sqlx::query(
            "UPDATE federation_destinations SET failures = failures + 1, retry_at = $3, lease_owner = NULL, \
             lease_until = 0 WHERE destination = $1 AND lease_owner = $2 RETURNING failures",
        )
        .bind(destination)
        .bind(owner)
        .bind(retry_at)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?.unwrap_or(0))
    }

    /// How many times in a row sending to `destination` has failed.
    pub async fn destination_failures(&self, destination: &str) -> Result<i64> {
        let row = sqlx::query("SELECT failures FROM federation_destinations WHERE destination = $1")
            .bind(destination)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?.unwrap_or(0))
    }

    /// We heard from `destination`: it is up, so retry at once. `true` if it was backing off.
    /// Runs on every authenticated federation request: a read, and a write only when needed.
    pub async fn destination_is_back(&self, destination: &str) -> Result<bool> {
        if self.destination_failures(destination).await? == 0 {
            return Ok(false);
        }
        let changed = sqlx::query(
            "UPDATE federation_destinations SET failures = 0, retry_at = 0 WHERE destination = $1 AND failures > 0",
        )
        .bind(destination)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    /// Our answer to a transaction received before, if any.
    pub async fn received_transaction(&self, origin: &str, txn_id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT response FROM federation_received_txns WHERE origin = $1 AND txn_id = $2")
            .bind(origin)
            .bind(txn_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Records a transaction as received, with our answer.
    pub async fn record_received_transaction(
        &self,
        origin: &str,
        txn_id: &str,
        response: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO federation_received_txns (origin, txn_id, response, received_ts) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (origin, txn_id) DO NOTHING",
        )
        .bind(origin)
        .bind(txn_id)
        .bind(response)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
