//! `/sync`: every command catches up through here before it encrypts or decrypts, so room keys
//! that arrived over to-device messages are stored, one-time keys are topped up, and new
//! timeline events wait in the inbox for `myelin listen`.

use anyhow::Context;
use serde_json::{Value, json};
use sqlx::Row;

use crate::client::Client;

const SYNC_TOKEN: &str = "sync_token";
const LISTEN_CURSOR: &str = "listen_cursor";
/// The inbox marker of events the server left out of a sync (a `limited` timeline) and that
/// could not be fetched back.
pub const GAP: &str = "org.myelin.gap";
/// At most this many left-out events are fetched back per room and sync; `listen` marks the
/// rest as a gap instead of stalling on a room that was very busy while we were away.
const BACKFILL_LIMIT: usize = 500;

/// What one sync brought.
#[derive(Default)]
pub struct Synced {
    /// Room keys stored: undecryptable events may decrypt now.
    pub new_room_keys: usize,
    /// Rooms we were invited to.
    pub invites: Vec<String>,
    /// Verification (and other plain) to-device events, for the SAS flow.
    pub to_device: Vec<Value>,
}

/// Failures of the network, the homeserver or the local store, as opposed to a message that
/// is bad in itself.
fn is_transient(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|cause| cause.is::<sqlx::Error>() || cause.is::<reqwest::Error>() || cause.is::<crate::api::MatrixError>())
}

/// The `/sync` request alone: owns what it needs, so it can be raced against user input and
/// dropped without losing anything.
pub async fn fetch(api: crate::api::Api, since: Option<String>, timeout_ms: u64) -> anyhow::Result<Value> {
    let filter = json!({ "room": { "timeline": { "limit": 50 }, "state": { "lazy_load_members": true } } });
    let mut query = vec![("timeout", timeout_ms.to_string()), ("filter", filter.to_string())];
    if let Some(since) = since {
        query.push(("since", since));
    }
    api.get(&["sync"], &query).await.context("syncing")
}

/// An inbox entry: a timeline event seen by an incremental sync.
pub struct InboxEvent {
    pub position: i64,
    pub room_id: String,
    pub event: Value,
}

impl Client {
    /// One `/sync` from the stored token, waiting up to `timeout_ms` for something new.
    pub async fn sync_once(&mut self, timeout_ms: u64) -> anyhow::Result<Synced> {
        let since = self.since().await?;
        let response = fetch(self.api.clone(), since.clone(), timeout_ms).await?;
        self.process_sync(&response, since.as_deref()).await
    }

    /// The stored sync token (`None` before the first sync).
    pub async fn since(&self) -> anyhow::Result<Option<String>> {
        self.store.get(SYNC_TOKEN).await
    }

    /// Stores what a sync response brought and then its token. Not to be cancelled halfway:
    /// a to-device message decrypted but not stored would be lost.
    pub async fn process_sync(&mut self, response: &Value, since: Option<&str>) -> anyhow::Result<Synced> {
        let _lock = self.lock().await?;
        // Another process of this profile synced from the same token first: what this response
        // holds is already stored (and to-device messages must not be processed twice).
        if self.since().await?.as_deref() != since {
            return Ok(Synced::default());
        }
        let mut synced = Synced::default();
        for event in response["to_device"]["events"].as_array().into_iter().flatten() {
            self.receive_to_device(event, &mut synced).await?;
        }
        // Servers may leave out counts that are zero.
        let otk_count = response["device_one_time_keys_count"]["signed_curve25519"].as_u64().unwrap_or(0);
        let fallback_used = response["device_unused_fallback_key_types"]
            .as_array()
            .is_some_and(|types| !types.iter().any(|t| t == "signed_curve25519"));
        // Not fatal: the to-device messages above are already handled, and unpublished keys are
        // retried at the next sync.
        if let Err(err) = self.publish_keys(false, Some(otk_count), fallback_used).await {
            eprintln!("myelin: could not publish new one-time keys (will retry): {err:#}");
        }
        if let Some(invites) = response["rooms"]["invite"].as_object() {
            synced.invites.extend(invites.keys().cloned());
        }
        // An initial sync's timeline is history, not news: only incremental syncs fill the inbox.
        if let Some(since) = since
            && let Some(rooms) = response["rooms"]["join"].as_object()
        {
            for (room_id, room) in rooms {
                let timeline = &room["timeline"];
                // The server left events out since the last sync: fetch them back.
                let missed = match timeline["prev_batch"].as_str() {
                    Some(prev_batch) if timeline["limited"] == true => {
                        self.missed_events(room_id, prev_batch, since).await
                    }
                    _ => Vec::new(),
                };
                for event in missed.iter().chain(timeline["events"].as_array().into_iter().flatten()) {
                    sqlx::query("INSERT INTO inbox (room_id, event) VALUES ($1, $2)")
                        .bind(room_id)
                        .bind(self.store.cipher.seal_json(event)?)
                        .execute(&self.store.pool)
                        .await?;
                }
            }
        }
        let next = response["next_batch"].as_str().context("the sync response has no next_batch")?;
        // Saved only after everything it acknowledges is stored: the server deletes delivered
        // to-device messages once we sync with this token.
        self.store.set(SYNC_TOKEN, next).await?;
        Ok(synced)
    }

    /// The events of a `limited` timeline's gap (between `since` and `prev_batch`), oldest
    /// first, paged back with `/messages`; ends with a gap marker where some stay missing.
    async fn missed_events(&self, room_id: &str, prev_batch: &str, since: &str) -> Vec<Value> {
        let gap = json!({ "type": GAP, "content": {} });
        let mut missed = Vec::new();
        let mut from = prev_batch.to_owned();
        loop {
            let query = [
                ("dir", "b".to_owned()),
                ("from", from.clone()),
                ("to", since.to_owned()),
                ("limit", "100".to_owned()),
            ];
            let page: Value = match self.api.get(&["rooms", room_id, "messages"], &query).await {
                Ok(page) => page,
                // Not worth failing the sync over: the gap is marked instead.
                Err(err) => {
                    eprintln!("myelin: could not fetch the events missed in {room_id}: {err:#}");
                    missed.push(gap);
                    break;
                }
            };
            let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
            let end = page["end"].as_str().filter(|end| *end != from).map(str::to_owned);
            let exhausted = chunk.is_empty() || end.is_none();
            missed.extend(chunk);
            if exhausted {
                break;
            }
            if missed.len() >= BACKFILL_LIMIT {
                missed.push(gap);
                break;
            }
            from = end.unwrap_or_default();
        }
        missed.reverse();
        missed
    }

    async fn receive_to_device(&mut self, event: &Value, synced: &mut Synced) -> anyhow::Result<()> {
        let sender = event["sender"].as_str().unwrap_or("someone");
        if event["type"] != "m.room.encrypted" {
            synced.to_device.push(event.clone());
            return Ok(());
        }
        let decrypted = match self.decrypt_to_device(event).await {
            Ok(decrypted) => decrypted,
            // The network or the store failed: stop before the sync token moves on, so the
            // message comes again.
            Err(err) if is_transient(&err) => return Err(err),
            Err(err) => {
                eprintln!("myelin: cannot decrypt a to-device message from {sender}: {err:#}");
                return Ok(());
            }
        };
        match decrypted.event_type.as_str() {
            "m.room_key" => {
                match self
                    .receive_room_key(
                        &decrypted.sender,
                        &decrypted.sender_key,
                        &decrypted.claimed_ed25519,
                        &decrypted.content,
                    )
                    .await
                {
                    Ok(()) => synced.new_room_keys += 1,
                    Err(err) if is_transient(&err) => return Err(err),
                    Err(err) => eprintln!("myelin: refusing a room key from {sender}: {err:#}"),
                }
            }
            other => {
                synced.to_device.push(json!({
                    "type": other,
                    "sender": decrypted.sender,
                    "content": decrypted.content,
                }));
            }
        }
        Ok(())
    }

    /// Catches up without waiting (the first sync of a profile can take a moment).
    pub async fn catch_up(&mut self) -> anyhow::Result<Synced> {
        self.sync_once(0).await
    }

    /// Inbox events not yet shown by `listen`, oldest first.
    pub async fn inbox(&self) -> anyhow::Result<Vec<InboxEvent>> {
        let cursor: i64 = self.store.get(LISTEN_CURSOR).await?.and_then(|c| c.parse().ok()).unwrap_or(0);
        let rows = sqlx::query("SELECT position, room_id, event FROM inbox WHERE position > $1 ORDER BY position")
            .bind(cursor)
            .fetch_all(&self.store.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(InboxEvent {
                    position: row.get(0),
                    room_id: row.get(1),
                    event: self.store.cipher.open_json(&row.get::<Vec<u8>, _>(2))?,
                })
            })
            .collect()
    }

    /// Marks inbox events up to `position` as shown and drops them.
    pub async fn inbox_done(&self, position: i64) -> anyhow::Result<()> {
        self.store.set(LISTEN_CURSOR, &position.to_string()).await?;
        sqlx::query("DELETE FROM inbox WHERE position <= $1").bind(position).execute(&self.store.pool).await?;
        Ok(())
    }
}
