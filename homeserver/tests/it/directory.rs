//! Aliases, directory visibility and the public room directory.

use myelin_homeserver::backend_tests;

use crate::support::*;

backend_tests!(aliases, public_room_directory);

async fn aliases(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let room = h.create_room(&alice, json!({"preset": "public_chat"})).await;
    let alias = format!("#team:{}", h.server_name());
    let path = format!("/_matrix/client/v3/directory/room/{}", alias.replace('#', "%23"));
    let t = Some(alice.access_token.as_str());

    assert_error(
        &h.put(&path, Some(&bob.access_token), json!({"room_id": room})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_eq!(h.put(&path, t, json!({"room_id": room})).await, (StatusCode::OK, json!({})));
    assert_error(&h.put(&path, t, json!({"room_id": room})).await, StatusCode::CONFLICT, "M_UNKNOWN");
    let (status, resolved) = h.get(&path, None).await;
    assert_eq!((status, resolved["room_id"].as_str()), (StatusCode::OK, Some(room.as_str())));
    assert_eq!(resolved["servers"], json!([h.server_name()]));
    assert_eq!(h.get(&format!("/_matrix/client/v3/rooms/{room}/aliases"), t).await.1, json!({"aliases": [alias]}));
    let foreign = "/_matrix/client/v3/directory/room/%23x:elsewhere.example";
    assert_error(&h.put(foreign, t, json!({"room_id": room})).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");

    assert_error(&h.call("DELETE", &path, Some(&bob.access_token), None).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_eq!(h.call("DELETE", &path, t, None).await.0, StatusCode::OK);
    assert_error(&h.get(&path, None).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    assert_error(&h.call("DELETE", &path, t, None).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
}

async fn public_room_directory(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let big = h.create_room(&alice, json!({"visibility": "public", "preset": "public_chat", "name": "Big Room", "topic": "Everyone", "room_alias_name": "big"})).await;
    let small =
        h.create_room(&alice, json!({"visibility": "public", "preset": "public_chat", "name": "Small Room"})).await;
    h.create_room(&alice, json!({"name": "Hidden"})).await;
    h.membership(&bob, &big, "join", None).await;

    let (status, page) = h.get("/_matrix/client/v3/publicRooms", None).await;
    assert_eq!(status, StatusCode::OK);
    let chunk = page["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 2, "{page}");
    assert_eq!(chunk[0]["room_id"], big.as_str(), "most members first");
    assert_eq!(chunk[0]["num_joined_members"], 2);
    assert_eq!(chunk[0]["name"], "Big Room");
    assert_eq!(chunk[0]["canonical_alias"], format!("#big:{}", h.server_name()));
    assert_eq!(chunk[0]["join_rule"], "public");
    assert_eq!(chunk[1]["room_id"], small.as_str());
    assert_eq!(page["total_room_count_estimate"], 2);

    let (_, first) = h.get("/_matrix/client/v3/publicRooms?limit=1", None).await;
    assert_eq!(first["chunk"].as_array().unwrap().len(), 1);
    let next = first["next_batch"].as_str().unwrap();
    let (_, second) = h.get(&format!("/_matrix/client/v3/publicRooms?limit=1&since={next}"), None).await;
    assert_eq!(second["chunk"][0]["room_id"], small.as_str());
    assert!(second.get("next_batch").is_none());

    let search = json!({"filter": {"generic_search_term": "everyone"}});
    let (_, found) = h.post("/_matrix/client/v3/publicRooms", Some(&bob.access_token), search).await;
    assert_eq!(found["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(found["chunk"][0]["room_id"], big.as_str());

    // Visibility: bob (power 0) may not unlist; alice may.
    let listing = format!("/_matrix/client/v3/directory/list/room/{small}");
    assert_eq!(h.get(&listing, None).await.1, json!({"visibility": "public"}));
    assert_error(
        &h.put(&listing, Some(&bob.access_token), json!({"visibility": "private"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_eq!(h.put(&listing, Some(&alice.access_token), json!({"visibility": "private"})).await.0, StatusCode::OK);
    assert_eq!(h.get(&listing, None).await.1, json!({"visibility": "private"}));
    assert_eq!(h.get("/_matrix/client/v3/publicRooms", None).await.1["chunk"].as_array().unwrap().len(), 1);
    assert_error(
        &h.get("/_matrix/client/v3/directory/list/room/!nope:x", None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}
