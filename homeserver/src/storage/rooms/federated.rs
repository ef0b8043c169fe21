//! Room writes and reads that rooms shared with other servers need: state groups from any
//! state (not only the current one), events placed with their own state, outliers, current
//! state replaced after a resolution, invites to rooms this server is not in.

use std::collections::HashMap;

use sqlx::Row;

use super::{
    EventRow, MAX_STATE_CHAIN, NewEvent, ROWS_PER_INSERT, RoomWrite, StateIds, StateKey, placeholders, state_of_group,
};
use crate::storage::federation_queue::{Outgoing, enqueue};
use crate::storage::{Result, Storage};

impl RoomWrite {
    /// The state of a room in `group`, under the write lock.
    pub async fn state_at_group(&mut self, group: i64) -> Result<StateIds> {
        state_of_group(&mut *self.tx, group).await
    }

    /// Registers a room this server learns about from another server, unless it knows it.
    pub async fn ensure_room(&mut self, room_id: &str, version: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO rooms (room_id, room_version, current_group, published, created_ts) VALUES ($1, $2, 0, 0, $3) \
             ON CONFLICT (room_id) DO NOTHING",
        )
        .bind(room_id)
        .bind(version)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// A state group holding exactly `state`.
    pub async fn snapshot_group(&mut self, room_id: &str, state: &StateIds) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO state_groups (room_id, prev_group, chain_length) VALUES ($1, NULL, 0) RETURNING id",
        )
        .bind(room_id)
        .fetch_one(&mut *self.tx)
        .await?;
        let group: i64 = row.try_get(0)?;
        let entries: Vec<(&StateKey, &String)> = state.iter().collect();
        for chunk in entries.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO state_group_entries (group_id, event_type, state_key, event_id) VALUES {}",
                placeholders(chunk.len(), 4)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for ((kind, key), event_id) in chunk {
                query = query.bind(group).bind(kind).bind(key).bind(*event_id);
            }
            query.execute(&mut *self.tx).await?;
        }
        Ok(group)
    }

    /// The group for `prev`'s state with `entry` set: a one-entry delta, or a snapshot when the
    /// chain is long.
    pub async fn group_with(&mut self, room_id: &str, prev: i64, entry: (&str, &str, &str)) -> Result<i64> {
        let chain_length: Option<i64> = sqlx::query("SELECT chain_length FROM state_groups WHERE id = $1")
            .bind(prev)
            .fetch_optional(&mut *self.tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        let (event_type, state_key, event_id) = entry;
        match chain_length.filter(|len| *len < MAX_STATE_CHAIN) {
            Some(len) => {
                let row = sqlx::query(
                    "INSERT INTO state_groups (room_id, prev_group, chain_length) VALUES ($1, $2, $3) RETURNING id",
                )
                .bind(room_id)
                .bind(prev)
                .bind(len + 1)
                .fetch_one(&mut *self.tx)
                .await?;
                let group: i64 = row.try_get(0)?;
                sqlx::query(
                    "INSERT INTO state_group_entries (group_id, event_type, state_key, event_id) VALUES ($1, $2, $3, $4)",
                )
                .bind(group)
                .bind(event_type)
                .bind(state_key)
                .bind(event_id)
                .execute(&mut *self.tx)
                .await?;
                Ok(group)
            }
            None => {
                let mut state = state_of_group(&mut *self.tx, prev).await?;
                state.insert((event_type.to_owned(), state_key.to_owned()), event_id.to_owned());
                self.snapshot_group(room_id, &state).await
            }
        }
    }

    /// Stores an event with the state groups its caller worked out. A timeline event gets the
    /// next stream position; an outlier gets the next negative one (never read as new).
    pub async fn insert_event(
        &mut self,
        event: NewEvent<'_>,
        state_group: i64,
        state_before_group: Option<i64>,
        outlier: bool,
    ) -> Result<i64> {
        let stream_ordering = if outlier {
            let lowest = match self.lowest {
                Some(lowest) => lowest,
                None => {
                    let row = sqlx::query("SELECT COALESCE(MIN(stream_ordering), 0) FROM events")
                        .fetch_one(&mut *self.tx)
                        .await?;
                    row.try_get::<i64, _>(0)?.min(0)
                }
            };
            self.lowest = Some(lowest - 1);
            lowest - 1
        } else {
            self.last += 1;
            self.last
        };
        self.pending_events.push(EventRow {
            stream_ordering,
            event_id: event.event_id.to_owned(),
            room_id: event.room_id.to_owned(),
            event_type: event.event_type.to_owned(),
            state_key: event.state_key.map(str::to_owned),
            sender: event.sender.to_owned(),
            origin_server_ts: event.origin_server_ts,
            depth: event.depth,
            state_group,
            state_before_group,
            json: event.json.to_owned(),
        });
        Ok(stream_ordering)
    }

    /// Makes `state` the room's current state (group `group`); `memberships` gives the
    /// membership of the member events in it that are new.
    pub async fn replace_current_state(
        &mut self,
        room_id: &str,
        state: &StateIds,
        group: i64,
        memberships: &HashMap<String, String>,
    ) -> Result<()> {
        let current = super::current_state_rows(&mut *self.tx, room_id).await?;
        for (kind, key) in current.keys().filter(|k| !state.contains_key(*k)) {
            sqlx::query("DELETE FROM current_state WHERE room_id = $1 AND event_type = $2 AND state_key = $3")
                .bind(room_id)
                .bind(kind)
                .bind(key)
                .execute(&mut *self.tx)
                .await?;
        }
        for ((kind, key), event_id) in state.iter().filter(|(k, id)| current.get(*k) != Some(*id)) {
            let membership = memberships.get(event_id).map(String::as_str);
            self.set_current_entry(room_id, (kind, key, event_id), membership).await?;
        }
        self.set_current_group(room_id, group).await
    }

    /// Sets one entry of a room's current state.
    pub async fn set_current_entry(
        &mut self,
        room_id: &str,
        entry: (&str, &str, &str),
        membership: Option<&str>,
    ) -> Result<()> {
        let (kind, key, event_id) = entry;
        sqlx::query(
            "INSERT INTO current_state (room_id, event_type, state_key, event_id, membership) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (room_id, event_type, state_key) DO UPDATE SET event_id = $4, membership = $5",
        )
        .bind(room_id)
        .bind(kind)
        .bind(key)
        .bind(event_id)
        .bind(membership)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Points a room at the group of its current state.
    pub async fn set_current_group(&mut self, room_id: &str, group: i64) -> Result<()> {
        sqlx::query("UPDATE rooms SET current_group = $1 WHERE room_id = $2")
            .bind(group)
            .bind(room_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// The servers with a joined member in the room's current state.
    pub async fn resident_servers(&mut self, room_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT state_key FROM current_state \
             WHERE room_id = $1 AND event_type = 'm.room.member' AND membership = 'join'",
        )
        .bind(room_id)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut servers: Vec<String> = Vec::new();
        for row in &rows {
            let user: String = row.try_get(0)?;
            let server = crate::federation::e2ee::server_of(&user);
            if !servers.iter().any(|s| s == server) {
                servers.push(server.to_owned());
            }
        }
        Ok(servers)
    }

    /// Queues PDUs or EDUs for other servers in this transaction.
    pub async fn enqueue(&mut self, items: &[Outgoing], now: i64) -> Result<()> {
        enqueue(&mut self.tx, items, now).await
    }

    /// Keeps (or, with `None`, forgets) the stripped state of an invite from another server.
    pub async fn set_invite_state(&mut self, room_id: &str, user_id: &str, json: Option<&str>) -> Result<()> {
        sqlx::query("DELETE FROM invite_state WHERE room_id = $1 AND user_id = $2")
            .bind(room_id)
            .bind(user_id)
            .execute(&mut *self.tx)
            .await?;
        if let Some(json) = json {
            sqlx::query("INSERT INTO invite_state (room_id, user_id, json) VALUES ($1, $2, $3)")
                .bind(room_id)
                .bind(user_id)
                .bind(json)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }
}

impl Storage {
    /// A room's forward extremities with their depths.
    pub async fn extremities(&self, room_id: &str) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT f.event_id, e.depth FROM forward_extremities f JOIN events e ON e.event_id = f.event_id \
             WHERE f.room_id = $1 ORDER BY f.event_id",
        )
        .bind(room_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// The state group before an event, where it was recorded.
    pub async fn state_before_group(&self, event_id: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT state_before_group FROM events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get::<Option<i64>, _>(0)).transpose()?.flatten())
    }

    /// The stripped state an invite from another server came with.
    pub async fn invite_state(&self, room_id: &str, user_id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT json FROM invite_state WHERE room_id = $1 AND user_id = $2")
            .bind(room_id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Whether a user of this server is joined to the room: whether we take part in it.
    pub async fn is_resident(&self, room_id: &str, server_name: &str) -> Result<bool> {
        // LIKE narrows the rows; `_` in a server name is a wildcard, so each is checked exactly.
        let suffix = format!("%:{server_name}");
        let rows = sqlx::query(
            "SELECT state_key FROM current_state WHERE room_id = $1 AND event_type = 'm.room.member' \
             AND membership = 'join' AND state_key LIKE $2",
        )
        .bind(room_id)
        .bind(suffix)
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            if crate::federation::e2ee::server_of(&row.try_get::<String, _>(0)?) == server_name {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
