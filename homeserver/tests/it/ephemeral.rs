//! Account data, typing, receipts, read markers and presence, through their endpoints and sync.

use myelin_homeserver::backend_tests;

use crate::support::*;

backend_tests!(account_data, typing_and_receipts, presence_of_room_mates, capabilities_list_room_versions);

async fn account_data(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let room = h.create_room(&alice, json!({})).await;
    let since = h.sync(&alice, None, 0, None).await["next_batch"].as_str().unwrap().to_owned();
    let t = Some(alice.access_token.as_str());
    let global = format!("/_matrix/client/v3/user/{}/account_data/org.example.settings", alice.user_id);
    let per_room = format!("/_matrix/client/v3/user/{}/rooms/{room}/account_data/m.tag", alice.user_id);

    assert_error(&h.get(&global, t).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    assert_eq!(h.put(&global, t, json!({"theme": "dark"})).await, (StatusCode::OK, json!({})));
    assert_eq!(h.put(&per_room, t, json!({"tags": {"u.work": {}}})).await.0, StatusCode::OK);
    assert_eq!(h.get(&global, t).await.1, json!({"theme": "dark"}));
    assert_eq!(h.get(&per_room, t).await.1, json!({"tags": {"u.work": {}}}));
    assert_error(&h.get(&global, Some(&bob.access_token)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_error(&h.put(&global, Some(&bob.access_token), json!({})).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let push_rules = format!("/_matrix/client/v3/user/{}/account_data/m.push_rules", alice.user_id);
    assert_error(&h.put(&push_rules, t, json!({})).await, StatusCode::METHOD_NOT_ALLOWED, "M_BAD_JSON");

    let synced = h.sync(&alice, Some(&since), 0, None).await;
    assert_eq!(
        synced["account_data"]["events"],
        json!([{"type": "org.example.settings", "content": {"theme": "dark"}}])
    );
    assert_eq!(synced["rooms"]["join"][&room]["account_data"]["events"][0]["type"], "m.tag");
}

async fn typing_and_receipts(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let room = h.create_room(&alice, json!({"preset": "public_chat"})).await;
    h.membership(&bob, &room, "join", None).await;
    let (_, sent) = h.send_text(&alice, &room, "read me").await;
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    let since = h.sync(&bob, None, 0, None).await["next_batch"].as_str().unwrap().to_owned();

    let typing = format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id);
    assert_eq!(
        h.put(&typing, Some(&alice.access_token), json!({"typing": true, "timeout": 30000})).await.0,
        StatusCode::OK
    );
    assert_error(
        &h.put(&typing, Some(&bob.access_token), json!({"typing": true})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let receipt = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event_id}");
    assert_eq!(h.post(&receipt, Some(&alice.access_token), json!({})).await.0, StatusCode::OK);
    let private = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read.private/{event_id}");
    assert_eq!(h.post(&private, Some(&alice.access_token), json!({})).await.0, StatusCode::OK);
    let unknown = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/$nope");
    assert_error(&h.post(&unknown, Some(&alice.access_token), json!({})).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    let synced = h.sync(&bob, Some(&since), 0, None).await;
    let ephemeral = synced["rooms"]["join"][&room]["ephemeral"]["events"].as_array().unwrap().clone();
    let typing_event = ephemeral.iter().find(|e| e["type"] == "m.typing").unwrap();
    assert_eq!(typing_event["content"]["user_ids"], json!([alice.user_id]));
    let receipts = ephemeral.iter().find(|e| e["type"] == "m.receipt").unwrap();
    assert!(receipts["content"][&event_id]["m.read"][&alice.user_id]["ts"].is_i64(), "{receipts}");
    assert!(receipts["content"][&event_id].get("m.read.private").is_none(), "private receipts stay private");

    // Stopping typing shows an empty list.
    let since = synced["next_batch"].as_str().unwrap().to_owned();
    h.put(&typing, Some(&alice.access_token), json!({"typing": false})).await;
    let synced = h.sync(&bob, Some(&since), 0, None).await;
    let ephemeral = &synced["rooms"]["join"][&room]["ephemeral"]["events"];
    assert_eq!(ephemeral[0], json!({"type": "m.typing", "content": {"user_ids": []}}));

    // A notice that times out ends by itself, and waiting syncs hear of it.
    let since = synced["next_batch"].as_str().unwrap().to_owned();
    h.put(&typing, Some(&alice.access_token), json!({"typing": true, "timeout": 300})).await;
    let started = h.sync(&bob, Some(&since), 0, None).await;
    let since = started["next_batch"].as_str().unwrap().to_owned();
    let ended = h.sync(&bob, Some(&since), 30_000, None).await;
    let ephemeral = &ended["rooms"]["join"][&room]["ephemeral"]["events"];
    assert_eq!(ephemeral[0], json!({"type": "m.typing", "content": {"user_ids": []}}), "{ended}");

    // Read markers: the fully-read marker lands in room account data.
    let markers = json!({"m.fully_read": event_id, "m.read": event_id});
    assert_eq!(
        h.post(&format!("/_matrix/client/v3/rooms/{room}/read_markers"), Some(&bob.access_token), markers).await.0,
        StatusCode::OK
    );
    let fully_read = format!("/_matrix/client/v3/user/{}/rooms/{room}/account_data/m.fully_read", bob.user_id);
    assert_eq!(h.get(&fully_read, Some(&bob.access_token)).await.1, json!({"event_id": event_id}));
    assert_error(
        &h.put(&fully_read, Some(&bob.access_token), json!({})).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "M_BAD_JSON",
    );
}

async fn presence_of_room_mates(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let stranger = h.register("stranger", "pw").await;
    let room = h.create_room(&alice, json!({"preset": "public_chat"})).await;
    h.membership(&bob, &room, "join", None).await;
    let since = h.sync(&bob, None, 0, None).await["next_batch"].as_str().unwrap().to_owned();

    let path = format!("/_matrix/client/v3/presence/{}/status", alice.user_id);
    assert_eq!(
        h.put(&path, Some(&alice.access_token), json!({"presence": "unavailable", "status_msg": "lunch"})).await.0,
        StatusCode::OK
    );
    let (status, seen) = h.get(&path, Some(&bob.access_token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((seen["presence"].as_str(), seen["status_msg"].as_str()), (Some("unavailable"), Some("lunch")));
    assert_error(&h.get(&path, Some(&stranger.access_token)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_error(
        &h.put(&path, Some(&bob.access_token), json!({"presence": "online"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &h.put(&path, Some(&alice.access_token), json!({"presence": "dancing"})).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );

    let synced = h.sync(&bob, Some(&since), 0, None).await;
    let alice_presence = synced["presence"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["sender"] == alice.user_id.as_str())
        .cloned();
    assert_eq!(alice_presence.unwrap()["content"]["presence"], "unavailable");
}

async fn capabilities_list_room_versions(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let (_, caps) = h.get("/_matrix/client/v3/capabilities", Some(&alice.access_token)).await;
    let versions = &caps["capabilities"]["m.room_versions"];
    assert_eq!(versions["default"], "12");
    assert_eq!(versions["available"], json!({"10": "stable", "11": "stable", "12": "stable"}));
}
