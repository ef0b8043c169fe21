//! The workloads. Registration, logins, room creation and joins happen before each timed phase.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::client::{Client, User};
use crate::stats::Latency;

/// Sizes of the workloads.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Params {
    /// Users registered for the send workload.
    pub users: usize,
    /// Concurrent senders.
    pub concurrency: usize,
    /// Messages sent in the send workload.
    pub messages: usize,
    /// Messages timed in the fan-out workload.
    pub fanout: usize,
    /// Rooms of the initial-sync user.
    pub rooms: usize,
}

/// Result of the send workload.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Throughput {
    /// Events sent.
    pub events: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Events per second.
    pub events_per_second: f64,
    /// Request latency.
    pub latency: Latency,
}

/// Registers `count` users with a run-unique prefix.
pub async fn register_users(client: &Client, prefix: &str, count: usize) -> anyhow::Result<Vec<User>> {
    let mut users = Vec::with_capacity(count);
    for i in 0..count {
        users.push(client.register(&format!("{prefix}_{i}"), "bench-password").await?);
    }
    Ok(users)
}

/// (a) `concurrency` senders share `messages` sends into one room.
pub async fn send_throughput(
    client: &Client,
    users: &[User],
    concurrency: usize,
    messages: usize,
) -> anyhow::Result<Throughput> {
    let room = client.create_room(&users[0], "send throughput").await?;
    for user in &users[1..] {
        client.join(user, &room).await?;
    }
    let remaining = Arc::new(AtomicUsize::new(messages));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for sender in 0..concurrency.max(1) {
        let (client, user, room, remaining) =
            (client.clone(), users[sender % users.len()].clone(), room.clone(), remaining.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                let sent = Instant::now();
                client.send_text(&user, &room, "load").await?;
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(messages);
    for task in tasks {
        latencies.extend(task.await.context("sender task")??);
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Throughput {
        events: latencies.len(),
        seconds,
        events_per_second: latencies.len() as f64 / seconds,
        latency: Latency::of(&mut latencies),
    })
}

/// (b) A receiver long-polls `/sync` while a sender sends `count` messages one at a time; each
/// sample is the time from the start of the send to the receiver holding the event.
pub async fn fanout(client: &Client, sender: &User, receiver: &User, count: usize) -> anyhow::Result<Latency> {
    let room = client.create_room(sender, "fan-out").await?;
    client.join(receiver, &room).await?;
    let mut since = client.sync(receiver, None, 0).await?["next_batch"].as_str().map(str::to_owned);
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let listener = {
        let (client, receiver, room) = (client.clone(), receiver.clone(), room.clone());
        tokio::spawn(async move {
            loop {
                let body = client.sync(&receiver, since.as_deref(), 30_000).await?;
                let arrived = Instant::now();
                since = body["next_batch"].as_str().map(str::to_owned);
                for event in body["rooms"]["join"][&room]["timeline"]["events"].as_array().into_iter().flatten() {
                    if let Some(text) = event["content"]["body"].as_str()
                        && seen_tx.send((text.to_owned(), arrived)).is_err()
                    {
                        return anyhow::Ok(());
                    }
                }
            }
        })
    };
    let mut samples = Vec::with_capacity(count);
    let mut early: HashMap<String, Instant> = HashMap::new();
    for i in 0..count {
        let marker = format!("fanout-{i}");
        let started = Instant::now();
        client.send_text(sender, &room, &marker).await?;
        let arrived = loop {
            if let Some(at) = early.remove(&marker) {
                break at;
            }
            let (text, at) = tokio::time::timeout(Duration::from_secs(60), seen_rx.recv())
                .await
                .context("the receiver never saw the event")?
                .context("the receiver stopped")?;
            early.insert(text, at);
        };
        samples.push(arrived.saturating_duration_since(started));
    }
    listener.abort();
    Ok(Latency::of(&mut samples))
}

/// (c) A user in `rooms` rooms with a few messages each does fresh initial syncs.
pub async fn initial_sync(client: &Client, user: &User, rooms: usize, repeats: usize) -> anyhow::Result<Latency> {
    for r in 0..rooms {
        let room = client.create_room(user, &format!("room {r}")).await?;
        for m in 0..3 {
            client.send_text(user, &room, &format!("message {m}")).await?;
        }
    }
    let mut samples = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        let body = client.sync(user, None, 0).await?;
        samples.push(start.elapsed());
        let joined = body["rooms"]["join"].as_object().map_or(0, |rooms| rooms.len());
        anyhow::ensure!(joined >= rooms, "initial sync returned {joined} rooms, expected {rooms}");
    }
    Ok(Latency::of(&mut samples))
}
