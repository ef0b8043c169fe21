//! Rooms shared between servers: invites and joins in both directions, joins by a remote
//! alias, messages in order both ways, and delivery to a server that was down.

use std::time::{Duration, Instant};

use myelin_federation_tests::{TestCa, User, encode, federated_server};
use myelin_homeserver::test_support::TestBackend;
use serde_json::{Value, json};

/// The bodies of the room's `m.room.message` events as `user` sees them, oldest first.
async fn messages(user: &User, room_id: &str) -> Vec<String> {
    let page = user.get(&format!("/rooms/{}/messages?dir=b&limit=1000", encode(room_id))).await;
    let mut bodies: Vec<String> = page["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    bodies.reverse();
    bodies
}

/// Waits (up to a minute) until `user` sees at least `count` messages in the room.
async fn wait_for_messages(user: &User, room_id: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = messages(user, room_id).await;
        if seen.len() >= count || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `user`'s sync shows an invite to `room_id`; returns its stripped state.
async fn wait_for_invite(user: &User, room_id: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sync = user.get("/sync?timeout=1000").await;
        if let Some(invite) = sync["rooms"]["invite"].get(room_id) {
            return invite["invite_state"]["events"].as_array().cloned().unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "no invite to {room_id} in {sync:#}");
    }
}

async fn send(user: &User, room_id: &str, body: &str) {
    let path = format!("/rooms/{}/send/m.room.message/{}", encode(room_id), uuid::Uuid::new_v4());
    user.put(&path, json!({ "msgtype": "m.text", "body": body })).await;
}

async fn members(user: &User, room_id: &str) -> Vec<String> {
    let joined = user.get(&format!("/rooms/{}/joined_members", encode(room_id))).await;
    let mut members: Vec<String> = joined["joined"].as_object().unwrap().keys().cloned().collect();
    members.sort();
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_joins_and_messages_cross_in_both_directions() {
    let ca = TestCa::new();
    let a = federated_server(&ca, TestBackend::Sqlite).await;
    let b = federated_server(&ca, TestBackend::Postgres).await;
    let alice = User::register(&a, "alice").await;
    let bob = User::register(&b, "bob").await;

    // alice's room on A; bob on B is invited and joins through A.
    let room = alice.post("/createRoom", json!({ "name": "Across", "preset": "private_chat" })).await;
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    alice.post(&format!("/rooms/{}/invite", encode(&room_id)), json!({ "user_id": bob.user_id })).await;
    let stripped = wait_for_invite(&bob, &room_id).await;
    assert!(stripped.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Across"), "{stripped:#?}");
    assert!(stripped.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str()));
    bob.post(&format!("/join/{}", encode(&room_id)), json!({})).await;
    let expected = {
        let mut m = vec![alice.user_id.clone(), bob.user_id.clone()];
        m.sort();
        m
    };
    assert_eq!(members(&bob, &room_id).await, expected);

    for n in 0..5 {
        send(&alice, &room_id, &format!("a{n}")).await;
        send(&bob, &room_id, &format!("b{n}")).await;
    }
    let want: Vec<String> = (0..5).flat_map(|n| [format!("a{n}"), format!("b{n}")]).collect();
    // Each side sees its own messages in send order and the other's in theirs.
    for user in [&alice, &bob] {
        let seen = wait_for_messages(user, &room_id, 10).await;
        assert_eq!(seen.len(), 10, "{} saw {seen:?}", user.user_id);
        let own = |prefix: &str| seen.iter().filter(|b| b.starts_with(prefix)).cloned().collect::<Vec<_>>();
        assert_eq!(own("a"), want.iter().filter(|b| b.starts_with('a')).cloned().collect::<Vec<_>>());
        assert_eq!(own("b"), want.iter().filter(|b| b.starts_with('b')).cloned().collect::<Vec<_>>());
    }
    assert_eq!(members(&alice, &room_id).await, expected);

    // The other direction: carol's room on B, published under an alias; dan on A joins by the
    // alias, and bob's invite of alice on A crosses too.
    let carol = User::register(&b, "carol").await;
    let dan = User::register(&a, "dan").await;
    let server_b = carol.user_id.split_once(':').unwrap().1.to_owned();
    let room = carol
        .post("/createRoom", json!({ "preset": "public_chat", "room_alias_name": "lobby", "name": "Lobby" }))
        .await;
    let lobby = room["room_id"].as_str().unwrap().to_owned();
    let joined = dan.post(&format!("/join/{}", encode(&format!("#lobby:{server_b}"))), json!({})).await;
    assert_eq!(joined["room_id"], lobby.as_str());
    carol.post(&format!("/rooms/{}/invite", encode(&lobby)), json!({ "user_id": alice.user_id })).await;
    wait_for_invite(&alice, &lobby).await;
    alice.post(&format!("/rooms/{}/join", encode(&lobby)), json!({})).await;
    send(&dan, &lobby, "from A").await;
    send(&carol, &lobby, "from B").await;
    for user in [&carol, &dan, &alice] {
        let seen = wait_for_messages(user, &lobby, 2).await;
        assert_eq!(seen.len(), 2, "{} saw {seen:?}", user.user_id);
    }
    let name = dan.get(&format!("/rooms/{}/state/m.room.name/", encode(&lobby))).await;
    assert_eq!(name["name"], "Lobby");

    // Leaving crosses as well.
    dan.post(&format!("/rooms/{}/leave", encode(&lobby)), json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while members(&carol, &lobby).await.contains(&dan.user_id) {
        assert!(Instant::now() < deadline, "carol still sees dan");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
