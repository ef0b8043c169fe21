//! Bad input gets a Matrix error with the right status, never a 500: malformed JSON, wrong
//! content types, huge bodies, unknown endpoints and methods, rate limits.

use myelin_homeserver::backend_tests;

use crate::support::*;

backend_tests!(
    malformed_bodies,
    oversized_bodies,
    unknown_endpoints_and_methods,
    login_and_registration_are_rate_limited,
    behind_a_proxy_limits_are_per_forwarded_client,
    sends_joins_and_uploads_are_limited_per_user_not_for_admins,
);

async fn raw(
    h: &Harness,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let mut req = h.http.post(h.url(path)).body(body);
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    decode(req.send().await.unwrap()).await
}

async fn malformed_bodies(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let login = "/_matrix/client/v3/login";
    let json = Some("application/json");
    assert_error(&raw(&h, login, json, "{not json").await, StatusCode::BAD_REQUEST, "M_NOT_JSON");
    // No body reads as `{}`: a missing required field.
    assert_error(&raw(&h, login, json, "").await, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    assert_error(&raw(&h, login, json, vec![0xff, 0xfe, 0x00]).await, StatusCode::BAD_REQUEST, "M_NOT_JSON");
    assert_error(&raw(&h, login, Some("text/plain"), "hello").await, StatusCode::BAD_REQUEST, "M_NOT_JSON");
    assert_error(
        &raw(&h, login, Some("application/x-www-form-urlencoded"), "type=m.login.password").await,
        StatusCode::BAD_REQUEST,
        "M_NOT_JSON",
    );
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_error(&raw(&h, login, json, deep).await, StatusCode::BAD_REQUEST, "M_NOT_JSON");
    // Valid JSON of the wrong shape.
    assert_error(&raw(&h, login, json, "[]").await, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    assert_error(&raw(&h, login, json, r#"{"type": {"nested": true}}"#).await, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    assert_error(
        &raw(&h, "/_matrix/client/v3/register", json, r#"{"inhibit_login": "yes"}"#).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    // JSON sent with another content type is judged by its body, as curl -d sends it.
    let (status, body) =
        raw(&h, "/_matrix/client/v3/register", Some("application/x-www-form-urlencoded"), r#"{"username":"curl"}"#)
            .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["session"].is_string());
}

async fn oversized_bodies(backend: TestBackend) {
    let h = Harness::start_with(backend, |c| c.limits.max_request_body = 100_000).await;
    let huge = format!(r#"{{"type":"m.login.password","password":"{}"}}"#, "x".repeat(200_000));
    assert_error(
        &raw(&h, "/_matrix/client/v3/login", Some("application/json"), huge.clone()).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    // Without a Content-Length (chunked), the limit is enforced while reading.
    let stream = futures_stream(huge.into_bytes());
    let (status, body) =
        raw(&h, "/_matrix/client/v3/login", Some("application/json"), reqwest::Body::wrap_stream(stream)).await;
    assert_error(&(status, body), StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
    // Just under the limit is fine (and then a normal login failure).
    let fits = format!(r#"{{"type":"m.login.password","user":"x","password":"{}"}}"#, "x".repeat(90_000));
    assert_error(
        &raw(&h, "/_matrix/client/v3/login", Some("application/json"), fits).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

fn futures_stream(
    bytes: Vec<u8>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = bytes.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    tokio_stream::iter(chunks)
}

async fn unknown_endpoints_and_methods(backend: TestBackend) {
    let h = Harness::start(backend).await;
    assert_error(&h.get("/_matrix/client/v3/no/such/thing", None).await, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
    assert_error(&h.get("/definitely/not/matrix", None).await, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
    assert_error(
        &h.put("/_matrix/client/v3/login", None, json!({})).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
    );
    assert_error(
        &h.call("DELETE", "/_matrix/client/versions", None, None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
    );
    // NUL cannot be part of an identifier (nor stored by PostgreSQL): refused, not a 500.
    assert_error(&h.get("/_matrix/client/v3/profile/%00", None).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let nul_body = raw(&h, "/_matrix/client/v3/login", Some("application/json"), r#"{"type": "a\u0000b"}"#).await;
    assert_error(&nul_body, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    // A path that does not decode to UTF-8 is a bad parameter, not a server error.
    let alice = h.register("alice", "pw").await;
    let invalid_utf8 = h.get("/_matrix/client/v3/devices/%FF", Some(&alice.access_token)).await;
    assert_error(&invalid_utf8, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
}

async fn login_and_registration_are_rate_limited(backend: TestBackend) {
    let h = Harness::start_with(backend, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.login = myelin_homeserver::config::Rate { per_second: 0.1, burst: 3 };
        c.rate_limits.registration = myelin_homeserver::config::Rate { per_second: 0.1, burst: 2 };
    })
    .await;
    h.register("alice", "pw").await;
    let limited = h.post("/_matrix/client/v3/register", None, json!({"username": "bob"})).await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED");
    let wait = limited.1["retry_after_ms"].as_u64().unwrap();
    assert!(wait > 0 && wait <= 10_000, "{wait}");

    for _ in 0..3 {
        assert_error(&h.try_login("alice", "wrong").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    }
    let resp = h
        .http
        .post(h.url("/_matrix/client/v3/login"))
        .json(&json!({"type": "m.login.password", "user": "alice", "password": "pw"}))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    let limited = decode(resp).await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED");
    assert!(limited.1["retry_after_ms"].as_u64().is_some());
}

/// Behind a reverse proxy every client connects from the proxy's address: with
/// `listen.x_forwarded` each gets its own bucket, keyed by what the proxy appended.
async fn behind_a_proxy_limits_are_per_forwarded_client(backend: TestBackend) {
    let configure = |x_forwarded: bool| {
        move |c: &mut myelin_homeserver::Config| {
            c.rate_limits.enabled = true;
            c.rate_limits.registration = myelin_homeserver::config::Rate { per_second: 0.01, burst: 2 };
            c.listen.x_forwarded = x_forwarded;
        }
    };
    let available = |h: &Harness, forwarded: &'static str, name: &str| {
        let request = h.http.get(h.url(&format!("/_matrix/client/v3/register/available?username={name}")));
        async move { request.header("X-Forwarded-For", forwarded).send().await.unwrap().status() }
    };
    let h = Harness::start_with(backend, configure(true)).await;
    // The client claims 192.0.2.1; the proxy appended the address it saw.
    for name in ["a1", "a2"] {
        assert_eq!(available(&h, "192.0.2.1, 198.51.100.1", name).await, StatusCode::OK);
    }
    assert_eq!(available(&h, "192.0.2.2, 198.51.100.1", "a3").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(available(&h, "198.51.100.2", "b1").await, StatusCode::OK, "another client has its own bucket");

    // Off (the default), the header is the client's word and counts for nothing.
    let h = Harness::start_with(backend, configure(false)).await;
    for name in ["a1", "a2"] {
        assert_eq!(available(&h, "198.51.100.1", name).await, StatusCode::OK);
    }
    assert_eq!(available(&h, "198.51.100.2", "b1").await, StatusCode::TOO_MANY_REQUESTS);
}

async fn sends_joins_and_uploads_are_limited_per_user_not_for_admins(backend: TestBackend) {
    let slow = |burst| myelin_homeserver::config::Rate { per_second: 0.01, burst };
    let h = Harness::start_with(backend, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.message = slow(3);
        c.rate_limits.join = slow(1);
        c.rate_limits.media_upload = slow(2);
        c.admins = vec![format!("@admin:{}", c.server_name)];
    })
    .await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let admin = h.register("admin", "pw").await;
    let room = h.create_room(&alice, json!({"preset": "public_chat"})).await;
    let other = h.create_room(&alice, json!({"preset": "public_chat"})).await;

    for n in 0..3 {
        assert_eq!(h.send_text(&alice, &room, &format!("m{n}")).await.0, StatusCode::OK);
    }
    let limited = h.send_text(&alice, &room, "one too many").await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED");
    assert!(limited.1["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{}", limited.1);
    let state = format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic");
    let topic = h.put(&state, Some(&alice.access_token), json!({"topic": "t"})).await;
    assert_error(&topic, StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED");

    assert_eq!(h.membership(&bob, &room, "join", None).await.0, StatusCode::OK);
    let second = h.membership(&bob, &other, "join", None).await;
    assert_error(&second, StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED");
    assert_eq!(h.send_text(&bob, &room, "bob has his own bucket").await.0, StatusCode::OK);

    let upload =
        async |account: &Account| h.upload(&account.access_token, "text/plain", None, b"bytes".to_vec()).await.0;
    assert_eq!(upload(&alice).await, StatusCode::OK);
    assert_eq!(upload(&alice).await, StatusCode::OK);
    assert_eq!(upload(&alice).await, StatusCode::TOO_MANY_REQUESTS);

    // Administrators are not limited.
    for room in [&room, &other] {
        assert_eq!(h.membership(&admin, room, "join", None).await.0, StatusCode::OK);
    }
    for n in 0..10 {
        assert_eq!(h.send_text(&admin, &room, &format!("admin {n}")).await.0, StatusCode::OK);
    }
    for _ in 0..4 {
        assert_eq!(upload(&admin).await, StatusCode::OK);
    }
}
