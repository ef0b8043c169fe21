//! A client generated from the committed OpenAPI document registers, logs in and calls
//! whoami against a live server.

use myelin_homeserver::test_support::{TestBackend, TestServer};
use myelin_openapi_client::{Client, Error, types};

#[tokio::test]
async fn generated_client_registers_logs_in_and_calls_whoami() {
    let server = TestServer::start(TestBackend::Sqlite).await;
    let client = Client::new(&server.base_url);

    let versions = client.get_versions().await.unwrap();
    assert!(versions.versions.iter().any(|v| v == "v1.19"));

    // Registration is user-interactive: the first attempt answers 401 with a session.
    let mut request = types::RegisterRequest {
        auth: None,
        device_id: None,
        inhibit_login: None,
        initial_device_display_name: Some("progenitor".into()),
        password: Some("generated-pw".into()),
        refresh_token: None,
        username: Some("gen".into()),
    };
    let challenge = match client.register(None, &request).await {
        Err(Error::ErrorResponse(response)) => {
            assert_eq!(response.status().as_u16(), 401);
            response.into_inner()
        }
        other => panic!("expected a 401 challenge, got {other:?}"),
    };
    assert_eq!(challenge.flows[0].stages, ["m.login.dummy"]);
    request.auth = Some(types::AuthenticationData {
        type_: Some("m.login.dummy".into()),
        session: challenge.session,
        ..Default::default()
    });
    let registered = client.register(Some(types::AccountKind::User), &request).await.unwrap().into_inner();
    assert_eq!(registered.user_id, format!("@gen:{}", server.config.server_name));

    let login = types::LoginRequest {
        type_: "m.login.password".into(),
        identifier: Some(types::UserIdentifier { type_: "m.id.user".into(), user: Some("gen".into()) }),
        password: Some("generated-pw".into()),
        device_id: None,
        initial_device_display_name: None,
        refresh_token: None,
        user: None,
    };
    let logged_in = client.login(&login).await.unwrap().into_inner();

    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {}", logged_in.access_token);
    headers.insert(reqwest::header::AUTHORIZATION, bearer.parse().unwrap());
    let authed =
        Client::new_with_client(&server.base_url, reqwest::Client::builder().default_headers(headers).build().unwrap());
    let me = authed.get_token_owner().await.unwrap().into_inner();
    assert_eq!(
        (me.user_id.as_str(), me.device_id.as_str()),
        (registered.user_id.as_str(), logged_in.device_id.as_str())
    );

    // Errors arrive typed, with the Matrix errcode.
    login_with_wrong_password(&client).await;
}

async fn login_with_wrong_password(client: &Client) {
    let login = types::LoginRequest {
        type_: "m.login.password".into(),
        identifier: None,
        password: Some("wrong".into()),
        device_id: None,
        initial_device_display_name: None,
        refresh_token: None,
        user: Some("gen".into()),
    };
    match client.login(&login).await {
        Err(Error::ErrorResponse(response)) => {
            assert_eq!(response.status().as_u16(), 403);
            assert_eq!(response.into_inner().errcode, "M_FORBIDDEN");
        }
        other => panic!("expected M_FORBIDDEN, got {other:?}"),
    }
}
