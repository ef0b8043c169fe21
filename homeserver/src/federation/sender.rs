//! The federation sender: delivers the durable outbound queue, one transaction at a time per
//! destination, in queue order, retrying with exponential backoff (capped at five minutes)
//! until the destination acknowledges. A destination we hear from again is retried at once.
//! The queue lives in the database, so a restart resumes it; a lease per destination keeps
//! several processes on one database from sending to the same server at once. A lease is
//! renewed while its transaction is in flight and runs out [`LEASE_MS`] after its process
//! died, when another process takes the destination over.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::state::AppState;
use crate::storage::{PendingTransaction, now_ms};

/// How long a process holds a destination without renewing it: how long a destination waits
/// when the process sending to it dies (kill -9, power loss) before another takes over. Leases
/// compare the processes' clocks: they must agree to well within this (NTP).
const LEASE_MS: i64 = 15_000;
/// How often a lease is renewed while a transaction is in flight (requests may take a minute).
const RENEW: Duration = Duration::from_secs(5);
/// The longest sleep between looks at the queue. Everything has its wake-up (this process's and,
/// through PostgreSQL NOTIFY, other processes' enqueues; the time of the next retry or lease
/// expiry), so this only bounds what a lost wake-up could cost.
const IDLE: Duration = Duration::from_secs(60);
/// The shortest sleep, so that a destination due but still busy here cannot spin the loop.
const MIN_SLEEP: Duration = Duration::from_millis(100);
/// The first retry delay; it doubles per failure up to [`MAX_BACKOFF_MS`].
const FIRST_BACKOFF_MS: i64 = 1_000;
const MAX_BACKOFF_MS: i64 = 300_000;

/// Runs until `stopped` says so.
pub async fn run(state: AppState, mut stopped: tokio::sync::watch::Receiver<bool>) {
    // The PID first: an operator (or a test) looking at `federation_destinations` can tell which
    // process holds a destination; the UUID keeps a restarted process with a reused PID apart.
    let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut workers = tokio::task::JoinSet::new();
    loop {
        match state.storage.due_destinations(now_ms()).await {
            Ok(due) => {
                for destination in due {
                    if !busy.lock().expect("busy set").insert(destination.clone()) {
                        continue;
                    }
                    let (state, owner, busy) = (state.clone(), owner.clone(), busy.clone());
                    workers.spawn(async move {
                        if let Err(err) = deliver(&state, &destination, &owner).await {
                            tracing::warn!(%destination, error = %err, "federation queue");
                        }
                        busy.lock().expect("busy set").remove(&destination);
                        // The queue may have grown meanwhile.
                        state.outbox_ready.notify_one();
                    });
                }
            }
            Err(err) => tracing::warn!(error = %err, "reading the federation queue"),
        }
        while workers.try_join_next().is_some() {}
        let wait = match state.storage.next_due_at(now_ms()).await {
            Ok(Some(at)) => Duration::from_millis((at - now_ms()).max(0).unsigned_abs()).clamp(MIN_SLEEP, IDLE),
            Ok(None) => IDLE,
            Err(err) => {
                tracing::warn!(error = %err, "reading the federation queue");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => break,
            () = state.outbox_ready.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
    workers.shutdown().await;
    if let Err(err) = state.storage.release_all_destinations(&owner).await {
        tracing::warn!(error = %err, "releasing the federation queue's destinations");
    }
}

/// Sends `destination` its queued transactions until none is left or one fails.
async fn deliver(state: &AppState, destination: &str, owner: &str) -> Result<(), crate::federation::FederationError> {
    let client = state.federation()?;
    loop {
        if !state.storage.lease_destination(destination, owner, now_ms() + LEASE_MS, now_ms()).await? {
            return Ok(());
        }
        let Some(transaction) = state.storage.next_transaction(destination).await? else {
            state.storage.release_destination(destination, owner).await?;
            return Ok(());
        };
        let body = transaction_body(client.server_name(), &transaction);
        if let Err(err) = ruma_common::CanonicalJsonValue::try_from(body.clone()) {
            // It can never be signed, so never sent: retrying would hold up everything behind it.
            tracing::error!(%destination, txn_id = %transaction.txn_id, error = %err, "dropping an unsendable transaction");
            state.storage.transaction_sent(destination, owner, &transaction.txn_id).await?;
            continue;
        }
        let path = format!("/_matrix/federation/v1/send/{}", transaction.txn_id);
        let put = client.put(destination, &path, &body);
        tokio::pin!(put);
        let sent = loop {
            tokio::select! {
                sent = &mut put => break sent,
                () = tokio::time::sleep(RENEW) => {
                    // Bounded: a renewal stuck longer than that could outlive the lease, and another
                    // process would send this transaction too. Unsure whether we still hold it, we
                    // stop; the lease runs out and the destination is taken up again (same ID).
                    let renewal = state.storage.lease_destination(destination, owner, now_ms() + LEASE_MS, now_ms());
                    if !matches!(tokio::time::timeout(RENEW, renewal).await, Ok(Ok(true))) {
                        return Ok(());
                    }
                }
            }
        };
        match sent {
            Ok(answer) => {
                for (event_id, result) in answer["pdus"].as_object().into_iter().flatten() {
                    if let Some(error) = result["error"].as_str() {
                        tracing::info!(%destination, %event_id, %error, "the destination refused a PDU");
                    }
                }
                state.storage.transaction_sent(destination, owner, &transaction.txn_id).await?;
            }
            Err(err) => {
                let failures = state.storage.destination_failures(destination).await?;
                let delay = backoff_ms(failures);
                state.storage.transaction_failed(destination, owner, now_ms() + delay).await?;
                tracing::info!(%destination, error = %err, retry_in_ms = delay, "federation transaction failed");
                return Ok(());
            }
        }
    }
}

/// The delay before the next attempt after `failures` failures in a row, with jitter so that
/// many servers coming back at once do not retry in lockstep.
fn backoff_ms(failures: i64) -> i64 {
    let base = FIRST_BACKOFF_MS.saturating_mul(1 << failures.clamp(0, 20)).min(MAX_BACKOFF_MS);
    let jitter = rand::random::<u32>() % 1000;
    (base + i64::from(jitter)).min(MAX_BACKOFF_MS)
}

fn transaction_body(origin: &str, transaction: &PendingTransaction) -> Value {
    let parse =
        |items: &[String]| -> Vec<Value> { items.iter().filter_map(|j| serde_json::from_str(j).ok()).collect() };
    json!({
        "origin": origin,
        "origin_server_ts": now_ms(),
        "pdus": parse(&transaction.pdus),
        "edus": parse(&transaction.edus),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert!((1_000..2_000).contains(&backoff_ms(0)));
        assert!((8_000..9_000).contains(&backoff_ms(3)));
        assert_eq!(backoff_ms(30), MAX_BACKOFF_MS);
    }
}
