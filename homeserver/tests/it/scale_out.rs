//! Several `myelin-server` processes — the real binary, configured from the environment only —
//! serving one server name from one PostgreSQL database and one data directory, as behind a
//! load balancer: users on different processes chat, a `/sync` waiting on one process wakes for
//! an event sent through another, transaction IDs hold across processes, and a process killed
//! with SIGKILL under load loses no acknowledged event while the others keep serving.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::processes::{Cluster, SERVER_NAME};
use crate::support::*;

fn message_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Starts `/sync` on `client` with a 40 s timeout; resolves to how long it took and the answer.
fn waiting_sync(client: &Client, account: &Account, since: &str) -> tokio::task::JoinHandle<(Duration, Value)> {
    let (client, account, since) = (Client::new(&client.base_url), account.clone(), since.to_owned());
    tokio::spawn(async move {
        let started = Instant::now();
        let body = client.sync(&account, Some(&since), 40_000, None).await;
        (started.elapsed(), body)
    })
}

#[tokio::test]
#[cfg_attr(not(myelin_postgres_tests), ignore = "set MYELIN_TEST_POSTGRES_URL to run")]
async fn users_on_different_processes_chat_and_syncs_wake_across_processes() {
    let cluster = Cluster::start(TestBackend::Postgres, 2).await;
    let (one, two) = (&cluster[0], &cluster[1]);
    let alice = one.register("alice", "pw").await;
    let bob = two.register("bob", "pw").await;
    assert_eq!(alice.user_id, format!("@alice:{SERVER_NAME}"));
    // A session made on one process is good on the other.
    let (status, me) = two.whoami(&alice.access_token).await;
    assert_eq!((status, me["user_id"].as_str()), (StatusCode::OK, Some(alice.user_id.as_str())));

    let room = one.create_room(&alice, json!({"invite": [bob.user_id]})).await;
    assert_eq!(two.membership(&bob, &room, "join", None).await.0, StatusCode::OK);

    // Each waits on its own process; the other writes through the other process.
    for (reader, reader_process, writer, writer_process, text) in
        [(&bob, two, &alice, one, "hello from process 1"), (&alice, one, &bob, two, "hello from process 2")]
    {
        let since = reader_process.sync(reader, None, 0, None).await["next_batch"].as_str().unwrap().to_owned();
        let waiting = waiting_sync(reader_process, reader, &since);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(writer_process.send_text(writer, &room, text).await.0, StatusCode::OK);
        let (took, body) = waiting.await.unwrap();
        // Without a wake-up from the other process it would return only at its 40 s timeout.
        assert!(took < Duration::from_secs(20), "the waiting sync was not woken by the other process ({took:?})");
        assert_eq!(bodies(&body["rooms"]["join"][&room]["timeline"]["events"]), [text]);
    }

    // Interleaved writes through both processes: one order, the same seen from either.
    for n in 0..20 {
        let (process, account) = if n % 2 == 0 { (one, &alice) } else { (two, &bob) };
        assert_eq!(process.send_text(account, &room, &format!("m{n}")).await.0, StatusCode::OK);
    }
    let seen_by_one = bodies(&Value::from(one.timeline(&alice, &room).await));
    let seen_by_two = bodies(&Value::from(two.timeline(&bob, &room).await));
    let expected: Vec<String> = ["hello from process 1", "hello from process 2"]
        .into_iter()
        .map(str::to_owned)
        .chain((0..20).map(|n| format!("m{n}")))
        .collect();
    assert_eq!(seen_by_one, expected);
    assert_eq!(seen_by_two, expected);
}

#[tokio::test]
#[cfg_attr(not(myelin_postgres_tests), ignore = "set MYELIN_TEST_POSTGRES_URL to run")]
async fn a_transaction_id_sends_once_whichever_processes_it_reaches() {
    let cluster = Cluster::start(TestBackend::Postgres, 3).await;
    let alice = cluster[0].register("alice", "pw").await;
    let room = cluster[0].create_room(&alice, json!({})).await;

    // The same request reaching all three processes at once (a client retrying through a load
    // balancer while the first attempt is still in flight), then once more later.
    for round in 0..5 {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/txn-{round}");
        let body = json!({"msgtype": "m.text", "body": format!("once {round}")});
        let sends = (0..3).map(|i| cluster[i].put(&path, Some(&alice.access_token), body.clone()));
        let answers = futures_util::future::join_all(sends).await;
        let ids: HashSet<String> = answers
            .iter()
            .map(|(status, answer)| {
                assert_eq!(*status, StatusCode::OK, "{answer}");
                answer["event_id"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(ids.len(), 1, "one event for one transaction ID: {ids:?}");
        let (status, again) = cluster[round % 3].put(&path, Some(&alice.access_token), body).await;
        assert_eq!((status, again["event_id"].as_str()), (StatusCode::OK, ids.iter().next().map(String::as_str)));
    }
    let events = cluster[1].timeline(&alice, &room).await;
    let expected: Vec<String> = (0..5).map(|round| format!("once {round}")).collect();
    assert_eq!(bodies(&Value::from(events)), expected);
}

#[tokio::test]
#[cfg_attr(not(myelin_postgres_tests), ignore = "set MYELIN_TEST_POSTGRES_URL to run")]
async fn a_process_killed_under_load_loses_no_acknowledged_event() {
    const SENDERS: usize = 6;
    const PER_SENDER: usize = 40;
    let mut cluster = Cluster::start(TestBackend::Postgres, 3).await;
    let alice = cluster[0].register("alice", "pw").await;
    let room = cluster[0].create_room(&alice, json!({"preset": "public_chat"})).await;
    let bases: Vec<String> = (0..3).map(|i| cluster[i].base_url.clone()).collect();

    // Each sender writes its messages in order, round-robin over the processes. A request that
    // fails (its process died) is retried with the same transaction ID on the next process:
    // whether or not the dead one had committed it, it must end up in the room exactly once.
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..SENDERS {
        let (bases, alice, room, acknowledged) = (bases.clone(), alice.clone(), room.clone(), acknowledged.clone());
        senders.spawn(async move {
            let clients: Vec<Client> = bases.iter().map(|base| Client::new(base)).collect();
            let mut sent = Vec::new();
            for n in 0..PER_SENDER {
                let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/s{sender}-{n}");
                let body = json!({"msgtype": "m.text", "body": format!("s{sender}-{n}")});
                let mut attempt = sender + n;
                let event_id = loop {
                    let client = &clients[attempt % clients.len()];
                    if let Some(answer) = client.try_put(&path, &alice.access_token, &body).await {
                        break answer["event_id"].as_str().unwrap().to_owned();
                    }
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                sent.push((format!("s{sender}-{n}"), event_id));
            }
            sent
        });
    }
    // Kill the second process once the load is well under way.
    let deadline = Instant::now() + Duration::from_secs(120);
    while acknowledged.load(std::sync::atomic::Ordering::SeqCst) < SENDERS * PER_SENDER / 3 {
        assert!(Instant::now() < deadline, "the load did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.kill(1);
    let at_kill = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
    let mut sent: Vec<(String, String)> = Vec::new();
    while let Some(result) = senders.join_next().await {
        sent.extend(result.unwrap());
    }
    assert!(at_kill < SENDERS * PER_SENDER, "the kill happened while sending went on");
    assert_eq!(sent.len(), SENDERS * PER_SENDER, "the survivors took every send");

    // Every acknowledged event is there, once, under the ID it was acknowledged with, in each
    // sender's order; both survivors and the restarted process see the same timeline.
    let events = cluster[0].timeline(&alice, &room).await;
    let ids = message_ids(&events);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event twice");
    let position: HashMap<&String, usize> = ids.iter().enumerate().map(|(i, id)| (id, i)).collect();
    assert_eq!(ids.len(), sent.len(), "exactly the acknowledged events");
    let bodies_in_order = bodies(&Value::from(events.clone()));
    for (body, event_id) in &sent {
        let at = position.get(event_id).unwrap_or_else(|| panic!("acknowledged {event_id} ({body}) is missing"));
        assert_eq!(&bodies_in_order[*at], body);
    }
    for sender in 0..SENDERS {
        let order: Vec<usize> = sent
            .iter()
            .filter(|(body, _)| body.starts_with(&format!("s{sender}-")))
            .map(|(_, id)| position[id])
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "sender {sender}'s messages out of order");
    }
    assert_eq!(message_ids(&cluster[2].timeline(&alice, &room).await), ids);
    cluster.restart(1).await;
    assert_eq!(message_ids(&cluster[1].timeline(&alice, &room).await), ids);
    // And it writes again.
    assert_eq!(cluster[1].send_text(&alice, &room, "back").await.0, StatusCode::OK);
}

#[tokio::test]
#[cfg_attr(not(myelin_postgres_tests), ignore = "set MYELIN_TEST_POSTGRES_URL to run")]
async fn a_download_waiting_on_one_process_gets_an_upload_made_through_another() {
    let cluster = Cluster::start(TestBackend::Postgres, 3).await;
    let alice = cluster[0].register("alice", "pw").await;
    let (status, created) = cluster[0].post("/_matrix/media/v1/create", Some(&alice.access_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let media_id = created["content_uri"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();

    let download = {
        let (client, token) = (Client::new(&cluster[1].base_url), alice.access_token.clone());
        let path = format!("/_matrix/client/v1/media/download/{SERVER_NAME}/{media_id}?timeout_ms=60000");
        tokio::spawn(async move {
            let started = Instant::now();
            let response = client.http.get(client.url(&path)).bearer_auth(token).send().await.unwrap();
            (started.elapsed(), response.status(), response.bytes().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let upload = cluster[2]
        .http
        .put(cluster[2].url(&format!("/_matrix/media/v3/upload/{SERVER_NAME}/{media_id}")))
        .bearer_auth(&alice.access_token)
        .header("Content-Type", "text/plain")
        .body("uploaded through process 3")
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), StatusCode::OK);
    let (took, status, bytes) = download.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&bytes[..], b"uploaded through process 3");
    assert!(took < Duration::from_secs(30), "the waiting download was not woken ({took:?})");
}
