//! Events another server sends are checked before they enter a room: a bad signature, a
//! sender of a third server, or an event the authorization rules refuse is rejected; content
//! that does not match its hash is stripped. A well-formed event by the same server passes,
//! so the refusals are the checks', not the harness's.

use myelin_federation_tests::{TestCa, User, encode, federated_server, federation_url, https_client};
use myelin_homeserver::crypto::SigningKey;
use myelin_homeserver::federation::authorization::XMatrix;
use myelin_homeserver::rooms::pdu::{Pdu, PduTemplate, Placement};
use myelin_homeserver::test_support::TestBackend;
use ruma_common::room_version_rules::RoomVersionRules;
use ruma_common::{CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, RoomId, UserId};
use ruma_events::TimelineEventType;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_unauthorized_events_are_refused() {
    let ca = TestCa::new();
    let a = federated_server(&ca, TestBackend::Sqlite).await;
    let b = federated_server(&ca, TestBackend::Postgres).await;
    let alice = User::register(&a, "alice").await;
    let bob = User::register(&b, "bob").await;
    let room = alice.post("/createRoom", json!({ "preset": "public_chat" })).await;
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let b_name = b.config.server_name.clone();
    bob.post(&format!("/join/{}?via={}", encode(&room_id), encode(&a.config.server_name)), json!({})).await;

    // What a new event of bob's builds on, as A sees the room.
    let state = alice.get(&format!("/rooms/{}/state", encode(&room_id))).await;
    let state_id = |kind: &str, key: &str| {
        let event = state.as_array().unwrap().iter().find(|e| e["type"] == kind && e["state_key"] == key);
        EventId::parse(event.unwrap_or_else(|| panic!("no {kind}"))["event_id"].as_str().unwrap()).unwrap()
    };
    let auth_events = vec![state_id("m.room.power_levels", ""), state_id("m.room.member", &bob.user_id)];
    let latest = alice.get(&format!("/rooms/{}/messages?dir=b&limit=1", encode(&room_id))).await;
    let prev = EventId::parse(latest["chunk"][0]["event_id"].as_str().unwrap()).unwrap();

    let b_key = SigningKey::load_or_generate(&b.config.data_dir.join("signing.key")).unwrap();
    let forger = SigningKey::load_or_generate(&tempfile::tempdir().unwrap().path().join("k")).unwrap();
    let room = RoomId::parse(&room_id).unwrap();
    let rules = RoomVersionRules::V12;
    let build = |sender: &str, kind: TimelineEventType, state_key: Option<&str>, content: Value, key: &SigningKey| {
        let placement = Placement {
            room_id: Some(&room),
            rules: &rules,
            prev_events: vec![prev.clone()],
            auth_events: auth_events.clone(),
            depth: 100,
        };
        let template = PduTemplate { kind, state_key: state_key.map(str::to_owned), content };
        template.build(&UserId::parse(sender).unwrap(), placement, MilliSecondsSinceUnixEpoch::now(), key).unwrap()
    };
    let message = |body: &str, key: &SigningKey| {
        build(&bob.user_id, TimelineEventType::RoomMessage, None, json!({ "msgtype": "m.text", "body": body }), key)
    };
    let good = message("good", &b_key);
    let bad_signature = message("forged signature", &forger);
    let mut bad_hash = message("signed content", &b_key);
    let CanonicalJsonValue::Object(content) = bad_hash.json.get_mut("content").unwrap() else { panic!() };
    content.insert("body".into(), CanonicalJsonValue::String("tampered content".into()));
    let bad_hash = Pdu::from_received(bad_hash.json, &rules).unwrap();
    let mallory = format!("@mallory:{}", a.config.server_name);
    let other_server = build(&mallory, TimelineEventType::RoomMessage, None, json!({ "body": "spoofed" }), &b_key);
    // bob has power level 0: changing the power levels fails the authorization rules.
    let levels = json!({ "users": { &bob.user_id: 100 } });
    let unauthorized = build(&bob.user_id, TimelineEventType::RoomPowerLevels, Some(""), levels, &b_key);

    let https = https_client(&ca);
    let pdus: Vec<&Pdu> = vec![&good, &bad_signature, &bad_hash, &other_server, &unauthorized];
    let body = json!({
        "origin": b_name,
        "origin_server_ts": 1,
        "pdus": pdus.iter().map(|p| serde_json::to_value(&p.json).unwrap()).collect::<Vec<_>>(),
    });
    let path = "/_matrix/federation/v1/send/forged-1";
    let content = CanonicalJsonValue::try_from(body.clone()).unwrap();
    let header = XMatrix::sign(&b_key, &b_name, &a.config.server_name, "PUT", path, Some(&content)).unwrap();
    let response = https
        .put(format!("{}{path}", federation_url(&a)))
        .header("Authorization", header.to_header())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.unwrap();
    let result = |pdu: &Pdu| answer["pdus"][pdu.event_id.as_str()].clone();
    assert_eq!(result(&good), json!({}), "{answer:#}");
    assert_eq!(result(&bad_hash), json!({}), "redacted, then accepted: {answer:#}");
    for (what, pdu) in
        [("bad signature", &bad_signature), ("other server", &other_server), ("unauthorized", &unauthorized)]
    {
        assert!(result(pdu)["error"].is_string(), "{what} accepted: {answer:#}");
    }

    let timeline = alice.get(&format!("/rooms/{}/messages?dir=b&limit=50", encode(&room_id))).await;
    let bodies: Vec<&str> = timeline["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, vec!["good"], "only the good message's body is shown");
    let stripped = timeline["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == bad_hash.event_id.as_str());
    assert_eq!(stripped.map(|e| &e["content"]), Some(&json!({})), "the tampered event is stripped");
    let levels = alice.get(&format!("/rooms/{}/state/m.room.power_levels/", encode(&room_id))).await;
    assert_ne!(levels["users"][&bob.user_id], 100);
}
