//! Versions, well-known documents, capabilities, CORS and the served OpenAPI document.

use myelin_homeserver::backend_tests;

use crate::support::*;

backend_tests!(versions_and_well_known, capabilities_need_a_token, cors_on_every_response, openapi_and_docs_are_served);

async fn versions_and_well_known(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let (status, body) = h.get("/_matrix/client/versions", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["versions"].as_array().unwrap().iter().any(|v| v == "v1.19"), "{body}");
    assert!(body["unstable_features"].is_object());

    let (status, body) = h.get("/.well-known/matrix/client", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["m.homeserver"]["base_url"], format!("http://{}", h.server_name()));

    assert_error(&h.get("/.well-known/matrix/server", None).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let delegated = Harness::start_with(backend, |c| c.well_known.server = Some("matrix.example.org:443".into())).await;
    let (status, body) = delegated.get("/.well-known/matrix/server", None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"m.server": "matrix.example.org:443"})));
}

async fn capabilities_need_a_token(backend: TestBackend) {
    let h = Harness::start(backend).await;
    assert_error(&h.get("/_matrix/client/v3/capabilities", None).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    let alice = h.register("alice", "pw-alice").await;
    let (status, body) = h.get("/_matrix/client/v3/capabilities", Some(&alice.access_token)).await;
    assert_eq!(status, StatusCode::OK);
    let caps = &body["capabilities"];
    assert_eq!(caps["m.change_password"]["enabled"], true);
    assert_eq!(caps["m.3pid_changes"]["enabled"], false);
    assert_eq!(caps["m.profile_fields"]["enabled"], true);
}

async fn cors_on_every_response(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let preflight = h
        .http
        .request(reqwest::Method::OPTIONS, h.url("/_matrix/client/v3/login"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), StatusCode::OK);
    // An OPTIONS request must not run the endpoint: a logout preflight leaves tokens alone.
    let alice = h.register("alice", "pw").await;
    let preflight_logout = h
        .http
        .request(reqwest::Method::OPTIONS, h.url("/_matrix/client/v3/logout"))
        .bearer_auth(&alice.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(preflight_logout.status(), StatusCode::OK);
    assert_eq!(h.whoami(&alice.access_token).await.0, StatusCode::OK);

    for resp in [preflight, h.http.get(h.url("/_matrix/client/v3/nonexistent")).send().await.unwrap()] {
        let headers = resp.headers();
        assert_eq!(headers["access-control-allow-origin"], "*");
        assert_eq!(headers["access-control-allow-methods"], "GET, POST, PUT, DELETE, OPTIONS");
        assert_eq!(headers["access-control-allow-headers"], "X-Requested-With, Content-Type, Authorization");
    }
}

async fn openapi_and_docs_are_served(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let served = h.http.get(h.url("/_myelin/openapi.json")).send().await.unwrap().text().await.unwrap();
    let served: Value = serde_json::from_str(&served).unwrap();
    let generated: Value = serde_json::from_str(&myelin_homeserver::api::openapi_json()).unwrap();
    assert_eq!(served, generated);
    assert!(served["paths"]["/_matrix/client/v3/register"]["post"].is_object());
    let docs = h.http.get(h.url("/_myelin/docs")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("swagger"), "the docs page is Swagger UI");
}
