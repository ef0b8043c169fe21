//! Crash safety: the real server under load, killed with SIGKILL at random moments and
//! restarted, several times. Every message send, media upload and to-device send that was
//! answered 200 must be there afterwards — messages in each sender's order, each exactly once,
//! under the event ID the client was given; uploads byte for byte; to-device messages delivered
//! once. A request cut off by the kill has an unknown outcome: the client retries it with the
//! same transaction ID after the restart, and it must then be there exactly once too.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::processes::Cluster;
use crate::support::*;

myelin_homeserver::backend_tests!(acknowledged_writes_survive_sigkill_at_random_moments);

const ROUNDS: usize = 6;
const SENDERS: usize = 3;

/// What the clients were told, and what they could not learn because the server died.
#[derive(Default)]
struct Ledger {
    /// (sender, n, event ID) of every acknowledged message.
    messages: Vec<(usize, usize, String)>,
    /// (sender, n) of messages in flight at a kill.
    messages_unknown: Vec<(usize, usize)>,
    /// Content URI and bytes of every acknowledged upload.
    uploads: Vec<(String, Vec<u8>)>,
    /// `n` of every acknowledged to-device message.
    to_device: Vec<u64>,
    /// `n` of to-device messages in flight at a kill.
    to_device_unknown: Vec<u64>,
}

/// Where a load task stopped (the server died under it): the next number to send.
enum Stopped {
    Sender(usize, usize),
    Uploader,
    ToDevice(u64),
}

fn message_path(room: &str, sender: usize, n: usize) -> (String, Value) {
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/c{sender}-{n}");
    (path, json!({"msgtype": "m.text", "body": format!("c{sender}-{n}")}))
}

fn to_device_path(bob: &Account, n: u64) -> (String, Value) {
    let path = format!("/_matrix/client/v3/sendToDevice/m.test/d{n}");
    (path, json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"n": n}}}}))
}

async fn acknowledged_writes_survive_sigkill_at_random_moments(backend: TestBackend) {
    let mut server = Cluster::start(backend, 1).await;
    let alice = server[0].register("alice", "pw").await;
    let bob = server[0].register("bob", "pw").await;
    let room = server[0].create_room(&alice, json!({})).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut next_message = [0usize; SENDERS];
    let mut next_to_device = 0u64;
    let mut cut_off = 0;

    for round in 0..ROUNDS {
        let base = server[0].base_url.clone();
        let mut load = tokio::task::JoinSet::new();
        // Message senders: one at a time each, until the server dies under them.
        for (sender, next) in next_message.iter().copied().enumerate() {
            let (base, alice, room, ledger) = (base.clone(), alice.clone(), room.clone(), ledger.clone());
            load.spawn(async move {
                let client = Client::new(&base);
                for n in next.. {
                    let (path, body) = message_path(&room, sender, n);
                    match client.try_put(&path, &alice.access_token, &body).await {
                        Some(answer) => ledger.lock().unwrap().messages.push((
                            sender,
                            n,
                            answer["event_id"].as_str().unwrap().to_owned(),
                        )),
                        None => {
                            ledger.lock().unwrap().messages_unknown.push((sender, n));
                            return Stopped::Sender(sender, n + 1);
                        }
                    }
                }
                unreachable!()
            });
        }
        // An uploader.
        {
            let (base, alice, ledger) = (base.clone(), alice.clone(), ledger.clone());
            load.spawn(async move {
                let client = Client::new(&base);
                loop {
                    let bytes: Vec<u8> = (0..rand::random::<u32>() % 200_000).map(|_| rand::random()).collect();
                    let request = client
                        .http
                        .post(client.url("/_matrix/media/v3/upload"))
                        .bearer_auth(&alice.access_token)
                        .header("Content-Type", "application/octet-stream")
                        .body(bytes.clone());
                    let Ok(response) = request.send().await else { return Stopped::Uploader };
                    let Ok(answer) = response.json::<Value>().await else { return Stopped::Uploader };
                    if let Some(uri) = answer["content_uri"].as_str() {
                        ledger.lock().unwrap().uploads.push((uri.to_owned(), bytes));
                    }
                }
            });
        }
        // A to-device sender (alice to bob).
        {
            let (base, alice, bob, ledger) = (base.clone(), alice.clone(), bob.clone(), ledger.clone());
            load.spawn(async move {
                let client = Client::new(&base);
                for n in next_to_device.. {
                    let (path, body) = to_device_path(&bob, n);
                    match client.try_put(&path, &alice.access_token, &body).await {
                        Some(_) => ledger.lock().unwrap().to_device.push(n),
                        None => {
                            ledger.lock().unwrap().to_device_unknown.push(n);
                            return Stopped::ToDevice(n + 1);
                        }
                    }
                }
                unreachable!()
            });
        }

        tokio::time::sleep(Duration::from_millis(150 + rand::random::<u64>() % 600)).await;
        server.kill(0);
        while let Some(finished) = load.join_next().await {
            match finished.unwrap() {
                Stopped::Sender(sender, next) => next_message[sender] = next,
                Stopped::Uploader => {}
                Stopped::ToDevice(next) => next_to_device = next,
            }
        }
        server.restart(0).await;

        // The client's retries of what was cut off: same transaction IDs.
        let retries: Vec<(usize, usize)> = std::mem::take(&mut ledger.lock().unwrap().messages_unknown);
        let retried_to_device = ledger.lock().unwrap().to_device_unknown.len();
        cut_off += retries.len() + retried_to_device;
        for (sender, n) in retries {
            let (path, body) = message_path(&room, sender, n);
            let answer = server[0].try_put(&path, &alice.access_token, &body).await.expect("retry after restart");
            ledger.lock().unwrap().messages.push((sender, n, answer["event_id"].as_str().unwrap().to_owned()));
        }
        let retries: Vec<u64> = std::mem::take(&mut ledger.lock().unwrap().to_device_unknown);
        for n in retries {
            let (path, body) = to_device_path(&bob, n);
            server[0].try_put(&path, &alice.access_token, &body).await.expect("retry after restart");
            ledger.lock().unwrap().to_device.push(n);
        }
        let ledger = ledger.lock().unwrap();
        assert!(!ledger.messages.is_empty(), "round {round}: no load before the kill");
    }

    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    eprintln!(
        "{backend:?}: {ROUNDS} kills; acknowledged {} messages, {} uploads, {} to-device messages; \
         {cut_off} sends cut off by a kill and retried",
        ledger.messages.len(),
        ledger.uploads.len(),
        ledger.to_device.len(),
    );
    // Messages: exactly the acknowledged ones, once each, under their IDs, in each sender's order.
    let events = server[0].timeline(&alice, &room).await;
    let timeline: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| (e["content"]["body"].as_str().unwrap().to_owned(), e["event_id"].as_str().unwrap().to_owned()))
        .collect();
    let distinct: HashSet<&String> = timeline.iter().map(|(body, _)| body).collect();
    assert_eq!(distinct.len(), timeline.len(), "a message stored twice");
    let position: HashMap<&String, usize> = timeline.iter().enumerate().map(|(i, (_, id))| (id, i)).collect();
    assert_eq!(timeline.len(), ledger.messages.len(), "exactly the acknowledged messages");
    for (sender, n, event_id) in &ledger.messages {
        let at = *position.get(event_id).unwrap_or_else(|| panic!("acknowledged c{sender}-{n} ({event_id}) lost"));
        assert_eq!(timeline[at].0, format!("c{sender}-{n}"));
    }
    for sender in 0..SENDERS {
        let mut mine: Vec<(usize, usize)> =
            ledger.messages.iter().filter(|(s, _, _)| *s == sender).map(|(_, n, id)| (*n, position[id])).collect();
        mine.sort();
        assert!(mine.windows(2).all(|w| w[0].1 < w[1].1), "sender {sender}'s messages out of order");
    }

    // Uploads: every acknowledged one, byte for byte.
    assert!(!ledger.uploads.is_empty());
    for (uri, bytes) in &ledger.uploads {
        let path = format!("/_matrix/client/v1/media/download/{}", uri.trim_start_matches("mxc://"));
        let response = server[0].http.get(server[0].url(&path)).bearer_auth(&alice.access_token).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        assert!(response.bytes().await.unwrap() == bytes[..], "{uri}: other bytes");
    }

    // To-device: every acknowledged message, delivered once, over syncs that acknowledge them.
    let mut delivered = Vec::new();
    let mut since: Option<String> = None;
    loop {
        let sync = server[0].sync(&bob, since.as_deref(), 0, None).await;
        let events = sync["to_device"]["events"].as_array().unwrap().clone();
        since = Some(sync["next_batch"].as_str().unwrap().to_owned());
        if events.is_empty() {
            break;
        }
        delivered.extend(events.iter().map(|e| e["content"]["n"].as_u64().unwrap()));
    }
    let mut expected = ledger.to_device.clone();
    expected.sort();
    delivered.sort();
    assert_eq!(delivered, expected, "to-device messages lost or delivered twice");
}
