//! Device management.

use myelin_homeserver::backend_tests;

use crate::support::*;

backend_tests!(list_get_rename, delete_with_password);

async fn list_get_rename(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let a = h.register("alice", "pw").await;
    let b = h.login("alice", "pw").await;
    let other = h.register("bob", "pw").await;

    let (status, list) = h.get("/_matrix/client/v3/devices", Some(&a.access_token)).await;
    assert_eq!(status, StatusCode::OK);
    let devices = list["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    for d in devices {
        assert!(d["last_seen_ts"].is_i64() && d["last_seen_ip"] == "127.0.0.1", "{d}");
    }

    let path = format!("/_matrix/client/v3/devices/{}", b.device_id);
    let (status, device) = h.get(&path, Some(&a.access_token)).await;
    assert_eq!((status, device["device_id"].as_str()), (StatusCode::OK, Some(b.device_id.as_str())));
    assert!(device.get("display_name").is_none(), "absent, not null: {device}");

    assert_eq!(
        h.put(&path, Some(&a.access_token), json!({"display_name": "Laptop"})).await,
        (StatusCode::OK, json!({}))
    );
    assert_eq!(h.get(&path, Some(&a.access_token)).await.1["display_name"], "Laptop");
    assert_eq!(h.put(&path, Some(&a.access_token), json!({})).await.0, StatusCode::OK, "no name: unchanged");
    assert_eq!(h.get(&path, Some(&a.access_token)).await.1["display_name"], "Laptop");

    // Someone else's device does not exist from where bob stands.
    assert_error(&h.get(&path, Some(&other.access_token)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    assert_error(
        &h.put(&path, Some(&other.access_token), json!({"display_name": "x"})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &h.put("/_matrix/client/v3/devices/NOPE", Some(&a.access_token), json!({})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(&h.get("/_matrix/client/v3/devices", None).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
}

async fn delete_with_password(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let a = h.register("carol", "pw").await;
    let b = h.login("carol", "pw").await;
    let c = h.login("carol", "pw").await;
    let d = h.login("carol", "pw").await;
    let path = format!("/_matrix/client/v3/devices/{}", b.device_id);

    // No body at all starts the dance, as clients that send no body on DELETE expect.
    let resp = h.http.delete(h.url(&path)).bearer_auth(&a.access_token).send().await.unwrap();
    let (status, challenge) = decode(resp).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let auth = |password: &str, session: &Value| json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "carol"}, "password": password, "session": session}});

    let (status, retry) =
        h.call("DELETE", &path, Some(&a.access_token), Some(auth("nope", &challenge["session"]))).await;
    assert_eq!((status, retry["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_FORBIDDEN")));
    assert_eq!(h.whoami(&b.access_token).await.0, StatusCode::OK);

    let (status, _) = h.call("DELETE", &path, Some(&a.access_token), Some(auth("pw", &challenge["session"]))).await;
    assert_eq!(status, StatusCode::OK);
    assert_error(&h.whoami(&b.access_token).await, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    assert_error(&h.get(&path, Some(&a.access_token)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    let (status, challenge) = h
        .post(
            "/_matrix/client/v3/delete_devices",
            Some(&a.access_token),
            json!({"devices": [c.device_id, d.device_id]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut body = auth("pw", &challenge["session"]);
    body["devices"] = json!([c.device_id, d.device_id, "ALREADY_GONE"]);
    assert_eq!(h.post("/_matrix/client/v3/delete_devices", Some(&a.access_token), body).await.0, StatusCode::OK);
    for token in [&c.access_token, &d.access_token] {
        assert_error(&h.whoami(token).await, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    }
    assert_eq!(
        h.get("/_matrix/client/v3/devices", Some(&a.access_token)).await.1["devices"].as_array().unwrap().len(),
        1
    );
}
