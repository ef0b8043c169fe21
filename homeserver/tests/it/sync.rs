//! `/sync`: initial and incremental, long-poll wake-up, limited timelines and pagination,
//! invites and departures, filters.

use myelin_homeserver::backend_tests;

use std::collections::BTreeSet;

use crate::support::*;

backend_tests!(
    initial_then_incremental,
    long_poll_wakes_on_a_new_message,
    limited_timeline_paginates_back_exactly,
    invites_and_leaves,
    filters,
    unread_counts_and_lazy_members
);

async fn initial_then_incremental(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let room = h.create_room(&alice, json!({"name": "Room", "preset": "public_chat"})).await;
    h.send_text(&alice, &room, "one").await;

    let initial = h.sync(&alice, None, 0, None).await;
    for section in ["presence", "account_data", "to_device"] {
        assert!(initial[section]["events"].is_array(), "{section}: {initial}");
    }
    assert!(initial["device_lists"]["changed"].is_array() && initial["device_one_time_keys_count"].is_object());
    assert!(initial["device_unused_fallback_key_types"].is_array());
    let joined = &initial["rooms"]["join"][&room];
    assert_eq!(bodies(&joined["timeline"]["events"]), ["one"]);
    // State up to the timeline plus the timeline's own state events make the whole state.
    let kinds = event_kinds(joined);
    assert!(kinds.contains(&"m.room.create".to_owned()) && kinds.contains(&"m.room.name".to_owned()), "{kinds:?}");
    assert!(joined["timeline"]["events"][0].get("room_id").is_none(), "sync events omit room_id");
    // With a short timeline, the state section carries the room's state before it.
    let short = json!({"room": {"timeline": {"limit": 1}}}).to_string();
    let trimmed = h.sync(&alice, None, 0, Some(&short)).await;
    let trimmed = &trimmed["rooms"]["join"][&room];
    assert_eq!(bodies(&trimmed["timeline"]["events"]), ["one"]);
    assert_eq!(trimmed["timeline"]["limited"], true);
    let state: Vec<_> =
        trimmed["state"]["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    for kind in ["m.room.create", "m.room.member", "m.room.power_levels", "m.room.name"] {
        assert!(state.contains(&kind), "{kind} in {state:?}");
    }
    assert_eq!(joined["summary"]["m.joined_member_count"], 1);
    let since = initial["next_batch"].as_str().unwrap().to_owned();

    // Nothing new: an empty incremental sync, with the same token back.
    let quiet = h.sync(&alice, Some(&since), 0, None).await;
    assert!(quiet["rooms"]["join"].as_object().unwrap().is_empty(), "{quiet}");

    h.send_text(&alice, &room, "two").await;
    let next = h.sync(&alice, Some(&since), 0, None).await;
    let joined = &next["rooms"]["join"][&room];
    assert_eq!(bodies(&joined["timeline"]["events"]), ["two"]);
    assert_eq!(joined["timeline"]["limited"], false);
    assert!(joined["state"]["events"].as_array().unwrap().is_empty());
    assert_error(
        &h.get("/_matrix/client/v3/sync?since=garbage", Some(&alice.access_token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

async fn long_poll_wakes_on_a_new_message(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let room = h.create_room(&alice, json!({"preset": "public_chat"})).await;
    h.membership(&bob, &room, "join", None).await;
    let since = h.sync(&bob, None, 0, None).await["next_batch"].as_str().unwrap().to_owned();

    // Bob waits up to a minute; the sync must return with Alice's message, long before that.
    let waiting = {
        let http = h.http.clone();
        let url = h.url(&format!("/_matrix/client/v3/sync?since={since}&timeout=60000"));
        let token = bob.access_token.clone();
        tokio::spawn(async move { decode(http.get(url).bearer_auth(token).send().await.unwrap()).await })
    };
    tokio::task::yield_now().await;
    h.send_text(&alice, &room, "wake up").await;
    let (status, woke) = tokio::time::timeout(std::time::Duration::from_secs(30), waiting).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bodies(&woke["rooms"]["join"][&room]["timeline"]["events"]), ["wake up"]);
}

async fn limited_timeline_paginates_back_exactly(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let room = h.create_room(&alice, json!({"preset": "public_chat"})).await;
    let since = h.sync(&alice, None, 0, None).await["next_batch"].as_str().unwrap().to_owned();
    for i in 0..15 {
        h.send_text(&alice, &room, &format!("m{i}")).await;
    }
    let filter = json!({"room": {"timeline": {"limit": 5}}}).to_string();
    let next = h.sync(&alice, Some(&since), 0, Some(&filter)).await;
    let timeline = &next["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["limited"], true);
    assert_eq!(bodies(&timeline["events"]), ["m10", "m11", "m12", "m13", "m14"]);
    // Paginating back from prev_batch to the previous sync's token yields exactly the gap.
    let prev_batch = timeline["prev_batch"].as_str().unwrap();
    let path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from={prev_batch}&to={since}&limit=100");
    let (status, page) = h.get(&path, Some(&alice.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut missing = bodies(&page["chunk"]);
    missing.reverse();
    assert_eq!(missing, (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
    // And forwards from the same point, the timeline again.
    let path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&from={prev_batch}&limit=100");
    let (_, forward) = h.get(&path, Some(&alice.access_token)).await;
    assert_eq!(bodies(&forward["chunk"]), ["m10", "m11", "m12", "m13", "m14"]);
}

async fn invites_and_leaves(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let since = h.sync(&bob, None, 0, None).await["next_batch"].as_str().unwrap().to_owned();
    let carol = h.register("carol", "pw").await;
    let room = h
        .create_room(&alice, json!({"preset": "private_chat", "name": "Invite only", "invite": [carol.user_id]}))
        .await;
    h.membership(&carol, &room, "join", None).await;
    h.membership(&alice, &room, "invite", Some(&bob.user_id)).await;

    let invited = h.sync(&bob, Some(&since), 0, None).await;
    let stripped = &invited["rooms"]["invite"][&room]["invite_state"]["events"];
    let kinds: Vec<_> = stripped.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"m.room.name") && kinds.contains(&"m.room.member"), "{kinds:?}");
    let own = stripped.as_array().unwrap().iter().find(|e| e["state_key"] == bob.user_id.as_str()).unwrap();
    assert_eq!(own["content"]["membership"], "invite");
    let members: BTreeSet<_> = stripped
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert_eq!(members, BTreeSet::from([alice.user_id.as_str(), bob.user_id.as_str()]), "only invitee and inviter");
    let since = invited["next_batch"].as_str().unwrap().to_owned();

    h.membership(&bob, &room, "join", None).await;
    let joined = h.sync(&bob, Some(&since), 0, None).await;
    let room_data = &joined["rooms"]["join"][&room];
    assert!(event_kinds(room_data).contains(&"m.room.create".to_owned()), "a new room arrives in full");
    let since = joined["next_batch"].as_str().unwrap().to_owned();

    h.membership(&alice, &room, "kick", Some(&bob.user_id)).await;
    let left = h.sync(&bob, Some(&since), 0, None).await;
    let events = &left["rooms"]["leave"][&room]["timeline"]["events"];
    let last = events.as_array().unwrap().last().unwrap();
    assert_eq!((last["type"].as_str(), last["content"]["membership"].as_str()), (Some("m.room.member"), Some("leave")));
    assert!(left["rooms"]["join"].get(&room).is_none());

    // Forgotten, then invited again: the new invite shows up.
    let since = left["next_batch"].as_str().unwrap().to_owned();
    h.post(&format!("/_matrix/client/v3/rooms/{room}/forget"), Some(&bob.access_token), json!({})).await;
    h.membership(&alice, &room, "invite", Some(&bob.user_id)).await;
    let again = h.sync(&bob, Some(&since), 0, None).await;
    assert!(again["rooms"]["invite"].get(&room).is_some(), "{again}");

    // A display name change is not a new join: the next sync stays incremental.
    h.membership(&bob, &room, "join", None).await;
    let since = h.sync(&bob, None, 0, None).await["next_batch"].as_str().unwrap().to_owned();
    let member = format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{}", bob.user_id);
    let put = h.put(&member, Some(&bob.access_token), json!({"membership": "join", "displayname": "Bobby"})).await;
    assert_eq!(put.0, StatusCode::OK, "{}", put.1);
    let renamed = h.sync(&bob, Some(&since), 0, None).await;
    let timeline = &renamed["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["events"].as_array().unwrap().len(), 1, "{renamed}");
    assert_eq!(timeline["limited"], false);

    // full_state: all the state, but the timeline stays incremental.
    let since = renamed["next_batch"].as_str().unwrap().to_owned();
    h.send_text(&alice, &room, "after").await;
    let url = h.url(&format!("/_matrix/client/v3/sync?since={since}&full_state=true"));
    let (_, full) = decode(h.http.get(url).bearer_auth(&bob.access_token).send().await.unwrap()).await;
    let joined = &full["rooms"]["join"][&room];
    assert_eq!(bodies(&joined["timeline"]["events"]), ["after"]);
    assert!(joined["state"]["events"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"));
}

async fn filters(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let room = h.create_room(&alice, json!({"preset": "public_chat"})).await;
    for i in 0..3 {
        h.send_text(&alice, &room, &format!("m{i}")).await;
    }
    let path = format!("/_matrix/client/v3/user/{}/filter", alice.user_id);
    let filter = json!({"room": {"timeline": {"limit": 2, "types": ["m.room.message"]}}});
    let (status, created) = h.post(&path, Some(&alice.access_token), filter.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let id = created["filter_id"].as_str().unwrap();
    assert_eq!(h.get(&format!("{path}/{id}"), Some(&alice.access_token)).await.1, filter);
    assert_error(&h.get(&format!("{path}/{id}"), Some(&bob.access_token)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    assert_error(&h.post(&path, Some(&bob.access_token), json!({})).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    let synced = h.sync(&alice, None, 0, Some(id)).await;
    let timeline = &synced["rooms"]["join"][&room]["timeline"];
    assert_eq!(bodies(&timeline["events"]), ["m1", "m2"]);
    assert!(timeline["events"].as_array().unwrap().iter().all(|e| e["type"] == "m.room.message"));
    let inline = json!({"room": {"not_rooms": [room]}}).to_string();
    let none = h.sync(&alice, None, 0, Some(&inline)).await;
    assert!(none["rooms"]["join"].get(&room).is_none());
}

/// Event types in a joined room's state and timeline sections.
fn event_kinds(room: &Value) -> Vec<String> {
    let section = |name: &str| room[name]["events"].as_array().cloned().unwrap_or_default();
    section("state").iter().chain(section("timeline").iter()).map(|e| e["type"].as_str().unwrap().to_owned()).collect()
}

async fn unread_counts_and_lazy_members(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let carol = h.register("carol", "pw").await;
    let room = h.create_room(&alice, json!({"preset": "public_chat"})).await;
    h.membership(&bob, &room, "join", None).await;
    h.membership(&carol, &room, "join", None).await;
    let (_, first) = h.send_text(&alice, &room, "hello all").await;
    h.send_text(&alice, &room, "hey bob, look").await;
    h.send_text(&bob, &room, "my own message").await;

    let synced = h.sync(&bob, None, 0, None).await;
    let counts = &synced["rooms"]["join"][&room]["unread_notifications"];
    assert_eq!(counts, &json!({"highlight_count": 1, "notification_count": 2}));
    let receipt = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", first["event_id"].as_str().unwrap());
    h.post(&receipt, Some(&bob.access_token), json!({})).await;
    let synced = h.sync(&bob, None, 0, None).await;
    assert_eq!(synced["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 1);

    // Lazy-loading members: only the timeline's senders (and the user) come in state.
    let filter = json!({"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": true}}}).to_string();
    let lazy = h.sync(&bob, None, 0, Some(&filter)).await;
    let members: Vec<_> = lazy["rooms"]["join"][&room]["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(members, vec![bob.user_id.clone()], "carol and alice sent nothing in the timeline");
    assert!(!members.contains(&carol.user_id));
}
