//! What was acknowledged survives a restart: accounts, devices, tokens, profile, signing key.

use myelin_homeserver::backend_tests;

use crate::support::*;

backend_tests!(restart_keeps_users_and_signing_key);

async fn restart_keeps_users_and_signing_key(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let t = Some(alice.access_token.as_str());
    h.put(&format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id), t, json!({"displayname": "Alice"}))
        .await;
    let key_path = h.server.config.data_dir.join("signing.key");
    let key_before = std::fs::read_to_string(&key_path).unwrap();
    assert!(key_before.starts_with("ed25519 a_"), "{key_before}");

    let h = h.restart().await;
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), key_before, "the signing key survives unchanged");
    let (status, me) = h.whoami(&alice.access_token).await;
    assert_eq!((status, me["user_id"].as_str()), (StatusCode::OK, Some(alice.user_id.as_str())));
    h.login("alice", "pw").await;
    assert_eq!(
        h.get(&format!("/_matrix/client/v3/profile/{}", alice.user_id), None).await.1,
        json!({"displayname": "Alice"})
    );
    assert_error(
        &h.post("/_matrix/client/v3/register", None, json!({"username": "alice"})).await,
        StatusCode::BAD_REQUEST,
        "M_USER_IN_USE",
    );
}
