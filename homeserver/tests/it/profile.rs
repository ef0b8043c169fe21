//! Profiles: the defined fields, custom fields, limits and permissions.

use myelin_homeserver::backend_tests;

use crate::support::*;

backend_tests!(set_get_delete_fields, profile_rules);

async fn set_get_delete_fields(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let base = format!("/_matrix/client/v3/profile/{}", alice.user_id);
    assert_eq!(h.get(&base, None).await, (StatusCode::OK, json!({})));

    let t = Some(alice.access_token.as_str());
    assert_eq!(
        h.put(&format!("{base}/displayname"), t, json!({"displayname": "Alice"})).await,
        (StatusCode::OK, json!({}))
    );
    assert_eq!(
        h.put(&format!("{base}/avatar_url"), t, json!({"avatar_url": "mxc://example.org/abc"})).await.0,
        StatusCode::OK
    );
    assert_eq!(h.put(&format!("{base}/m.tz"), t, json!({"m.tz": "Europe/London"})).await.0, StatusCode::OK);
    assert_eq!(
        h.put(&format!("{base}/org.example.job"), t, json!({"org.example.job": {"title": "Queen"}})).await.0,
        StatusCode::OK
    );

    assert_eq!(h.get(&format!("{base}/displayname"), None).await, (StatusCode::OK, json!({"displayname": "Alice"})));
    let (status, profile) = h.get(&base, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        profile,
        json!({"displayname": "Alice", "avatar_url": "mxc://example.org/abc", "m.tz": "Europe/London", "org.example.job": {"title": "Queen"}})
    );

    assert_eq!(h.call("DELETE", &format!("{base}/m.tz"), t, None).await, (StatusCode::OK, json!({})));
    assert_error(&h.get(&format!("{base}/m.tz"), None).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    // User IDs may arrive percent-encoded.
    let encoded =
        format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id.replace('@', "%40").replace(':', "%3A"));
    assert_eq!(h.get(&encoded, None).await.1, json!({"displayname": "Alice"}));
}

async fn profile_rules(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let base = format!("/_matrix/client/v3/profile/{}", alice.user_id);
    let t = Some(alice.access_token.as_str());

    assert_error(
        &h.put(&format!("{base}/displayname"), Some(&bob.access_token), json!({"displayname": "Mallory"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &h.put(&format!("{base}/displayname"), None, json!({"displayname": "x"})).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    assert_error(
        &h.call("DELETE", &format!("{base}/displayname"), Some(&bob.access_token), None).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &h.put(&format!("{base}/displayname"), t, json!({"other": "x"})).await,
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
    );
    assert_error(
        &h.put(&format!("{base}/avatar_url"), t, json!({"avatar_url": "https://evil.example/x.png"})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_error(
        &h.put(&format!("{base}/displayname"), t, json!({"displayname": 42})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_error(
        &h.put(&format!("{base}/Not_A_Key"), t, json!({"Not_A_Key": 1})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let long_key = format!("org.{}", "a".repeat(300));
    assert_error(
        &h.put(&format!("{base}/{long_key}"), t, json!({long_key.clone(): 1})).await,
        StatusCode::BAD_REQUEST,
        "M_KEY_TOO_LARGE",
    );
    let big = "x".repeat(40 * 1024);
    assert_eq!(h.put(&format!("{base}/org.example.one"), t, json!({"org.example.one": big})).await.0, StatusCode::OK);
    assert_error(
        &h.put(&format!("{base}/org.example.two"), t, json!({"org.example.two": big})).await,
        StatusCode::BAD_REQUEST,
        "M_PROFILE_TOO_LARGE",
    );

    let ghost = format!("/_matrix/client/v3/profile/@ghost:{}", h.server_name());
    assert_error(&h.get(&ghost, None).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    assert_error(&h.get(&format!("{ghost}/displayname"), None).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
}
