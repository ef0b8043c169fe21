//! To-device messages to users of another server travel as `m.direct_to_device` EDUs through
//! the durable federation queue: in order, once each, across the destination being down and
//! the sender restarting.

use std::time::{Duration, Instant};

use myelin_federation_tests::{TestCa, User, encode, federated_server};
use myelin_homeserver::test_support::TestBackend;
use serde_json::{Value, json};

/// Syncs as `user` until `count` to-device messages arrived (or a minute passed); returns them.
async fn receive(user: &User, since: &mut String, count: usize) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < count && Instant::now() < deadline {
        let sync = user.get(&format!("/sync?timeout=2000&since={since}")).await;
        *since = sync["next_batch"].as_str().unwrap().to_owned();
        got.extend(sync["to_device"]["events"].as_array().cloned().unwrap_or_default());
    }
    got
}

async fn send(from: &User, to: &User, device: &str, n: u32) {
    let body = json!({ "messages": { &to.user_id: { device: { "n": n } } } });
    from.put(&format!("/sendToDevice/org.myelin.test/txn-{n}"), body).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_messages_cross_servers_in_order_across_downtime() {
    let ca = TestCa::new();
    let mut a = federated_server(&ca, TestBackend::Sqlite).await;
    let b = federated_server(&ca, TestBackend::Postgres).await;
    let alice = User::register(&a, "alice").await;
    let bob = User::register(&b, "bob").await;
    let device = alice.get("/account/whoami").await["device_id"].as_str().unwrap().to_owned();
    let mut since = alice.get("/sync?timeout=0").await["next_batch"].as_str().unwrap().to_owned();

    send(&bob, &alice, &device, 0).await;
    let first = receive(&alice, &mut since, 1).await;
    assert_eq!(first.len(), 1, "{first:#?}");
    assert_eq!(first[0]["sender"], bob.user_id.as_str());
    assert_eq!(first[0]["type"], "org.myelin.test");
    assert_eq!(first[0]["content"]["n"], 0);

    // A is down while bob sends; B keeps the messages and retries with backoff. B itself
    // restarts meanwhile: the queue is in its database.
    a.stop().await;
    for n in 1..=30 {
        send(&bob, &alice, &device, n).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let b = b.restart().await;
    let bob = bob.on(&b);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let a = a.restart().await;
    let alice = alice.on(&a);
    // A talks to B (a profile lookup): B sees A is back and sends without waiting out its backoff.
    let (status, _) = alice.call(reqwest::Method::GET, &format!("/profile/{}", encode(&bob.user_id)), None).await;
    assert_eq!(status, 200, "B answered");
    let rest = receive(&alice, &mut since, 30).await;
    let numbers: Vec<u64> = rest.iter().map(|e| e["content"]["n"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (1..=30).collect::<Vec<u64>>(), "all of them, in order, once");
    // Nothing more trickles in.
    let later = alice.get(&format!("/sync?timeout=3000&since={since}")).await;
    assert!(later["to_device"]["events"].as_array().is_none_or(Vec::is_empty), "{later}");
}
