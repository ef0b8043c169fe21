//! Device keys and one-time keys of users on another server, through the client API of one's
//! own server, which asks the other over federation.

use myelin_federation_tests::{TestCa, User, federated_server, https_client};
use myelin_homeserver::test_support::TestBackend;
use serde_json::{Value, json};

/// Signs `object` (without `signatures`/`unsigned`) with the device's Ed25519 key.
fn sign(account: &vodozemac::olm::Account, user_id: &str, device_id: &str, object: &mut Value) {
    let canonical = ruma_common::CanonicalJsonValue::try_from(object.clone()).unwrap().to_string();
    let signature = account.sign(canonical.as_bytes()).to_base64();
    object["signatures"] = json!({ user_id: { format!("ed25519:{device_id}"): signature } });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_remote_users_are_queried_and_claimed_over_federation() {
    let ca = TestCa::new();
    let mut a = federated_server(&ca, TestBackend::Sqlite).await;
    let mut b = federated_server(&ca, TestBackend::Sqlite).await;
    let alice = User::register(&a, "alice").await;
    let bob = User::register(&b, "bob").await;
    let bob_device = bob.get("/account/whoami").await["device_id"].as_str().unwrap().to_owned();

    // Bob's device publishes signed identity keys and two one-time keys.
    let mut account = vodozemac::olm::Account::new();
    let mut device_keys = json!({
        "user_id": bob.user_id,
        "device_id": bob_device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{bob_device}"): account.curve25519_key().to_base64(),
            format!("ed25519:{bob_device}"): account.ed25519_key().to_base64(),
        },
    });
    sign(&account, &bob.user_id, &bob_device, &mut device_keys);
    account.generate_one_time_keys(2);
    let mut one_time_keys = serde_json::Map::new();
    for (id, key) in account.one_time_keys() {
        let mut signed = json!({ "key": key.to_base64() });
        sign(&account, &bob.user_id, &bob_device, &mut signed);
        one_time_keys.insert(format!("signed_curve25519:{}", id.to_base64()), signed);
    }
    let uploaded = bob
        .call(
            reqwest::Method::POST,
            "/keys/upload",
            Some(json!({ "device_keys": device_keys, "one_time_keys": one_time_keys })),
        )
        .await;
    assert_eq!(uploaded.0, 200, "{}", uploaded.1);

    // Alice, on A, queries Bob's keys: A asks B.
    let (status, answer) =
        alice.call(reqwest::Method::POST, "/keys/query", Some(json!({ "device_keys": { &bob.user_id: [] } }))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["failures"], json!({}), "{answer}");
    let got = &answer["device_keys"][&bob.user_id][&bob_device];
    assert_eq!(got["keys"], device_keys["keys"]);
    assert_eq!(got["signatures"], device_keys["signatures"], "the signatures travel unchanged");

    // She claims his one-time keys: each once, then none is left (he has no fallback key).
    let claim = json!({ "one_time_keys": { &bob.user_id: { &bob_device: "signed_curve25519" } } });
    let mut claimed = Vec::new();
    for _ in 0..3 {
        let (status, answer) = alice.call(reqwest::Method::POST, "/keys/claim", Some(claim.clone())).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["failures"], json!({}));
        if let Some(keys) = answer["one_time_keys"][&bob.user_id][&bob_device].as_object() {
            claimed.extend(keys.keys().cloned());
        }
    }
    claimed.sort();
    let mut published: Vec<String> = one_time_keys.keys().cloned().collect();
    published.sort();
    assert_eq!(claimed, published, "each one-time key handed out exactly once");

    // A server nobody runs is reported as a failure, the rest still answered.
    let nowhere = "@ghost:localhost:1";
    let (status, answer) = alice
        .call(reqwest::Method::POST, "/keys/query", Some(json!({ "device_keys": { &bob.user_id: [], nowhere: [] } })))
        .await;
    assert_eq!(status, 200);
    assert!(answer["failures"]["localhost:1"].is_object(), "{answer}");
    assert!(answer["device_keys"][&bob.user_id][&bob_device].is_object());

    // B's device list endpoint, asked directly with A's signature.
    let a_key =
        myelin_homeserver::crypto::SigningKey::load_or_generate(&a.config.data_dir.join("signing.key")).unwrap();
    let path = format!("/_matrix/federation/v1/user/devices/{}", myelin_federation_tests::encode(&bob.user_id));
    let header = myelin_homeserver::federation::authorization::XMatrix::sign(
        &a_key,
        &a.config.server_name,
        &b.config.server_name,
        "GET",
        &path,
        None,
    )
    .unwrap()
    .to_header();
    let devices: Value = https_client(&ca)
        .get(format!("https://{}{path}", b.config.server_name))
        .header("Authorization", header)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(devices["user_id"], bob.user_id.as_str());
    assert_eq!(devices["devices"][0]["device_id"], bob_device.as_str(), "{devices}");
    assert_eq!(devices["devices"][0]["keys"]["keys"], device_keys["keys"]);
    assert!(devices["stream_id"].as_i64().unwrap() > 0);

    a.stop().await;
    b.stop().await;
}
