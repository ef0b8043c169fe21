//! Rooms: creation, sending, state, membership rules, redaction, history visibility.

use myelin_homeserver::backend_tests;

use crate::support::*;

backend_tests!(
    create_send_and_read_back,
    identical_rooms_created_at_once_get_their_own_ids,
    room_versions_and_creation_errors,
    private_rooms_need_invites_and_power,
    outsiders_can_neither_read_nor_send,
    redaction_strips_content,
    history_visibility_is_honoured,
    state_events_and_power_levels,
    event_context,
    server_notices_reach_every_user,
    concurrent_appends_commit_together,
);

async fn create_send_and_read_back(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let body = json!({"preset": "public_chat", "name": "Lounge", "topic": "Chat here", "room_alias_name": "lounge"});
    let room = h.create_room(&alice, body).await;
    let t = Some(alice.access_token.as_str());

    assert_eq!(
        h.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"), t).await.1,
        json!({"name": "Lounge"})
    );
    assert_eq!(h.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"), t).await.1["topic"], "Chat here");
    let (_, event) = h.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name?format=event"), t).await;
    assert_eq!((event["type"].as_str(), event["sender"].as_str()), (Some("m.room.name"), Some(alice.user_id.as_str())));

    // Joining by alias works for a public room.
    let alias = format!("#lounge:{}", h.server_name());
    let (status, joined) = h
        .post(&format!("/_matrix/client/v3/join/{}", alias.replace('#', "%23")), Some(&bob.access_token), json!({}))
        .await;
    assert_eq!((status, joined["room_id"].as_str()), (StatusCode::OK, Some(room.as_str())));

    // The same transaction ID gives the same event, once.
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/txn-1");
    let first = h.put(&path, t, json!({"msgtype": "m.text", "body": "hello"})).await;
    let again = h.put(&path, t, json!({"msgtype": "m.text", "body": "hello"})).await;
    assert_eq!(first.0, StatusCode::OK);
    assert_eq!(first.1["event_id"], again.1["event_id"]);
    // The same transaction ID on another device is another message.
    let alice2 = h.login("alice", "pw").await;
    let other = h.put(&path, Some(&alice2.access_token), json!({"msgtype": "m.text", "body": "hello"})).await;
    assert_ne!(other.1["event_id"], first.1["event_id"]);

    let event_id = first.1["event_id"].as_str().unwrap();
    let (status, event) =
        h.get(&format!("/_matrix/client/v3/rooms/{room}/event/{event_id}"), Some(&bob.access_token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((event["content"]["body"].as_str(), event["room_id"].as_str()), (Some("hello"), Some(room.as_str())));

    let (status, page) = h.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=2"), t).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bodies(&page["chunk"]), ["hello", "hello"]);
    assert!(page["end"].is_string());

    let (_, rooms) = h.get("/_matrix/client/v3/joined_rooms", Some(&bob.access_token)).await;
    assert_eq!(rooms["joined_rooms"], json!([room]));
    let (_, members) = h.get(&format!("/_matrix/client/v3/rooms/{room}/joined_members"), t).await;
    assert_eq!(members["joined"].as_object().unwrap().len(), 2);
    let (_, all) = h.get(&format!("/_matrix/client/v3/rooms/{room}/members?membership=join"), t).await;
    assert_eq!(all["chunk"].as_array().unwrap().len(), 2);
    let (_, state) = h.get(&format!("/_matrix/client/v3/rooms/{room}/state"), t).await;
    let kinds: Vec<_> = state.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    for kind in [
        "m.room.create",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.canonical_alias",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
}

async fn room_versions_and_creation_errors(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let v12 = h.create_room(&alice, json!({})).await;
    assert!(!v12.contains(':'), "v12 room IDs carry no server name: {v12}");
    let (_, create) =
        h.get(&format!("/_matrix/client/v3/rooms/{v12}/state/m.room.create"), Some(&alice.access_token)).await;
    assert_eq!(create["room_version"], "12");
    for version in ["10", "11"] {
        let room = h.create_room(&alice, json!({"room_version": version})).await;
        assert!(room.ends_with(&format!(":{}", h.server_name())), "{room}");
        h.send_text(&alice, &room, "works").await;
    }
    let t = Some(alice.access_token.as_str());
    assert_error(
        &h.post("/_matrix/client/v3/createRoom", t, json!({"room_version": "9"})).await,
        StatusCode::BAD_REQUEST,
        "M_UNSUPPORTED_ROOM_VERSION",
    );
    h.create_room(&alice, json!({"room_alias_name": "taken"})).await;
    assert_error(
        &h.post("/_matrix/client/v3/createRoom", t, json!({"room_alias_name": "taken"})).await,
        StatusCode::BAD_REQUEST,
        "M_ROOM_IN_USE",
    );
    let bad_state =
        json!({"initial_state": [{"type": "m.room.member", "state_key": "@x:y", "content": {"membership": "join"}}]});
    assert_error(
        &h.post("/_matrix/client/v3/createRoom", t, bad_state).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_ROOM_STATE",
    );
    assert_error(
        &h.post("/_matrix/client/v3/createRoom", None, json!({})).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    // A remote invitee is refused before anything is created.
    let remote = json!({"name": "Half", "invite": ["@bob:elsewhere.example"]});
    assert_error(&h.post("/_matrix/client/v3/createRoom", t, remote).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let (_, rooms) = h.get("/_matrix/client/v3/joined_rooms", t).await;
    assert_eq!(rooms["joined_rooms"].as_array().unwrap().len(), 4, "no half-built room: {rooms}");
    // Inviting oneself is ignored rather than failing half-way.
    h.create_room(&alice, json!({"invite": [alice.user_id]})).await;
}

async fn private_rooms_need_invites_and_power(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let carol = h.register("carol", "pw").await;
    let room = h.create_room(&alice, json!({"preset": "private_chat"})).await;

    assert_error(&h.membership(&bob, &room, "join", None).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_eq!(h.membership(&alice, &room, "invite", Some(&bob.user_id)).await.0, StatusCode::OK);
    assert_eq!(h.membership(&bob, &room, "join", None).await.0, StatusCode::OK);
    // Bob (power 0) may not invite (50), kick or ban.
    assert_error(
        &h.membership(&bob, &room, "invite", Some(&carol.user_id)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(&h.membership(&bob, &room, "kick", Some(&alice.user_id)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_error(&h.membership(&bob, &room, "ban", Some(&alice.user_id)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    assert_eq!(h.membership(&alice, &room, "kick", Some(&bob.user_id)).await.0, StatusCode::OK);
    assert_error(&h.send_text(&bob, &room, "still here?").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_eq!(h.membership(&alice, &room, "ban", Some(&bob.user_id)).await.0, StatusCode::OK);
    assert_eq!(
        h.membership(&alice, &room, "invite", Some(&bob.user_id)).await.0,
        StatusCode::FORBIDDEN,
        "a banned user can't be invited"
    );
    assert_error(&h.membership(&bob, &room, "join", None).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_eq!(h.membership(&alice, &room, "unban", Some(&bob.user_id)).await.0, StatusCode::OK);
    assert_error(&h.membership(&alice, &room, "unban", Some(&bob.user_id)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_error(&h.membership(&bob, &room, "join", None).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // trusted_private_chat: the invitee gets power 100 and may then kick.
    let trusted = h.create_room(&alice, json!({"preset": "trusted_private_chat", "invite": [carol.user_id]})).await;
    assert_eq!(h.membership(&carol, &trusted, "join", None).await.0, StatusCode::OK);
    assert_eq!(h.membership(&carol, &trusted, "invite", Some(&bob.user_id)).await.0, StatusCode::OK);
    assert_eq!(h.membership(&carol, &trusted, "kick", Some(&bob.user_id)).await.0, StatusCode::OK);

    // Clients often send no body at all to membership endpoints.
    let bodyless = h
        .http
        .post(h.url(&format!("/_matrix/client/v3/rooms/{trusted}/leave")))
        .bearer_auth(&bob.access_token)
        .send()
        .await
        .unwrap();
    assert_error(&decode(bodyless).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // Leave, then forget.
    assert_error(
        &h.post(&format!("/_matrix/client/v3/rooms/{trusted}/forget"), Some(&carol.access_token), json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
    );
    assert_eq!(h.membership(&carol, &trusted, "leave", None).await.0, StatusCode::OK);
    assert_eq!(
        h.post(&format!("/_matrix/client/v3/rooms/{trusted}/forget"), Some(&carol.access_token), json!({})).await.0,
        StatusCode::OK
    );
    let (_, rooms) = h.get("/_matrix/client/v3/joined_rooms", Some(&carol.access_token)).await;
    assert_eq!(rooms["joined_rooms"], json!([]));
    assert_error(
        &h.membership(&alice, "!nonexistent:nowhere", "join", None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

async fn outsiders_can_neither_read_nor_send(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let mallory = h.register("mallory", "pw").await;
    let room = h.create_room(&alice, json!({"preset": "private_chat", "name": "Secret"})).await;
    let (_, sent) = h.send_text(&alice, &room, "top secret").await;
    let event_id = sent["event_id"].as_str().unwrap();
    let m = Some(mallory.access_token.as_str());

    assert_error(&h.send_text(&mallory, &room, "let me in").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_error(
        &h.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), m).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &h.get(&format!("/_matrix/client/v3/rooms/{room}/state"), m).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &h.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"), m).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &h.get(&format!("/_matrix/client/v3/rooms/{room}/members"), m).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &h.get(&format!("/_matrix/client/v3/rooms/{room}/event/{event_id}"), m).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let name = format!("/_matrix/client/v3/rooms/{room}/state/m.room.name");
    assert_error(&h.put(&name, m, json!({"name": "pwned"})).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let sync = h.sync(&mallory, None, 0, None).await;
    assert!(sync["rooms"]["join"].as_object().unwrap().is_empty(), "{sync}");
    assert_error(&h.send_text(&mallory, "!unknown:nowhere", "x").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // Invited then rejected, never joined: no view of the room at all.
    h.membership(&alice, &room, "invite", Some(&mallory.user_id)).await;
    h.membership(&mallory, &room, "leave", None).await;
    assert_error(
        &h.get(&format!("/_matrix/client/v3/rooms/{room}/state"), m).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &h.get(&format!("/_matrix/client/v3/rooms/{room}/members"), m).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let joined_members = format!("/_matrix/client/v3/rooms/{room}/joined_members");
    assert_error(&h.get(&joined_members, m).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
}

async fn redaction_strips_content(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    for version in ["10", "11", "12"] {
        let room = h.create_room(&alice, json!({"preset": "public_chat", "room_version": version})).await;
        h.membership(&bob, &room, "join", None).await;
        let (_, sent) = h.send_text(&alice, &room, "oops").await;
        let event_id = sent["event_id"].as_str().unwrap();
        // Bob (power 0, below redact 50) may not redact Alice's message.
        let path = |txn: &str| format!("/_matrix/client/v3/rooms/{room}/redact/{event_id}/{txn}");
        assert_error(
            &h.put(&path("b1"), Some(&bob.access_token), json!({})).await,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
        let (status, redaction) = h.put(&path("a1"), Some(&alice.access_token), json!({"reason": "typo"})).await;
        assert_eq!(status, StatusCode::OK, "{redaction}");
        let (_, again) = h.put(&path("a1"), Some(&alice.access_token), json!({"reason": "typo"})).await;
        assert_eq!(again["event_id"], redaction["event_id"], "redact is idempotent per txnId");

        let (_, event) =
            h.get(&format!("/_matrix/client/v3/rooms/{room}/event/{event_id}"), Some(&bob.access_token)).await;
        assert_eq!(event["content"], json!({}), "v{version}: {event}");
        let (_, page) =
            h.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=2"), Some(&bob.access_token)).await;
        let redaction_event = &page["chunk"][0];
        assert_eq!(redaction_event["type"], "m.room.redaction");
        assert_eq!(redaction_event["redacts"], event_id);
        // Bob may redact his own message.
        let (_, own) = h.send_text(&bob, &room, "mine").await;
        let own_path = format!("/_matrix/client/v3/rooms/{room}/redact/{}/b2", own["event_id"].as_str().unwrap());
        assert_eq!(h.put(&own_path, Some(&bob.access_token), json!({})).await.0, StatusCode::OK);
    }
}

async fn history_visibility_is_honoured(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let carol = h.register("carol", "pw").await;
    let joined_only = json!({"preset": "public_chat", "initial_state": [
        {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}]});
    let room = h.create_room(&alice, joined_only).await;
    h.send_text(&alice, &room, "before bob").await;
    h.membership(&bob, &room, "join", None).await;
    h.send_text(&alice, &room, "after bob").await;
    let (_, page) =
        h.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&bob.access_token)).await;
    assert_eq!(bodies(&page["chunk"]), ["after bob"]);

    let shared = h.create_room(&alice, json!({"preset": "public_chat"})).await;
    h.send_text(&alice, &shared, "history").await;
    h.membership(&carol, &shared, "join", None).await;
    let (_, page) =
        h.get(&format!("/_matrix/client/v3/rooms/{shared}/messages?dir=b&limit=50"), Some(&carol.access_token)).await;
    assert_eq!(bodies(&page["chunk"]), ["history"]);
    // After leaving, carol still sees what she saw while joined, but nothing newer.
    h.membership(&carol, &shared, "leave", None).await;
    h.send_text(&alice, &shared, "after carol left").await;
    let (status, page) =
        h.get(&format!("/_matrix/client/v3/rooms/{shared}/messages?dir=b&limit=50"), Some(&carol.access_token)).await;
    assert_eq!(status, StatusCode::OK);
    let seen = bodies(&page["chunk"]);
    assert!(!seen.contains(&"after carol left".to_owned()), "{page}");
    assert!(seen.contains(&"history".to_owned()), "shared: she joined after it was sent: {page}");
    // A user invited but never joined sees nothing of shared history.
    let dave = h.register("dave", "pw").await;
    h.membership(&alice, &shared, "invite", Some(&dave.user_id)).await;
    let (status, page) =
        h.get(&format!("/_matrix/client/v3/rooms/{shared}/messages?dir=b&limit=50"), Some(&dave.access_token)).await;
    assert_error(&(status, page), StatusCode::FORBIDDEN, "M_FORBIDDEN");
}

async fn state_events_and_power_levels(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let room = h
        .create_room(&alice, json!({"preset": "public_chat", "power_level_content_override": {"events_default": 10}}))
        .await;
    h.membership(&bob, &room, "join", None).await;
    // events_default 10 > bob's 0: bob can't talk; state_default 50: bob can't rename.
    assert_error(&h.send_text(&bob, &room, "hi").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let name = format!("/_matrix/client/v3/rooms/{room}/state/m.room.name");
    assert_error(
        &h.put(&name, Some(&bob.access_token), json!({"name": "Bob's"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    // Alice raises bob to 50 (users_default stays 0).
    let (_, mut levels) =
        h.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels"), Some(&alice.access_token)).await;
    levels["users"][&bob.user_id] = json!(50);
    let pl = format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/");
    assert_eq!(h.put(&pl, Some(&alice.access_token), levels).await.0, StatusCode::OK);
    assert_eq!(h.send_text(&bob, &room, "hi").await.0, StatusCode::OK);
    assert_eq!(h.put(&name, Some(&bob.access_token), json!({"name": "Bob's"})).await.0, StatusCode::OK);
    // Custom state with a state key, and a missing one.
    let custom = format!("/_matrix/client/v3/rooms/{room}/state/org.example.thing/key1");
    assert_eq!(h.put(&custom, Some(&bob.access_token), json!({"n": 1})).await.0, StatusCode::OK);
    assert_eq!(h.get(&custom, Some(&alice.access_token)).await.1, json!({"n": 1}));
    let missing = format!("/_matrix/client/v3/rooms/{room}/state/org.example.thing/nope");
    assert_error(&h.get(&missing, Some(&alice.access_token)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    // An event over 64 KiB is refused.
    let huge = "x".repeat(70_000);
    let (status, body) = h.send_text(&alice, &room, &huge).await;
    assert_error(&(status, body), StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
    // The spec caps a state key and an event type at 255 bytes; other servers refuse more.
    let state = |key: &str| format!("/_matrix/client/v3/rooms/{room}/state/org.example.thing/{key}");
    let token = Some(alice.access_token.as_str());
    assert_eq!(h.put(&state(&"k".repeat(255)), token, json!({})).await.0, StatusCode::OK);
    let refused = h.put(&state(&"k".repeat(256)), token, json!({})).await;
    assert_error(&refused, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
    let long_type = format!("/_matrix/client/v3/rooms/{room}/send/{}/t1", "t".repeat(256));
    assert_error(&h.put(&long_type, token, json!({})).await, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
}

async fn event_context(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let outsider = h.register("outsider", "pw").await;
    let room = h.create_room(&alice, json!({"preset": "private_chat"})).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(h.send_text(&alice, &room, &format!("c{i}")).await.1["event_id"].as_str().unwrap().to_owned());
    }
    let path = format!("/_matrix/client/v3/rooms/{room}/context/{}?limit=4", ids[3]);
    let (status, context) = h.get(&path, Some(&alice.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{context}");
    assert_eq!(context["event"]["content"]["body"], "c3");
    assert_eq!(bodies(&context["events_before"]), ["c2", "c1"], "newest first");
    assert_eq!(bodies(&context["events_after"]), ["c4", "c5"]);
    assert!(context["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"));
    // The tokens continue the pagination on both sides.
    let (_, older) = h
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1&from={}",
                context["start"].as_str().unwrap()
            ),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(bodies(&older["chunk"]), ["c0"]);
    let (_, newer) = h
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=5&from={}",
                context["end"].as_str().unwrap()
            ),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(bodies(&newer["chunk"]), ["c6"]);
    assert_error(&h.get(&path, Some(&outsider.access_token)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
}

async fn server_notices_reach_every_user(backend: TestBackend) {
    let mut admin_id = String::new();
    let h = Harness::start_with(backend, |c| {
        admin_id = format!("@admin:{}", c.server_name);
        c.admins = vec![admin_id.clone()];
    })
    .await;
    let admin = h.register("admin", "pw").await;
    assert_eq!(admin.user_id, admin_id);
    let alice = h.register("alice", "pw").await;
    let notice = "/_myelin/admin/v1/server_notice";
    assert_error(
        &h.post(notice, Some(&alice.access_token), json!({"body": "hi"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let (status, sent) = h.post(notice, Some(&admin.access_token), json!({"body": "Maintenance at 22:00"})).await;
    assert_eq!((status, sent["sent"].as_i64()), (StatusCode::OK, Some(2)), "{sent}");
    h.post(notice, Some(&admin.access_token), json!({"body": "Done", "user_id": alice.user_id})).await;

    let synced = h.sync(&alice, None, 0, None).await;
    let invites = synced["rooms"]["invite"].as_object().unwrap();
    assert_eq!(invites.len(), 1, "{synced}");
    let (room, _) = invites.iter().next().unwrap();
    assert_eq!(h.membership(&alice, room, "join", None).await.0, StatusCode::OK);
    let (_, page) =
        h.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=10"), Some(&alice.access_token)).await;
    let notices: Vec<_> =
        page["chunk"].as_array().unwrap().iter().filter(|e| e["content"]["msgtype"] == "m.server_notice").collect();
    assert_eq!(notices.len(), 2, "one room per user, reused: {page}");
    assert_eq!(notices[0]["sender"], format!("@_server:{}", h.server_name()));
    let tag = format!("/_matrix/client/v3/user/{}/rooms/{room}/account_data/m.tag", alice.user_id);
    assert_eq!(h.get(&tag, Some(&alice.access_token)).await.1, json!({"tags": {"m.server_notice": {}}}));
}

/// Many appends at once go through the writer in groups: every acknowledged event is stored
/// once, refusals in a group do not affect the others, a repeated transaction ID gives one
/// event, and state changed inside a group holds for the events after it.
async fn concurrent_appends_commit_together(backend: TestBackend) {
    use futures_util::future::join_all;

    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let carol = h.register("carol", "pw").await;
    let room = h.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(h.membership(&bob, &room, "join", None).await.0, StatusCode::OK);

    let (h, room) = (&h, room.as_str());
    let sends = (0..20).flat_map(|i| [(&alice, format!("a{i}")), (&bob, format!("b{i}")), (&carol, format!("c{i}"))]);
    let sends = join_all(sends.map(|(who, text)| async move { (text.clone(), h.send_text(who, room, &text).await) }));
    let same_txn = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/once");
    let repeats = join_all(
        (0..8).map(|_| h.put(&same_txn, Some(&alice.access_token), json!({"msgtype": "m.text", "body": "once"}))),
    );
    let (name_path, topic_path) = (
        format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"),
        format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic"),
    );
    let name = h.put(&name_path, Some(&alice.access_token), json!({"name": "Busy"}));
    let topic = h.put(&topic_path, Some(&bob.access_token), json!({"topic": "not allowed"}));
    let (sends, repeats, name, topic) = tokio::join!(sends, repeats, name, topic);

    let mut accepted = Vec::new();
    for (text, response) in sends {
        if text.starts_with('c') {
            assert_error(&response, StatusCode::FORBIDDEN, "M_FORBIDDEN");
        } else {
            assert_eq!(response.0, StatusCode::OK, "{text}: {}", response.1);
            accepted.push(text);
        }
    }
    let once: Vec<&Value> = repeats
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, StatusCode::OK, "{body}");
            &body["event_id"]
        })
        .collect();
    assert!(once.iter().all(|id| *id == once[0]), "one event for one transaction ID: {once:?}");
    assert_eq!(name.0, StatusCode::OK, "{}", name.1);
    assert_error(&topic, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // Everything acknowledged is in the timeline exactly once, and nothing refused is.
    let (_, page) =
        h.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"), Some(&alice.access_token)).await;
    let mut stored = bodies(&page["chunk"]);
    stored.sort();
    accepted.push("once".into());
    accepted.sort();
    assert_eq!(stored, accepted);

    // The state the group changed holds afterwards, and appends go on on top of it.
    let (_, state) =
        h.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"), Some(&bob.access_token)).await;
    assert_eq!(state["name"], "Busy");
    assert_eq!(h.send_text(&bob, room, "after").await.0, StatusCode::OK);
    assert_eq!(h.membership(&carol, room, "join", None).await.0, StatusCode::OK);
    assert_eq!(h.send_text(&carol, room, "now a member").await.0, StatusCode::OK);
}

/// A v12 room ID is its create event's hash: two rooms created alike in one millisecond must
/// still get two IDs (once a 500 for one of them and for everything committed with it).
async fn identical_rooms_created_at_once_get_their_own_ids(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let other = h.create_room(&alice, json!({})).await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..25 {
        let create = || h.post("/_matrix/client/v3/createRoom", Some(&alice.access_token), json!({}));
        let message = h.send_text(&alice, &other, "bystander");
        let (a, b, c, d, sent) = tokio::join!(create(), create(), create(), create(), message);
        for (status, body) in [a, b, c, d, sent] {
            assert_eq!(status, StatusCode::OK, "{body}");
            if let Some(room) = body["room_id"].as_str() {
                assert!(ids.insert(room.to_owned()), "room ID {room} given twice");
            }
        }
    }
}
