//! Login, logout, token invalidation and password changes.

use myelin_homeserver::backend_tests;

use crate::support::*;

backend_tests!(
    login_forms_and_failures,
    device_reuse_replaces_its_token,
    logout_kills_tokens,
    tokens_in_query_and_header,
    password_change
);

const LOGIN: &str = "/_matrix/client/v3/login";

async fn login_forms_and_failures(backend: TestBackend) {
    let h = Harness::start(backend).await;
    assert_eq!(h.get(LOGIN, None).await, (StatusCode::OK, json!({"flows": [{"type": "m.login.password"}]})));
    let alice = h.register("alice", "s3cret").await;

    let by_localpart = h.login("alice", "s3cret").await;
    let by_user_id = h.login(&alice.user_id, "s3cret").await;
    assert_eq!(by_localpart.user_id, alice.user_id);
    assert_eq!(by_user_id.user_id, alice.user_id);
    assert_ne!(by_localpart.access_token, by_user_id.access_token);
    assert_ne!(by_localpart.device_id, by_user_id.device_id, "each login without device_id is a new device");
    let (status, legacy) =
        h.post(LOGIN, None, json!({"type": "m.login.password", "user": "alice", "password": "s3cret"})).await;
    assert_eq!(status, StatusCode::OK, "{legacy}");
    assert_eq!(legacy["well_known"]["m.homeserver"]["base_url"], format!("http://{}", h.server_name()));

    assert_error(&h.try_login("alice", "wrong").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_error(&h.try_login("nobody", "s3cret").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_error(&h.try_login("@alice:elsewhere.example", "s3cret").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_error(
        &h.post(LOGIN, None, json!({"type": "m.login.token", "token": "x"})).await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
    );
    assert_error(
        &h.post(LOGIN, None, json!({"type": "m.login.password", "password": "x"})).await,
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
    );
    assert_error(&h.post(LOGIN, None, json!({"password": "x"})).await, StatusCode::BAD_REQUEST, "M_BAD_JSON");
}

async fn device_reuse_replaces_its_token(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let first = h.register("bob", "pw").await;
    let body = json!({
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "pw",
        "device_id": first.device_id, "initial_device_display_name": "ignored for known devices",
    });
    let (status, again) = h.post(LOGIN, None, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["device_id"], first.device_id.as_str());
    assert_error(&h.whoami(&first.access_token).await, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    assert_eq!(h.whoami(again["access_token"].as_str().unwrap()).await.0, StatusCode::OK);
    let (_, devices) = h.get("/_matrix/client/v3/devices", again["access_token"].as_str()).await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1);
}

async fn logout_kills_tokens(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let a = h.register("carol", "pw").await;
    let b = h.login("carol", "pw").await;
    let c = h.login("carol", "pw").await;

    assert_eq!(
        h.post("/_matrix/client/v3/logout", Some(&a.access_token), json!({})).await,
        (StatusCode::OK, json!({}))
    );
    let dead = h.whoami(&a.access_token).await;
    assert_error(&dead, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    assert_eq!(dead.1["soft_logout"], false);
    let (_, devices) = h.get("/_matrix/client/v3/devices", Some(&b.access_token)).await;
    let ids: Vec<_> = devices["devices"].as_array().unwrap().iter().map(|d| d["device_id"].as_str().unwrap()).collect();
    assert!(!ids.contains(&a.device_id.as_str()), "logout deletes the device: {ids:?}");

    // An empty body is fine for logout.
    let resp = h.http.post(h.url("/_matrix/client/v3/logout/all")).bearer_auth(&b.access_token).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    for token in [&b.access_token, &c.access_token] {
        assert_error(&h.whoami(token).await, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    }
    assert_error(
        &h.post("/_matrix/client/v3/logout", None, json!({})).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

async fn tokens_in_query_and_header(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let dan = h.register("dan", "pw").await;
    let (status, me) =
        h.get(&format!("/_matrix/client/v3/account/whoami?access_token={}", dan.access_token), None).await;
    assert_eq!((status, me["user_id"].as_str()), (StatusCode::OK, Some(dan.user_id.as_str())));
    assert_error(
        &h.get("/_matrix/client/v3/account/whoami?access_token=bogus", None).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    assert_error(&h.whoami("bogus").await, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    let basic = h
        .http
        .get(h.url("/_matrix/client/v3/account/whoami"))
        .header("Authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_error(&decode(basic).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
}

async fn password_change(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let current = h.register("erin", "old-pw").await;
    let other = h.login("erin", "old-pw").await;
    let path = "/_matrix/client/v3/account/password";

    let (status, challenge) = h.post(path, Some(&current.access_token), json!({"new_password": "new-pw"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.password"]}]));
    let session = challenge["session"].clone();

    let wrong = json!({"new_password": "new-pw", "auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "erin"}, "password": "guess", "session": session}});
    let (status, retry) = h.post(path, Some(&current.access_token), wrong).await;
    assert_eq!((status, retry["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_FORBIDDEN")), "{retry}");
    assert!(retry["flows"].is_array());

    // Another user's session cannot be borrowed.
    let mallory = h.register("mallory", "pw").await;
    let borrowed =
        json!({"new_password": "x", "auth": {"type": "m.login.password", "password": "pw", "session": session}});
    assert_error(&h.post(path, Some(&mallory.access_token), borrowed).await, StatusCode::BAD_REQUEST, "M_UNKNOWN");

    let right = json!({"new_password": "new-pw", "auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": current.user_id}, "password": "old-pw", "session": session}});
    assert_eq!(h.post(path, Some(&current.access_token), right).await, (StatusCode::OK, json!({})));
    assert_eq!(h.whoami(&current.access_token).await.0, StatusCode::OK, "the current device stays");
    assert_error(&h.whoami(&other.access_token).await, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    assert_error(&h.try_login("erin", "old-pw").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let keeper = h.login("erin", "new-pw").await;

    // logout_devices: false keeps other sessions.
    let (_, challenge) = h.post(path, Some(&current.access_token), json!({"new_password": "newer"})).await;
    let keep = json!({"new_password": "newer", "logout_devices": false, "auth": {
        "type": "m.login.password", "user": "erin", "password": "new-pw", "session": challenge["session"]}});
    assert_eq!(h.post(path, Some(&current.access_token), keep).await.0, StatusCode::OK);
    assert_eq!(h.whoami(&keeper.access_token).await.0, StatusCode::OK);
}
