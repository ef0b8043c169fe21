//! Two servers find each other, fetch and check each other's keys, and answer signed queries;
//! forged or misdirected requests are refused, and private addresses are off limits unless
//! allowed.

use myelin_federation_tests::{
    TestCa, User, encode, federated_server, federated_server_with, federation_url, https_client,
};
use myelin_homeserver::crypto::SigningKey;
use myelin_homeserver::federation::authorization::XMatrix;
use myelin_homeserver::federation::keys::verify_key_document;
use myelin_homeserver::test_support::TestBackend;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_exchange_keys_and_answer_signed_queries() {
    let ca = TestCa::new();
    let mut a = federated_server(&ca, TestBackend::Sqlite).await;
    let mut b = federated_server(&ca, TestBackend::Postgres).await;
    let https = https_client(&ca);

    // The key document: self-signed, over TLS with the server's certificate.
    let document: Value =
        https.get(format!("{}/_matrix/key/v2/server", federation_url(&a))).send().await.unwrap().json().await.unwrap();
    let keys = verify_key_document(&document, &a.config.server_name).unwrap();
    assert_eq!(keys.len(), 1);
    assert!(document["valid_until_ts"].as_i64().unwrap() > 0);
    let version: Value = https
        .get(format!("{}/_matrix/federation/v1/version", federation_url(&b)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["server"]["name"], "Myelin");

    // A user on B reads the profile of a user on A: B asks A, signed; A checks B's signature
    // with B's key, which it fetches from B.
    let alice = User::register(&a, "alice").await;
    let bob = User::register(&b, "bob").await;
    alice.put(&format!("/profile/{}/displayname", encode(&alice.user_id)), json!({ "displayname": "Alice A." })).await;
    let profile = bob.get(&format!("/profile/{}", encode(&alice.user_id))).await;
    assert_eq!(profile["displayname"], "Alice A.");
    let field = bob.get(&format!("/profile/{}/displayname", encode(&alice.user_id))).await;
    assert_eq!(field, json!({ "displayname": "Alice A." }));
    let (status, body) = bob
        .call(reqwest::Method::GET, &format!("/profile/{}", encode(&format!("@nobody:{}", a.config.server_name))), None)
        .await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");

    // A public room on A, found from B by alias and in A's directory.
    let (status, created) = alice
        .call(
            reqwest::Method::POST,
            "/createRoom",
            Some(
                json!({ "name": "Lobby", "room_alias_name": "lobby", "visibility": "public", "preset": "public_chat" }),
            ),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let alias = format!("#lobby:{}", a.config.server_name);
    let resolved = bob.get(&format!("/directory/room/{}", encode(&alias))).await;
    assert_eq!(resolved["room_id"], created["room_id"]);
    assert_eq!(resolved["servers"], json!([a.config.server_name]));
    let (status, body) = bob
        .call(
            reqwest::Method::GET,
            &format!("/directory/room/{}", encode(&format!("#nothing:{}", a.config.server_name))),
            None,
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let listed = bob.get(&format!("/publicRooms?server={}", encode(&a.config.server_name))).await;
    assert_eq!(listed["chunk"][0]["room_id"], created["room_id"], "{listed}");
    assert_eq!(listed["chunk"][0]["name"], "Lobby");
    let (status, searched) = bob
        .call(
            reqwest::Method::POST,
            &format!("/publicRooms?server={}", encode(&a.config.server_name)),
            Some(json!({ "filter": { "generic_search_term": "lob" } })),
        )
        .await;
    assert_eq!(status, 200, "{searched}");
    assert_eq!(searched["chunk"].as_array().unwrap().len(), 1);

    // B now serves A's keys as a notary, with its own signature added.
    let notary: Value = https
        .get(format!("{}/_matrix/key/v2/query/{}", federation_url(&b), a.config.server_name))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let served = &notary["server_keys"][0];
    assert_eq!(served["server_name"], a.config.server_name.as_str());
    assert!(served["signatures"][&b.config.server_name].is_object(), "{notary}");
    verify_key_document(served, &a.config.server_name).unwrap();
    let batch: Value = https
        .post(format!("{}/_matrix/key/v2/query", federation_url(&a)))
        .json(&json!({ "server_keys": { &b.config.server_name: {} } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(batch["server_keys"][0]["server_name"], b.config.server_name.as_str(), "A fetched B's keys: {batch}");

    // Requests straight to A's federation listener, signed by hand.
    let path = format!("/_matrix/federation/v1/query/profile?user_id={}", encode(&alice.user_id));
    let url = format!("{}{path}", federation_url(&a));
    let b_key = SigningKey::load_or_generate(&b.config.data_dir.join("signing.key")).unwrap();
    let a_name = a.config.server_name.clone();
    let b_name = b.config.server_name.clone();
    let send = |authorization: Option<String>| {
        let mut request = https.get(&url);
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Correctly signed by B's key: answered.
    let good = XMatrix::sign(&b_key, &b_name, &a_name, "GET", &path, None).unwrap().to_header();
    let (status, body) = send(Some(good)).await;
    assert_eq!((status, &body["displayname"]), (200, &json!("Alice A.")), "{body}");
    // A signed request missing a parameter: the Matrix error for it.
    let bare = "/_matrix/federation/v1/query/profile";
    let header = XMatrix::sign(&b_key, &b_name, &a_name, "GET", bare, None).unwrap().to_header();
    let response =
        https.get(format!("{}{bare}", federation_url(&a))).header("Authorization", header).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["errcode"], "M_MISSING_PARAM");
    // No signature, another key claiming to be B, a request meant for another server, or a
    // signature over another path: refused before the endpoint runs.
    let forger = SigningKey::load_or_generate(&tempfile::tempdir().unwrap().path().join("k")).unwrap();
    let forged = XMatrix::sign(&forger, &b_name, &a_name, "GET", &path, None).unwrap().to_header();
    let misdirected = XMatrix::sign(&b_key, &b_name, "elsewhere.example", "GET", &path, None).unwrap().to_header();
    let other_path = XMatrix::sign(&b_key, &b_name, &a_name, "GET", "/_matrix/federation/v1/query/directory", None)
        .unwrap()
        .to_header();
    for (what, header) in
        [("none", None), ("forged", Some(forged)), ("misdirected", Some(misdirected)), ("other path", Some(other_path))]
    {
        let (status, body) = send(header).await;
        assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "{what}: {body}");
    }

    // A rotates its signing key: the old one stays published as old, and B, which cached the
    // old one, picks up the new one when A's requests are signed with it.
    a.stop().await;
    let old_id = keys[0].0.clone();
    let data = a.config.data_dir.clone();
    let new_key = SigningKey::rotate(&data.join("signing.key"), &data.join("old_signing_keys.json"), 1).unwrap();
    assert_ne!(new_key.key_id(), old_id);
    let mut a = a.restart().await;
    let alice = alice.on(&a);
    let document: Value =
        https.get(format!("{}/_matrix/key/v2/server", federation_url(&a))).send().await.unwrap().json().await.unwrap();
    assert!(document["verify_keys"][new_key.key_id()].is_object(), "{document}");
    assert_eq!(document["old_verify_keys"][&old_id]["expired_ts"], 1, "{document}");
    verify_key_document(&document, &a.config.server_name).unwrap();
    bob.put(&format!("/profile/{}/displayname", encode(&bob.user_id)), json!({ "displayname": "Bob B." })).await;
    assert_eq!(alice.get(&format!("/profile/{}", encode(&bob.user_id))).await["displayname"], "Bob B.");

    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_and_untrusted_certificates_are_refused() {
    let ca = TestCa::new();
    let mut a = federated_server(&ca, TestBackend::Sqlite).await;
    let alice = User::register(&a, "alice").await;
    let path = format!("/profile/{}", encode(&alice.user_id));

    // A server that keeps outbound requests off private addresses: localhost is refused.
    let mut guarded =
        federated_server_with(&ca, TestBackend::Sqlite, |c| c.federation.allow_private_addresses = false).await;
    let carol = User::register(&guarded, "carol").await;
    let (status, body) = carol.call(reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error"].as_str().unwrap().contains("private"), "{body}");

    // A server that does not trust the test CA: the TLS handshake fails.
    let mut untrusting = federated_server_with(&ca, TestBackend::Sqlite, |c| c.federation.trusted_ca = None).await;
    let dave = User::register(&untrusting, "dave").await;
    let (status, body) = dave.call(reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error"].as_str().unwrap().to_lowercase().contains("certificate"), "{body}");

    for server in [&mut a, &mut guarded, &mut untrusting] {
        server.stop().await;
    }
}
