//! Rooms and their events: the append transaction, state groups, current state, timeline reads.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Storage, on_conflict};

mod federated;

/// A new group is a full snapshot once a delta chain reaches this length, bounding the work of
/// reading the state at any event while keeping storage proportional to state changes.
const MAX_STATE_CHAIN: i64 = 64;

/// `(event type, state key)`.
pub type StateKey = (String, String);

/// A map from `(event type, state key)` to event ID.
pub type StateIds = BTreeMap<StateKey, String>;

/// An event as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// The position in this server's event stream.
    pub stream_ordering: i64,
    /// The event ID.
    pub event_id: String,
    /// The room.
    pub room_id: String,
    /// The state group holding the room state after this event.
    pub state_group: i64,
    /// The PDU (redacted if the event was redacted).
    pub json: String,
}

/// A room as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    /// The room version.
    pub version: String,
    /// The state group of the current state.
    pub current_group: i64,
    /// Whether the room is in the public directory.
    pub published: bool,
    /// How many redactions were applied in the room: with `current_group`, what a cached copy
    /// of the current state must match (a redaction rewrites a state event in place).
    pub redactions: i64,
}

/// The fields of a new event the storage needs besides its JSON.
#[derive(Clone, Debug)]
pub struct NewEvent<'a> {
    /// Event ID.
    pub event_id: &'a str,
    /// Room ID.
    pub room_id: &'a str,
    /// Event type.
    pub event_type: &'a str,
    /// State key, for state events.
    pub state_key: Option<&'a str>,
    /// Sender.
    pub sender: &'a str,
    /// `origin_server_ts`.
    pub origin_server_ts: i64,
    /// DAG depth.
    pub depth: i64,
    /// For `m.room.member`: the membership.
    pub membership: Option<&'a str>,
    /// The PDU as canonical JSON.
    pub json: &'a str,
}

/// A client transaction to remember with the event it produced.
#[derive(Clone, Copy, Debug)]
pub struct TxnKey<'a> {
    /// The user.
    pub user_id: &'a str,
    /// The device.
    pub device_id: &'a str,
    /// The endpoint, e.g. `send` or `redact`.
    pub endpoint: &'a str,
    /// The client's transaction ID.
    pub txn_id: &'a str,
}

fn stored_event(row: &AnyRow) -> Result<StoredEvent> {
    Ok(StoredEvent {
        stream_ordering: row.try_get(0)?,
        event_id: row.try_get(1)?,
        room_id: row.try_get(2)?,
        state_group: row.try_get(3)?,
        json: row.try_get(4)?,
    })
}

/// A write transaction on rooms, serialized with every other room write from its first read
/// (the `stream_head` row lock on PostgreSQL, the write lock on SQLite): what it reads is what it
/// builds on, and positions commit in order, so a sync that has seen position N has seen every
/// change up to N.
pub struct RoomWrite {
    tx: super::WriteTx,
    /// The stream head as read under the lock, and the last position handed out since: one
    /// write of `stream_head` at commit instead of one per event.
    head: i64,
    last: i64,
    /// Event and transaction rows not inserted yet: they go in multi-row inserts before the
    /// next read of events and at commit, instead of one statement each.
    pending_events: Vec<EventRow>,
    pending_txns: Vec<TxnRow>,
    /// The lowest (outlier) stream ordering handed out, once read.
    lowest: Option<i64>,
}

/// An `events` row waiting for [`RoomWrite::flush`].
struct EventRow {
    stream_ordering: i64,
    event_id: String,
    room_id: String,
    event_type: String,
    state_key: Option<String>,
    sender: String,
    origin_server_ts: i64,
    depth: i64,
    state_group: i64,
    state_before_group: Option<i64>,
    json: String,
}

/// An `event_txns` row waiting for [`RoomWrite::flush`].
struct TxnRow {
    user_id: String,
    device_id: String,
    endpoint: String,
    txn_id: String,
    event_id: String,
    created_ts: i64,
}

/// Rows per multi-row insert: well under both engines' limits on bound parameters.
const ROWS_PER_INSERT: usize = 100;

impl Storage {
    /// Starts a room write transaction.
    pub async fn begin_room_write(&self) -> Result<RoomWrite> {
        let mut tx = self.begin_write().await?;
        let lock = match self.backend {
            // Lock the stream row before reading anything: appends read the current state and
            // the transaction IDs they then build on, so they must not interleave. (SQLite's
            // `BEGIN IMMEDIATE` already gives this.)
            super::Backend::Postgres => "SELECT position FROM stream_head WHERE id = 0 FOR UPDATE",
            super::Backend::Sqlite => "SELECT position FROM stream_head WHERE id = 0",
        };
        let head: i64 = sqlx::query(lock).fetch_one(&mut *tx).await?.try_get(0)?;
        Ok(RoomWrite { tx, head, last: head, pending_events: Vec::new(), pending_txns: Vec::new(), lowest: None })
    }

    /// A room, if this server knows it.
    pub async fn room(&self, room_id: &str) -> Result<Option<Room>> {
        room_row(&self.pool, room_id).await
    }

    /// One event by ID.
    pub async fn event(&self, event_id: &str) -> Result<Option<StoredEvent>> {
        event_row(&self.pool, event_id).await
    }

    /// Events by ID, in no particular order; unknown IDs are skipped.
    pub async fn events(&self, event_ids: &[String]) -> Result<Vec<StoredEvent>> {
        let mut events = Vec::with_capacity(event_ids.len());
        for chunk in event_ids.chunks(EVENTS_PER_QUERY) {
            events.extend(events_by_id(&self.pool, chunk).await?);
        }
        Ok(events)
    }

    /// The current state of a room as event IDs.
    pub async fn current_state_ids(&self, room_id: &str) -> Result<StateIds> {
        current_state_rows(&self.pool, room_id).await
    }

    /// One current state event.
    pub async fn current_state_event(
        &self,
        room_id: &str,
        event_type: &str,
        state_key: &str,
    ) -> Result<Option<StoredEvent>> {
        let row = sqlx::query(
            "SELECT e.stream_ordering, e.event_id, e.room_id, e.state_group, e.json FROM current_state c \
             JOIN events e ON e.event_id = c.event_id \
             WHERE c.room_id = $1 AND c.event_type = $2 AND c.state_key = $3",
        )
        .bind(room_id)
        .bind(event_type)
        .bind(state_key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(stored_event).transpose()
    }

    /// A user's current membership in a room, with the membership event's ID.
    pub async fn membership(&self, room_id: &str, user_id: &str) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT membership, event_id FROM current_state \
             WHERE room_id = $1 AND event_type = 'm.room.member' AND state_key = $2",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get::<Option<String>, _>(0)?.unwrap_or_default(), r.try_get(1)?))).transpose()
    }

    /// Rooms where the user's current membership is `membership`, with the membership event's
    /// stream position.
    pub async fn rooms_with_membership(&self, user_id: &str, membership: &str) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT c.room_id, e.stream_ordering FROM current_state c JOIN events e ON e.event_id = c.event_id \
             WHERE c.event_type = 'm.room.member' AND c.state_key = $1 AND c.membership = $2 ORDER BY c.room_id",
        )
        .bind(user_id)
        .bind(membership)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Every room the user has a membership event in, with that membership and the event's
    /// stream position.
    pub async fn memberships_of(&self, user_id: &str) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT c.room_id, c.membership, e.stream_ordering FROM current_state c \
             JOIN events e ON e.event_id = c.event_id \
             WHERE c.event_type = 'm.room.member' AND c.state_key = $1 ORDER BY c.room_id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get::<Option<String>, _>(1)?.unwrap_or_default(), r.try_get(2)?)))
            .collect()
    }

    /// Members of a room with their current membership.
    pub async fn members(&self, room_id: &str) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT state_key, membership FROM current_state \
             WHERE room_id = $1 AND event_type = 'm.room.member' ORDER BY state_key",
        )
        .bind(room_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get::<Option<String>, _>(1)?.unwrap_or_default()))).collect()
    }

    /// A user's membership events in a room and every `m.room.history_visibility` event it
    /// ever had, oldest first: what deciding the user's view of its history needs, in one query.
    pub async fn visibility_events(&self, room_id: &str, user_id: &str) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT stream_ordering, event_id, room_id, state_group, json FROM events \
             WHERE room_id = $1 AND ((event_type = 'm.room.member' AND state_key = $2) \
                 OR event_type = 'm.room.history_visibility') ORDER BY stream_ordering",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_event).collect()
    }

    /// A user's membership events in a room, oldest first.
    pub async fn member_events(&self, room_id: &str, user_id: &str) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT stream_ordering, event_id, room_id, state_group, json FROM events \
             WHERE room_id = $1 AND event_type = 'm.room.member' AND state_key = $2 ORDER BY stream_ordering",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_event).collect()
    }

    /// The state of a room as it was in `group`: the group's entries over those of its chain.
    pub async fn state_at_group(&self, group: i64) -> Result<StateIds> {
        state_of_group(&self.pool, group).await
    }

    /// The latest committed stream position.
    pub async fn max_stream_ordering(&self) -> Result<i64> {
        let row = sqlx::query("SELECT position FROM stream_head WHERE id = 0").fetch_one(&self.pool).await?;
        Ok(row.try_get(0)?)
    }

    /// Events of a room with `after < stream_ordering <= until`, oldest first, at most `limit`
    /// of them: the newest ones when `newest` is set, else the oldest.
    pub async fn room_events_between(
        &self,
        room_id: &str,
        after: i64,
        until: i64,
        limit: i64,
        newest: bool,
    ) -> Result<Vec<StoredEvent>> {
        let sql = if newest {
            "SELECT stream_ordering, event_id, room_id, state_group, json FROM events \
             WHERE room_id = $1 AND stream_ordering > $2 AND stream_ordering <= $3 \
             ORDER BY stream_ordering DESC LIMIT $4"
        } else {
            "SELECT stream_ordering, event_id, room_id, state_group, json FROM events \
             WHERE room_id = $1 AND stream_ordering > $2 AND stream_ordering <= $3 \
             ORDER BY stream_ordering ASC LIMIT $4"
        };
        let rows = sqlx::query(sql).bind(room_id).bind(after).bind(until).bind(limit).fetch_all(&self.pool).await?;
        let mut events = rows.iter().map(stored_event).collect::<Result<Vec<_>>>()?;
        if newest {
            events.reverse();
        }
        Ok(events)
    }

    /// The newest events of a room after the event of the user's latest read receipt (public
    /// or private; all events without one) up to `until`, at most `limit`, oldest first.
    pub async fn unread_events(
        &self,
        room_id: &str,
        user_id: &str,
        until: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT stream_ordering, event_id, room_id, state_group, json FROM events \
             WHERE room_id = $1 AND stream_ordering <= $3 AND stream_ordering > ( \
                 SELECT COALESCE(MAX(e.stream_ordering), 0) FROM receipts r JOIN events e ON e.event_id = r.event_id \
                 WHERE r.room_id = $1 AND r.user_id = $2 AND r.receipt_type IN ('m.read', 'm.read.private')) \
             ORDER BY stream_ordering DESC LIMIT $4",
        )
        .bind(room_id)
        .bind(user_id)
        .bind(until)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut events = rows.iter().map(stored_event).collect::<Result<Vec<_>>>()?;
        events.reverse();
        Ok(events)
    }

    /// Member events in `(after, until]` of the rooms `user_id` has a membership in, oldest first:
    /// `(room, target user, PDU JSON)`.
    pub async fn membership_events_in_my_rooms(
        &self,
        user_id: &str,
        after: i64,
        until: i64,
    ) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query(
            "SELECT room_id, state_key, json FROM events \
             WHERE event_type = 'm.room.member' AND stream_ordering > $2 AND stream_ordering <= $3 AND room_id IN ( \
                 SELECT room_id FROM current_state WHERE event_type = 'm.room.member' AND state_key = $1) \
             ORDER BY stream_ordering",
        )
        .bind(user_id)
        .bind(after)
        .bind(until)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()
    }

    /// Marks a room forgotten by a user (or remembered again).
    pub async fn set_forgotten(&self, user_id: &str, room_id: &str, forgotten: bool) -> Result<()> {
        let sql = if forgotten {
            "INSERT INTO forgotten_rooms (user_id, room_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM forgotten_rooms WHERE user_id = $1 AND room_id = $2"
        };
        sqlx::query(sql).bind(user_id).bind(room_id).execute(&self.pool).await?;
        Ok(())
    }

    /// Rooms the user has forgotten.
    pub async fn forgotten_rooms(&self, user_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT room_id FROM forgotten_rooms WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }
}

impl RoomWrite {
    /// A room's version, current state group and forward extremities (with their depths),
    /// read under the write lock in one query.
    pub async fn room_head(&mut self, room_id: &str) -> Result<Option<(Room, Vec<(String, i64)>)>> {
        self.flush().await?;
        let rows = sqlx::query(
            "SELECT r.room_version, r.current_group, r.published, r.redactions, f.event_id, e.depth FROM rooms r \
             LEFT JOIN forward_extremities f ON f.room_id = r.room_id \
             LEFT JOIN events e ON e.event_id = f.event_id \
             WHERE r.room_id = $1 ORDER BY f.event_id",
        )
        .bind(room_id)
        .fetch_all(&mut *self.tx)
        .await?;
        let Some(first) = rows.first() else { return Ok(None) };
        let room = Room {
            version: first.try_get(0)?,
            current_group: first.try_get(1)?,
            published: first.try_get::<i64, _>(2)? != 0,
            redactions: first.try_get(3)?,
        };
        let mut extremities = Vec::with_capacity(rows.len());
        for row in &rows {
            if let (Some(event_id), Some(depth)) =
                (row.try_get::<Option<String>, _>(4)?, row.try_get::<Option<i64>, _>(5)?)
            {
                extremities.push((event_id, depth));
            }
        }
        Ok(Some((room, extremities)))
    }

    /// Registers a new room (before its create event is appended).
    pub async fn create_room(&mut self, room_id: &str, version: &str, published: bool, now: i64) -> Result<()> {
        sqlx::query("INSERT INTO rooms (room_id, room_version, current_group, published, created_ts) VALUES ($1, $2, 0, $3, $4)")
            .bind(room_id)
            .bind(version)
            .bind(i64::from(published))
            .bind(now)
            .execute(&mut *self.tx)
            .await
            .map_err(on_conflict("rooms.room_id"))?;
        Ok(())
    }

    /// The current state as event IDs, under the write lock.
    pub async fn current_state_ids(&mut self, room_id: &str) -> Result<StateIds> {
        current_state_rows(&mut *self.tx, room_id).await
    }

    /// Events by ID, under the write lock (including those appended in it); unknown IDs are
    /// skipped.
    pub async fn events(&mut self, event_ids: &[&str]) -> Result<Vec<StoredEvent>> {
        self.flush().await?;
        let mut events = Vec::with_capacity(event_ids.len());
        for chunk in event_ids.chunks(EVENTS_PER_QUERY) {
            events.extend(events_by_id(&mut *self.tx, chunk).await?);
        }
        Ok(events)
    }

    /// The events earlier client transactions produced, for as many transactions as given:
    /// `(index in txns, event ID)`. Sees only what was committed or flushed before.
    pub async fn txn_events(&mut self, txns: &[TxnKey<'_>]) -> Result<Vec<(usize, String)>> {
        let mut found = Vec::new();
        for (chunk_index, chunk) in txns.chunks(ROWS_PER_INSERT).enumerate() {
            let conditions: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let n = i * 4;
                    format!(
                        "(user_id = ${} AND device_id = ${} AND endpoint = ${} AND txn_id = ${})",
                        n + 1,
                        n + 2,
                        n + 3,
                        n + 4
                    )
                })
                .collect();
            // Only generated placeholders are interpolated; the keys are bound.
            let sql = format!(
                "SELECT user_id, device_id, endpoint, txn_id, event_id FROM event_txns WHERE {}",
                conditions.join(" OR ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for txn in chunk {
                query = query.bind(txn.user_id).bind(txn.device_id).bind(txn.endpoint).bind(txn.txn_id);
            }
            for row in query.fetch_all(&mut *self.tx).await? {
                let key: (String, String, String, String) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
                let event_id: String = row.try_get(4)?;
                for (i, txn) in chunk.iter().enumerate() {
                    if (txn.user_id, txn.device_id, txn.endpoint, txn.txn_id)
                        == (key.0.as_str(), key.1.as_str(), key.2.as_str(), key.3.as_str())
                    {
                        found.push((chunk_index * ROWS_PER_INSERT + i, event_id.clone()));
                    }
                }
            }
        }
        Ok(found)
    }

    /// Appends an accepted event on top of the room's current state group: stores it, advances
    /// the room's state, and remembers the client transaction. Returns the event's stream
    /// position and the room's state group after it. The caller sets the forward extremities
    /// ([`Self::set_extremities`]), once for however many events it appends to a room.
    pub async fn append(
        &mut self,
        event: NewEvent<'_>,
        current_group: i64,
        txn: Option<TxnKey<'_>>,
        now: i64,
    ) -> Result<(i64, i64)> {
        let mut group = current_group;
        if let Some(state_key) = event.state_key {
            let entry = (event.event_type, state_key, event.event_id);
            self.set_current_entry(event.room_id, entry, event.membership).await?;
            group = self.group_with(event.room_id, current_group, entry).await?;
            self.set_current_group(event.room_id, group).await?;
        }
        let stream_ordering = self.insert_event(event.clone(), group, Some(current_group), false).await?;
        if let Some(txn) = txn {
            self.pending_txns.push(TxnRow {
                user_id: txn.user_id.to_owned(),
                device_id: txn.device_id.to_owned(),
                endpoint: txn.endpoint.to_owned(),
                txn_id: txn.txn_id.to_owned(),
                event_id: event.event_id.to_owned(),
                created_ts: now,
            });
        }
        Ok((stream_ordering, group))
    }

    /// Replaces a room's forward extremities.
    pub async fn set_extremities(&mut self, room_id: &str, event_ids: &[&str]) -> Result<()> {
        sqlx::query("DELETE FROM forward_extremities WHERE room_id = $1").bind(room_id).execute(&mut *self.tx).await?;
        for event_id in event_ids {
            sqlx::query("INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2)")
                .bind(room_id)
                .bind(event_id)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// Replaces a stored event's JSON with its redacted form, and counts the redaction in its
    /// room (see [`Room::redactions`]).
    pub async fn redact(&mut self, event_id: &str, redacted_json: &str, redacted_by: &str) -> Result<()> {
        sqlx::query("UPDATE events SET json = $1, redacted_by = $2 WHERE event_id = $3")
            .bind(redacted_json)
            .bind(redacted_by)
            .bind(event_id)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query(
            "UPDATE rooms SET redactions = redactions + 1 \
             WHERE room_id = (SELECT room_id FROM events WHERE event_id = $1)",
        )
        .bind(event_id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Inserts the pending event and transaction rows.
    async fn flush(&mut self) -> Result<()> {
        for chunk in std::mem::take(&mut self.pending_events).chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO events (stream_ordering, event_id, room_id, event_type, state_key, sender, origin_server_ts, depth, state_group, state_before_group, json) VALUES {}",
                placeholders(chunk.len(), 11)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for e in chunk {
                query = query
                    .bind(e.stream_ordering)
                    .bind(&e.event_id)
                    .bind(&e.room_id)
                    .bind(&e.event_type)
                    .bind(&e.state_key)
                    .bind(&e.sender)
                    .bind(e.origin_server_ts)
                    .bind(e.depth)
                    .bind(e.state_group)
                    .bind(e.state_before_group)
                    .bind(&e.json);
            }
            query.execute(&mut *self.tx).await.map_err(on_conflict("events.event_id"))?;
        }
        for chunk in std::mem::take(&mut self.pending_txns).chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO event_txns (user_id, device_id, endpoint, txn_id, event_id, created_ts) VALUES {}",
                placeholders(chunk.len(), 6)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for t in chunk {
                query = query
                    .bind(&t.user_id)
                    .bind(&t.device_id)
                    .bind(&t.endpoint)
                    .bind(&t.txn_id)
                    .bind(&t.event_id)
                    .bind(t.created_ts);
            }
            query.execute(&mut *self.tx).await.map_err(on_conflict("event_txns"))?;
        }
        Ok(())
    }

    /// Commits the transaction; returns the stream position after it.
    pub async fn commit(mut self) -> Result<i64> {
        self.flush().await?;
        if self.last != self.head {
            sqlx::query("UPDATE stream_head SET position = $1 WHERE id = 0")
                .bind(self.last)
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(self.last)
    }
}

// Reads shared by the pool (`Storage`) and the write transaction (`RoomWrite`).

async fn room_row<'e>(db: impl sqlx::Executor<'e, Database = sqlx::Any>, room_id: &str) -> Result<Option<Room>> {
    let row = sqlx::query("SELECT room_version, current_group, published, redactions FROM rooms WHERE room_id = $1")
        .bind(room_id)
        .fetch_optional(db)
        .await?;
    row.map(|r| {
        Ok(Room {
            version: r.try_get(0)?,
            current_group: r.try_get(1)?,
            published: r.try_get::<i64, _>(2)? != 0,
            redactions: r.try_get(3)?,
        })
    })
    .transpose()
}

async fn event_row<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    event_id: &str,
) -> Result<Option<StoredEvent>> {
    let sql = "SELECT stream_ordering, event_id, room_id, state_group, json FROM events WHERE event_id = $1";
    let row = sqlx::query(sql).bind(event_id).fetch_optional(db).await?;
    row.as_ref().map(stored_event).transpose()
}

/// `($1, …, $columns), ($columns+1, …)…` for a multi-row insert.
fn placeholders(rows: usize, columns: usize) -> String {
    let row = |r: usize| {
        let cells: Vec<String> = (1..=columns).map(|c| format!("${}", r * columns + c)).collect();
        format!("({})", cells.join(", "))
    };
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
}

/// Bounds the placeholders of one `IN (…)` query.
const EVENTS_PER_QUERY: usize = 256;

/// One query for many events rather than one per event.
async fn events_by_id<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    event_ids: &[impl AsRef<str>],
) -> Result<Vec<StoredEvent>> {
    if event_ids.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (1..=event_ids.len()).map(|n| format!("${n}")).collect();
    // Only generated placeholders are interpolated; the IDs are bound.
    let sql = format!(
        "SELECT stream_ordering, event_id, room_id, state_group, json FROM events WHERE event_id IN ({})",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in event_ids {
        query = query.bind(id.as_ref());
    }
    query.fetch_all(db).await?.iter().map(stored_event).collect()
}

async fn state_of_group<'e>(db: impl sqlx::Executor<'e, Database = sqlx::Any>, group: i64) -> Result<StateIds> {
    // Walk the chain newest first, tracking distance, and keep the nearest entry per key.
    let rows = sqlx::query(
        "WITH RECURSIVE chain (id, prev, distance) AS ( \
             SELECT id, prev_group, 0 FROM state_groups WHERE id = $1 \
             UNION ALL \
             SELECT g.id, g.prev_group, c.distance + 1 FROM state_groups g JOIN chain c ON g.id = c.prev \
         ) \
         SELECT s.event_type, s.state_key, s.event_id FROM state_group_entries s \
         JOIN chain c ON s.group_id = c.id ORDER BY c.distance",
    )
    .bind(group)
    .fetch_all(db)
    .await?;
    let mut state = StateIds::new();
    for r in &rows {
        state.entry((r.try_get(0)?, r.try_get(1)?)).or_insert(r.try_get(2)?);
    }
    Ok(state)
}

async fn current_state_rows<'e>(db: impl sqlx::Executor<'e, Database = sqlx::Any>, room_id: &str) -> Result<StateIds> {
    let rows = sqlx::query("SELECT event_type, state_key, event_id FROM current_state WHERE room_id = $1")
        .bind(room_id)
        .fetch_all(db)
        .await?;
    rows.iter().map(|r| Ok(((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?))).collect()
}
