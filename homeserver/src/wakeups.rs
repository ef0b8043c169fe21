//! Wake-ups from the other processes serving this server from one PostgreSQL database: a
//! `/sync` waiting here returns as soon as another process commits an event for it, the
//! federation sender looks at what another process queued, a download waiting for a reserved
//! media ID sees the upload another process took. Each process still wakes its own waiters
//! directly after its commits; this relays everybody's (its own included, which costs nothing:
//! the waiters ignore positions they have seen).

use crate::state::AppState;
use crate::storage::{Change, Changes};

/// Relays `changes` to this process's waiters until `stopped` says so.
pub async fn run(state: AppState, mut changes: Changes, mut stopped: tokio::sync::watch::Receiver<bool>) {
    loop {
        let change = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            change = changes.next() => change,
        };
        match change {
            Change::Stream(position) => state.notify(position),
            Change::Outbox => state.outbox_ready.notify_one(),
            Change::Media => state.media_uploaded.notify_waiters(),
            Change::Missed => {
                match state.storage.max_stream_ordering().await {
                    Ok(position) => state.notify(position),
                    Err(err) => tracing::warn!(error = %err, "reading the stream position after a reconnect"),
                }
                state.outbox_ready.notify_one();
                state.media_uploaded.notify_waiters();
            }
        }
    }
}
