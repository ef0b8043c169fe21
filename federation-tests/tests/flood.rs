//! One server's flood cannot crowd out the others: federation requests are limited per origin
//! server (after their signature checked out), so a third server is served while the flooding
//! one gets `429 M_LIMIT_EXCEEDED`.

use myelin_federation_tests::{TestCa, User, encode, federated_server, federated_server_with, federation_url};
use myelin_homeserver::config::Rate;
use myelin_homeserver::crypto::SigningKey;
use myelin_homeserver::federation::authorization::XMatrix;
use myelin_homeserver::test_support::{TestBackend, TestServer};
use serde_json::Value;

/// A signed `GET` of alice's profile from `from` to `to`: status and body.
async fn query(https: &reqwest::Client, from: &TestServer, to: &TestServer, user_id: &str) -> (u16, Value) {
    let key = SigningKey::load_or_generate(&from.config.data_dir.join("signing.key")).unwrap();
    let path = format!("/_matrix/federation/v1/query/profile?user_id={}", encode(user_id));
    let header = XMatrix::sign(&key, &from.config.server_name, &to.config.server_name, "GET", &path, None).unwrap();
    let response = https
        .get(format!("{}{path}", federation_url(to)))
        .header("Authorization", header.to_header())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_server_leaves_the_others_served() {
    let ca = TestCa::new();
    let a = federated_server_with(&ca, TestBackend::Sqlite, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.federation = Rate { per_second: 0.01, burst: 10 };
    })
    .await;
    let flooder = federated_server(&ca, TestBackend::Sqlite).await;
    let bystander = federated_server(&ca, TestBackend::Sqlite).await;
    let alice = User::register(&a, "alice").await;
    let https = myelin_federation_tests::https_client(&ca);

    let mut served = 0;
    let mut limited = None;
    for _ in 0..40 {
        match query(&https, &flooder, &a, &alice.user_id).await {
            (200, _) => served += 1,
            (429, body) => limited = Some(body),
            other => panic!("unexpected answer to the flood: {other:?}"),
        }
    }
    assert_eq!(served, 10, "the burst is served, then the flood is refused");
    let limited = limited.expect("the flood was limited");
    assert_eq!(limited["errcode"], "M_LIMIT_EXCEEDED", "{limited}");
    assert!(limited["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{limited}");

    // The other server, asking while the flood's bucket is empty, is served in full.
    for _ in 0..5 {
        let (status, profile) = query(&https, &bystander, &a, &alice.user_id).await;
        assert_eq!(status, 200, "{profile}");
    }
    assert_eq!(query(&https, &flooder, &a, &alice.user_id).await.0, 429, "still limited");
}
