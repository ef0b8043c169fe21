//! `POST /register` and friends: the UIA dance, username rules, tokens, closed registration.

use myelin_homeserver::backend_tests;

use crate::support::*;

backend_tests!(
    register_happy_path,
    username_errors_come_before_authentication,
    registration_can_be_closed,
    registration_token_flow,
    generated_usernames_and_inhibit_login,
    uia_sessions_are_checked,
    guests_are_refused,
);

const REGISTER: &str = "/_matrix/client/v3/register";

async fn register_happy_path(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let (status, challenge) = h.post(REGISTER, None, json!({"username": "Alice", "password": "pw"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.dummy"]}]));
    assert!(challenge["session"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(challenge.get("errcode").is_none(), "the first 401 is not an error: {challenge}");

    let body = json!({
        "username": "Alice", "password": "pw", "initial_device_display_name": "Jungle Phone",
        "auth": {"type": "m.login.dummy", "session": challenge["session"]},
    });
    let (status, registered) = h.post(REGISTER, None, body).await;
    assert_eq!(status, StatusCode::OK, "{registered}");
    let user_id = format!("@alice:{}", h.server_name());
    assert_eq!(registered["user_id"], user_id.as_str());
    let token = registered["access_token"].as_str().unwrap();
    let (status, me) = h.whoami(token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me, json!({"user_id": user_id, "device_id": registered["device_id"], "is_guest": false}));

    let (_, devices) = h.get("/_matrix/client/v3/devices", Some(token)).await;
    assert_eq!(devices["devices"][0]["display_name"], "Jungle Phone");
    h.login("alice", "pw").await;
}

async fn username_errors_come_before_authentication(backend: TestBackend) {
    let h = Harness::start(backend).await;
    h.register("taken", "pw").await;
    for username in ["taken", "TAKEN"] {
        assert_error(
            &h.post(REGISTER, None, json!({"username": username, "password": "x"})).await,
            StatusCode::BAD_REQUEST,
            "M_USER_IN_USE",
        );
    }
    for username in ["has space", "ünïcode", "_reserved", "12345", "", "a:b"] {
        assert_error(
            &h.post(REGISTER, None, json!({"username": username, "password": "x"})).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_USERNAME",
        );
    }
    let available = "/_matrix/client/v3/register/available";
    assert_eq!(h.get(&format!("{available}?username=free"), None).await, (StatusCode::OK, json!({"available": true})));
    assert_error(&h.get(&format!("{available}?username=taken"), None).await, StatusCode::BAD_REQUEST, "M_USER_IN_USE");
    assert_error(
        &h.get(&format!("{available}?username=b%20d"), None).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_USERNAME",
    );
    assert_error(&h.get(available, None).await, StatusCode::BAD_REQUEST, "M_MISSING_PARAM");
    // Someone else registering the name mid-dance is caught after authentication too.
    let (_, challenge) = h.post(REGISTER, None, json!({"username": "racer", "password": "x"})).await;
    h.register("racer", "other").await;
    let body = json!({"username": "racer", "password": "x", "auth": {"type": "m.login.dummy", "session": challenge["session"]}});
    assert_error(&h.post(REGISTER, None, body).await, StatusCode::BAD_REQUEST, "M_USER_IN_USE");
}

async fn registration_can_be_closed(backend: TestBackend) {
    let h = Harness::start_with(backend, |c| c.registration.enabled = false).await;
    assert_error(
        &h.post(REGISTER, None, json!({"username": "bob", "password": "pw"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &h.get("/_matrix/client/v3/register/available?username=bob", None).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

async fn registration_token_flow(backend: TestBackend) {
    let h = Harness::start_with(backend, |c| c.registration.token = Some("let-me-in".into())).await;
    let validity = "/_matrix/client/v1/register/m.login.registration_token/validity";
    assert_eq!(h.get(&format!("{validity}?token=let-me-in"), None).await, (StatusCode::OK, json!({"valid": true})));
    assert_eq!(h.get(&format!("{validity}?token=nope"), None).await, (StatusCode::OK, json!({"valid": false})));

    let (status, challenge) = h.post(REGISTER, None, json!({"username": "carol", "password": "pw"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.registration_token"]}]));
    let session = challenge["session"].clone();

    // m.login.dummy is not a flow here.
    let body = json!({"username": "carol", "password": "pw", "auth": {"type": "m.login.dummy", "session": session}});
    let (status, retry) = h.post(REGISTER, None, body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{retry}");
    assert!(retry["errcode"].is_string() && retry["flows"].is_array(), "{retry}");

    let body = json!({"username": "carol", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "wrong", "session": session}});
    let (status, retry) = h.post(REGISTER, None, body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(retry["errcode"], "M_UNAUTHORIZED");
    assert_eq!(retry["session"], session);

    let body = json!({"username": "carol", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "let-me-in", "session": session}});
    let (status, registered) = h.post(REGISTER, None, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{registered}");
    // A finished session cannot register a second account.
    let mut again = body;
    again["username"] = json!("carol2");
    assert_error(&h.post(REGISTER, None, again).await, StatusCode::BAD_REQUEST, "M_UNKNOWN");
}

async fn generated_usernames_and_inhibit_login(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let (_, challenge) = h.post(REGISTER, None, json!({"password": "pw"})).await;
    let body = json!({"password": "pw", "auth": {"type": "m.login.dummy", "session": challenge["session"]}});
    let (status, generated) = h.post(REGISTER, None, body).await;
    assert_eq!(status, StatusCode::OK, "{generated}");
    let user_id = generated["user_id"].as_str().unwrap();
    assert!(user_id.starts_with('@') && user_id.ends_with(&format!(":{}", h.server_name())), "{user_id}");

    let (_, challenge) =
        h.post(REGISTER, None, json!({"username": "quiet", "password": "pw", "inhibit_login": true})).await;
    let body = json!({"username": "quiet", "password": "pw", "inhibit_login": true, "auth": {"type": "m.login.dummy", "session": challenge["session"]}});
    let (status, quiet) = h.post(REGISTER, None, body).await;
    assert_eq!(status, StatusCode::OK, "{quiet}");
    assert!(quiet.get("access_token").is_none() && quiet.get("device_id").is_none(), "{quiet}");
    h.login("quiet", "pw").await;
}

async fn uia_sessions_are_checked(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let body = json!({"username": "dave", "password": "pw", "auth": {"type": "m.login.dummy", "session": "made-up"}});
    assert_error(&h.post(REGISTER, None, body).await, StatusCode::BAD_REQUEST, "M_UNKNOWN");
    // A client that skips the first request still gets a session and completes.
    let body = json!({"username": "dave", "password": "pw", "auth": {"type": "m.login.dummy"}});
    let (status, registered) = h.post(REGISTER, None, body).await;
    assert_eq!(status, StatusCode::OK, "{registered}");
    // An unknown stage type is a failed attempt, not a success.
    let (_, challenge) = h.post(REGISTER, None, json!({"username": "erin"})).await;
    let body = json!({"username": "erin", "auth": {"type": "m.login.recaptcha", "session": challenge["session"]}});
    let (status, retry) = h.post(REGISTER, None, body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(retry["errcode"].is_string(), "{retry}");
}

async fn guests_are_refused(backend: TestBackend) {
    let h = Harness::start(backend).await;
    assert_error(
        &h.post(&format!("{REGISTER}?kind=guest"), None, json!({})).await,
        StatusCode::FORBIDDEN,
        "M_GUEST_ACCESS_FORBIDDEN",
    );
    assert_error(
        &h.post(&format!("{REGISTER}?kind=robot"), None, json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}
