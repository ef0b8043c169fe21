//! Rooms shared between servers: invites and joins in both directions, joins by a remote
//! alias, messages in order both ways, and delivery to a server that was down.

use std::time::{Duration, Instant};

use myelin_federation_tests::{Processes, TestCa, User, encode, federated_server};
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

/// A public room of `owner`'s on one server that `guest` (another server) has joined.
async fn shared_room(owner: &User, guest: &User, preset: &str) -> String {
    let room = owner.post("/createRoom", json!({ "preset": preset, "name": "Shared" })).await;
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let via = owner.user_id.split_once(':').unwrap().1;
    guest.post(&format!("/join/{}?via={}", encode(&room_id), encode(via)), json!({})).await;
    room_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_messages_reach_a_server_that_was_down_in_order_once() {
    let ca = TestCa::new();
    let a = federated_server(&ca, TestBackend::Postgres).await;
    let b = federated_server(&ca, TestBackend::Sqlite).await;
    let alice = User::register(&a, "alice").await;
    let bob = User::register(&b, "bob").await;
    let room_id = shared_room(&alice, &bob, "public_chat").await;

    let mut b = b;
    b.stop().await;
    let sent: Vec<String> = (0..200).map(|n| format!("m{n:03}")).collect();
    for body in &sent {
        send(&alice, &room_id, body).await;
    }
    let b = b.restart().await;
    let bob = bob.on(&b);
    // Bob's server talks to A (a profile lookup): A sees B is back without waiting out its backoff.
    bob.get(&format!("/profile/{}", encode(&alice.user_id))).await;
    let seen = wait_for_messages(&bob, &room_id, 200).await;
    assert_eq!(seen, sent, "all 200, in order, none twice");
    // And B's users are heard again.
    send(&bob, &room_id, "back").await;
    let seen = wait_for_messages(&alice, &room_id, 201).await;
    assert_eq!(seen.last().map(String::as_str), Some("back"));
}

/// The content of a state event (`null` while there is none).
async fn state_content(user: &User, room_id: &str, kind: &str) -> Value {
    let (status, body) =
        user.call(reqwest::Method::GET, &format!("/rooms/{}/state/{kind}/", encode(room_id)), None).await;
    if status == 200 { body } else { Value::Null }
}

/// Concurrent state changes on two servers (a forked room) resolve to the same state on both:
/// independent changes both survive; a change against a concurrent power change does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conflicting_state_changes_converge() {
    let ca = TestCa::new();
    let a = federated_server(&ca, TestBackend::Sqlite).await;
    let b = federated_server(&ca, TestBackend::Postgres).await;
    let alice = User::register(&a, "alice").await;
    let bob = User::register(&b, "bob").await;
    let room_id = shared_room(&alice, &bob, "public_chat").await;
    let levels_path = format!("/rooms/{}/state/m.room.power_levels/", encode(&room_id));
    let mut levels = state_content(&alice, &room_id, "m.room.power_levels").await;
    levels["users"][&bob.user_id] = json!(50);
    levels["state_default"] = json!(50);
    alice.put(&levels_path, levels.clone()).await;
    alice.put(&format!("/rooms/{}/state/m.room.topic/", encode(&room_id)), json!({ "topic": "t0" })).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while state_content(&bob, &room_id, "m.room.topic").await["topic"] != "t0" {
        assert!(Instant::now() < deadline, "B never saw the topic");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A fork: bob's topic waits in B's queue while A is down; then B is down while alice
    // renames the room on A. Neither event saw the other; both changes are allowed, so both
    // servers must end with both (the state of neither branch alone).
    let topic_path = format!("/rooms/{}/state/m.room.topic/", encode(&room_id));
    let name_path = format!("/rooms/{}/state/m.room.name/", encode(&room_id));
    let (mut a, mut b) = (a, b);
    a.stop().await;
    bob.put(&topic_path, json!({ "topic": "bob's" })).await;
    b.stop().await;
    let mut a = a.restart().await;
    let alice = alice.on(&a);
    alice.put(&name_path, json!({ "name": "alice's" })).await;
    let mut b = b.restart().await;
    let bob = bob.on(&b);
    bob.get(&format!("/profile/{}", encode(&alice.user_id))).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for user in [&alice, &bob] {
        loop {
            let topic = state_content(user, &room_id, "m.room.topic").await;
            let name = state_content(user, &room_id, "m.room.name").await;
            if topic["topic"] == "bob's" && name["name"] == "alice's" {
                break;
            }
            assert!(Instant::now() < deadline, "{} has topic {topic} and name {name}", user.user_id);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    // The same fork with alice taking away bob's power to change the topic: state resolution
    // applies the power change first and bob's topic fails against it.
    a.stop().await;
    bob.put(&topic_path, json!({ "topic": "bob's again" })).await;
    b.stop().await;
    let a = a.restart().await;
    let alice = alice.on(&a);
    levels["users"][&bob.user_id] = json!(0);
    alice.put(&levels_path, levels).await;
    let b = b.restart().await;
    let bob = bob.on(&b);
    bob.get(&format!("/profile/{}", encode(&alice.user_id))).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    while state_content(&bob, &room_id, "m.room.power_levels").await["users"][&bob.user_id] != 0 {
        assert!(Instant::now() < deadline, "B never saw the power change");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // bob's next event follows both branches (A soft-failed his topic; B resolved the fork):
    // A now resolves the same states B did.
    send(&bob, &room_id, "after").await;
    assert_eq!(wait_for_messages(&alice, &room_id, 1).await, vec!["after".to_owned()]);
    loop {
        let on_a = (
            state_content(&alice, &room_id, "m.room.topic").await,
            state_content(&alice, &room_id, "m.room.power_levels").await,
        );
        let on_b = (
            state_content(&bob, &room_id, "m.room.topic").await,
            state_content(&bob, &room_id, "m.room.power_levels").await,
        );
        if on_a == on_b {
            assert_eq!(on_a.1["users"][&bob.user_id], 0);
            assert_ne!(on_a.0["topic"], "bob's again", "bob's topic after his demotion must lose");
            break;
        }
        assert!(Instant::now() < deadline, "the servers disagree: A {on_a:?}, B {on_b:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Syncs as `user` (from `since`, advancing it) until `found` picks something out of a sync
/// response, for up to 30 seconds.
async fn sync_until(user: &User, since: &mut String, what: &str, found: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sync = user.get(&format!("/sync?timeout=1000&since={since}")).await;
        *since = sync["next_batch"].as_str().unwrap().to_owned();
        if found(&sync) {
            return;
        }
        assert!(Instant::now() < deadline, "{} never saw {what}", user.user_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_receipts_presence_and_device_lists_cross() {
    let ca = TestCa::new();
    let a = federated_server(&ca, TestBackend::Sqlite).await;
    let b = federated_server(&ca, TestBackend::Postgres).await;
    let alice = User::register(&a, "alice").await;
    let bob = User::register(&b, "bob").await;
    let room_id = shared_room(&alice, &bob, "public_chat").await;
    let mut since = alice.get("/sync?timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let ephemeral = |sync: &Value, kind: &str| -> Vec<Value> {
        sync["rooms"]["join"][&room_id]["ephemeral"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == kind)
            .cloned()
            .collect()
    };

    bob.put(
        &format!("/rooms/{}/typing/{}", encode(&room_id), encode(&bob.user_id)),
        json!({ "typing": true, "timeout": 20000 }),
    )
    .await;
    sync_until(&alice, &mut since, "bob typing", |sync| {
        ephemeral(sync, "m.typing")
            .iter()
            .any(|e| e["content"]["user_ids"].as_array().unwrap().contains(&json!(bob.user_id)))
    })
    .await;

    send(&alice, &room_id, "read me").await;
    let latest = wait_for_messages(&bob, &room_id, 1).await;
    assert_eq!(latest, vec!["read me".to_owned()]);
    let page = bob.get(&format!("/rooms/{}/messages?dir=b&limit=1", encode(&room_id))).await;
    let event_id = page["chunk"][0]["event_id"].as_str().unwrap().to_owned();
    bob.post(&format!("/rooms/{}/receipt/m.read/{}", encode(&room_id), encode(&event_id)), json!({})).await;
    sync_until(&alice, &mut since, "bob's receipt", |sync| {
        ephemeral(sync, "m.receipt").iter().any(|e| e["content"][&event_id]["m.read"][&bob.user_id]["ts"].is_i64())
    })
    .await;

    bob.put(
        &format!("/presence/{}/status", encode(&bob.user_id)),
        json!({ "presence": "online", "status_msg": "on B" }),
    )
    .await;
    sync_until(&alice, &mut since, "bob's presence", |sync| {
        sync["presence"]["events"].as_array().into_iter().flatten().any(|e| {
            e["sender"] == bob.user_id.as_str()
                && e["content"]["presence"] == "online"
                && e["content"]["status_msg"] == "on B"
        })
    })
    .await;

    // bob signs in on a second device and signs out again: his device list changed twice.
    let http = reqwest::Client::new();
    let login: Value = http
        .post(format!("{}/_matrix/client/v3/login", bob.base_url))
        .json(&json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": bob.user_id },
            "password": "federation test password",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().expect("logged in");
    let logout = http.post(format!("{}/_matrix/client/v3/logout", bob.base_url)).bearer_auth(token).json(&json!({}));
    assert_eq!(logout.send().await.unwrap().status().as_u16(), 200);
    sync_until(&alice, &mut since, "bob's device list change", |sync| {
        sync["device_lists"]["changed"].as_array().into_iter().flatten().any(|u| u == bob.user_id.as_str())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_share_a_room() {
    let ca = TestCa::new();
    let a = federated_server(&ca, TestBackend::Sqlite).await;
    let b = federated_server(&ca, TestBackend::Postgres).await;
    let c = federated_server(&ca, TestBackend::Sqlite).await;
    let alice = User::register(&a, "alice").await;
    let bob = User::register(&b, "bob").await;
    let carol = User::register(&c, "carol").await;
    let room_id = shared_room(&alice, &bob, "public_chat").await;
    // carol joins through B, not the room's first server: B passes her join on to A.
    carol.post(&format!("/join/{}?via={}", encode(&room_id), encode(&b.config.server_name)), json!({})).await;
    let mut everyone = vec![alice.user_id.clone(), bob.user_id.clone(), carol.user_id.clone()];
    everyone.sort();
    let deadline = Instant::now() + Duration::from_secs(30);
    while members(&alice, &room_id).await != everyone {
        assert!(Instant::now() < deadline, "A never saw carol join");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    send(&alice, &room_id, "from A").await;
    send(&bob, &room_id, "from B").await;
    send(&carol, &room_id, "from C").await;
    for user in [&alice, &bob, &carol] {
        let mut seen = wait_for_messages(user, &room_id, 3).await;
        seen.sort();
        assert_eq!(seen, ["from A", "from B", "from C"], "{}", user.user_id);
        assert_eq!(members(user, &room_id).await, everyone, "{}", user.user_id);
    }
}

/// A ban on one server races a join on another: both servers end with the user banned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_racing_a_join_wins_on_both_servers() {
    let ca = TestCa::new();
    let a = federated_server(&ca, TestBackend::Postgres).await;
    let b = federated_server(&ca, TestBackend::Sqlite).await;
    let alice = User::register(&a, "alice").await;
    let bob = User::register(&b, "bob").await;
    let carol = User::register(&b, "carol").await;
    let room_id = shared_room(&alice, &bob, "public_chat").await;

    // carol joins on B while A is down; alice bans her on A while B is down.
    let (mut a, mut b) = (a, b);
    a.stop().await;
    carol.post(&format!("/rooms/{}/join", encode(&room_id)), json!({})).await;
    b.stop().await;
    let a = a.restart().await;
    let alice = alice.on(&a);
    alice.post(&format!("/rooms/{}/ban", encode(&room_id)), json!({ "user_id": carol.user_id })).await;
    let b = b.restart().await;
    let bob = bob.on(&b);
    bob.get(&format!("/profile/{}", encode(&alice.user_id))).await;

    let member_path = format!("/rooms/{}/state/m.room.member/{}", encode(&room_id), encode(&carol.user_id));
    let deadline = Instant::now() + Duration::from_secs(60);
    for user in [&alice, &bob] {
        loop {
            let (_, member) = user.call(reqwest::Method::GET, &member_path, None).await;
            if member["membership"] == "ban" {
                break;
            }
            assert!(Instant::now() < deadline, "{} sees carol as {member}", user.user_id);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(!members(user, &room_id).await.contains(&carol.user_id));
    }
}

/// A server run by two processes on one database: the process sending to another server dies
/// (SIGKILL) with a transaction in flight and its lease taken; the other takes the destination
/// over when the lease runs out and delivers. Until then nobody sends twice to one destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_takes_over_sending_when_the_first_dies() {
    use sqlx::{Connection, Row};

    let ca = TestCa::new();
    let mut a = Processes::start(&ca, 2).await;
    let b = federated_server(&ca, TestBackend::Sqlite).await;
    let alice = User::register_at(a.client_url(0), "alice").await;
    let bob = User::register(&b, "bob").await;
    let room_id = shared_room(&alice, &bob, "public_chat").await;
    send(&alice.at(a.client_url(1)), &room_id, "before").await;
    assert_eq!(wait_for_messages(&bob, &room_id, 1).await, ["before"]);

    // B stops answering: its port accepts connections and says nothing, so A's request hangs.
    let mut b = b;
    let b_address = b.config.listen.federation;
    b.stop().await;
    let black_hole = tokio::net::TcpSocket::new_v4().unwrap();
    black_hole.set_reuseaddr(true).unwrap();
    black_hole.bind(b_address).unwrap();
    let black_hole = black_hole.listen(64).unwrap();
    send(&alice.at(a.client_url(1)), &room_id, "during").await;

    // Whichever process took the destination dies holding it.
    let mut db = sqlx::PgConnection::connect(&a.database.url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let owner: String = loop {
        let row = sqlx::query("SELECT lease_owner FROM federation_destinations WHERE destination = $1")
            .bind(&b.config.server_name)
            .fetch_optional(&mut db)
            .await
            .unwrap();
        if let Some(owner) = row.and_then(|row| row.get::<Option<String>, _>(0)) {
            break owner;
        }
        assert!(Instant::now() < deadline, "no process took the destination");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let pid: u32 = owner.split('-').next().unwrap().parse().unwrap();
    a.kill(pid);
    drop(black_hole);
    let b = b.restart().await;
    let bob = bob.on(&b);

    // The survivor sends once the dead process's lease has run out (15 s), not minutes later.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(45);
    loop {
        let seen = messages(&bob, &room_id).await;
        if seen == ["before", "during"] {
            break;
        }
        assert!(Instant::now() < deadline, "the other process never delivered: B has {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = db.close().await;
}
