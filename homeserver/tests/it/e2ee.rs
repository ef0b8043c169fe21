//! End-to-end encryption support: keys, claims, to-device messages, device lists,
//! cross-signing, key backup, and two vodozemac clients talking through the server.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use myelin_homeserver::backend_tests;
use vodozemac::megolm::{GroupSession, InboundGroupSession, MegolmMessage, SessionConfig as MegolmConfig};
use vodozemac::olm::{Account as OlmAccount, OlmMessage, SessionConfig as OlmConfig};

use crate::support::*;

backend_tests!(
    keys_upload_query_and_claim,
    forged_device_keys_are_refused,
    one_time_keys_are_claimed_once,
    to_device_messages_are_acknowledged_not_lost,
    device_lists_reach_the_right_users,
    cross_signing_keys_and_signatures,
    key_backup_versions_and_etags,
    olm_and_megolm_through_the_server,
);

/// Canonical JSON of an object without `signatures` and `unsigned`: what gets signed.
fn signing_bytes(object: &Value) -> String {
    let object: ruma_common::CanonicalJsonObject = serde_json::from_value(object.clone()).unwrap();
    ruma_signatures::to_canonical_json_string_for_signing(&object).unwrap()
}

/// A client device with real Olm keys.
struct Device {
    account: Account,
    olm: OlmAccount,
}

impl Device {
    fn new(account: Account) -> Self {
        Self { account, olm: OlmAccount::new() }
    }

    fn ed25519(&self) -> String {
        self.olm.ed25519_key().to_base64()
    }

    fn curve25519(&self) -> String {
        self.olm.curve25519_key().to_base64()
    }

    /// The device's keys, signed by its Ed25519 key.
    fn device_keys(&self) -> Value {
        let (user, device) = (&self.account.user_id, &self.account.device_id);
        let mut keys = json!({
            "user_id": user,
            "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {format!("curve25519:{device}"): self.curve25519(), format!("ed25519:{device}"): self.ed25519()},
        });
        let signature = self.olm.sign(signing_bytes(&keys)).to_base64();
        keys["signatures"] = json!({user.clone(): {format!("ed25519:{device}"): signature}});
        keys
    }

    /// Signs a key object the way clients sign one-time keys.
    fn signed_key(&self, key: String, fallback: bool) -> Value {
        let mut object = json!({"key": key});
        if fallback {
            object["fallback"] = true.into();
        }
        let signature = self.olm.sign(signing_bytes(&object)).to_base64();
        object["signatures"] =
            json!({self.account.user_id.clone(): {format!("ed25519:{}", self.account.device_id): signature}});
        object
    }

    fn one_time_keys(&mut self, count: usize) -> Value {
        self.olm.generate_one_time_keys(count);
        let keys: serde_json::Map<String, Value> = self
            .olm
            .one_time_keys()
            .into_iter()
            .map(|(id, key)| (format!("signed_curve25519:{}", id.to_base64()), self.signed_key(key.to_base64(), false)))
            .collect();
        self.olm.mark_keys_as_published();
        Value::Object(keys)
    }

    fn fallback_key(&mut self) -> Value {
        self.olm.generate_fallback_key();
        let keys: serde_json::Map<String, Value> = self
            .olm
            .fallback_key()
            .into_iter()
            .map(|(id, key)| (format!("signed_curve25519:{}", id.to_base64()), self.signed_key(key.to_base64(), true)))
            .collect();
        Value::Object(keys)
    }

    fn token(&self) -> Option<&str> {
        Some(&self.account.access_token)
    }
}

async fn upload(h: &Harness, device: &Device, body: Value) -> (StatusCode, Value) {
    h.post("/_matrix/client/v3/keys/upload", device.token(), body).await
}

async fn keys_upload_query_and_claim(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let mut alice = Device::new(h.register("alice", "pw").await);
    let bob = Device::new(h.register("bob", "pw").await);

    let otks = alice.one_time_keys(3);
    let fallback = alice.fallback_key();
    let (status, counts) = upload(
        &h,
        &alice,
        json!({"device_keys": alice.device_keys(), "one_time_keys": otks, "fallback_keys": fallback}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{counts}");
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 3);
    // Uploading the same keys again changes nothing.
    let (status, counts) = upload(&h, &alice, json!({"one_time_keys": otks})).await;
    assert_eq!((status, &counts["one_time_key_counts"]["signed_curve25519"]), (StatusCode::OK, &json!(3)));

    let query = json!({"device_keys": {alice.account.user_id.clone(): []}});
    let (status, found) = h.post("/_matrix/client/v3/keys/query", bob.token(), query).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let keys = &found["device_keys"][&alice.account.user_id][&alice.account.device_id];
    assert_eq!(keys["keys"][format!("ed25519:{}", alice.account.device_id)], alice.ed25519());
    assert!(keys["unsigned"].is_object());
    let mut without_unsigned = keys.clone();
    without_unsigned.as_object_mut().unwrap().remove("unsigned");
    assert_eq!(without_unsigned, alice.device_keys(), "the keys come back exactly as signed");

    // Three one-time keys, then the fallback key, again and again.
    let claim = json!({"one_time_keys": {alice.account.user_id.clone(): {alice.account.device_id.clone(): "signed_curve25519"}}});
    let mut claimed = Vec::new();
    for _ in 0..5 {
        let (status, body) = h.post("/_matrix/client/v3/keys/claim", bob.token(), claim.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let keys = body["one_time_keys"][&alice.account.user_id][&alice.account.device_id].as_object().unwrap().clone();
        assert_eq!(keys.len(), 1);
        claimed.push(keys.into_iter().next().unwrap());
    }
    let fallback_id = fallback.as_object().unwrap().keys().next().unwrap();
    let otk_ids: Vec<&String> = claimed[..3].iter().map(|(id, _)| id).collect();
    assert!(otk_ids.iter().all(|id| otks.get(id.as_str()).is_some()), "{otk_ids:?}");
    assert_eq!((&claimed[3].0, &claimed[4].0), (fallback_id, fallback_id));
    assert_eq!(claimed[3].1["fallback"], true);

    // Alice's sync tells her to upload more and to replace the used fallback key.
    let sync = h.sync(&alice.account, None, 0, None).await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 0);
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]));
    let fallback = alice.fallback_key();
    upload(&h, &alice, json!({"fallback_keys": fallback})).await;
    let sync = h.sync(&alice.account, None, 0, None).await;
    assert_eq!(sync["device_unused_fallback_key_types"], json!(["signed_curve25519"]));

    // Unknown users and devices are simply absent; other servers are failures.
    let nobody = format!("@nobody:{}", h.server_name());
    let query = json!({"device_keys": {nobody.clone(): [], "@someone:elsewhere.example": []}});
    let (_, found) = h.post("/_matrix/client/v3/keys/query", bob.token(), query).await;
    assert_eq!(found["device_keys"][&nobody], json!({}));
    assert!(found["failures"]["elsewhere.example"].is_object());

    // Deleting the device deletes its keys.
    let path = format!("/_matrix/client/v3/devices/{}", alice.account.device_id);
    let auth = json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw"}});
    let (status, body) = h.call("DELETE", &path, alice.token(), Some(auth)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let query = json!({"device_keys": {alice.account.user_id.clone(): []}});
    let (_, found) = h.post("/_matrix/client/v3/keys/query", bob.token(), query).await;
    assert_eq!(found["device_keys"][&alice.account.user_id], json!({}));
}

async fn forged_device_keys_are_refused(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = Device::new(h.register("alice", "pw").await);
    let mallory = Device::new(h.register("mallory", "pw").await);

    // Keys claiming to be someone else's.
    let response = upload(&h, &mallory, json!({"device_keys": alice.device_keys()})).await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    // Changed after signing.
    let mut keys = alice.device_keys();
    keys["algorithms"] = json!(["m.olm.v1.curve25519-aes-sha2"]);
    assert_error(
        &upload(&h, &alice, json!({"device_keys": keys})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_SIGNATURE",
    );
    // Signed by another key.
    let mut keys = alice.device_keys();
    let forged = mallory.olm.sign(signing_bytes(&keys)).to_base64();
    keys["signatures"][&alice.account.user_id][format!("ed25519:{}", alice.account.device_id)] = forged.into();
    assert_error(
        &upload(&h, &alice, json!({"device_keys": keys})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_SIGNATURE",
    );
    // Unsigned.
    let mut keys = alice.device_keys();
    keys.as_object_mut().unwrap().remove("signatures");
    assert_error(
        &upload(&h, &alice, json!({"device_keys": keys})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_SIGNATURE",
    );
    // A one-time key ID reused with a different key.
    let first = json!({"one_time_keys": {"signed_curve25519:AAAA": {"key": "one"}}});
    let again = json!({"one_time_keys": {"signed_curve25519:AAAA": {"key": "two"}}});
    assert_eq!(upload(&h, &alice, first).await.0, StatusCode::OK);
    assert_error(&upload(&h, &alice, again).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    // Nothing of the forgeries was stored.
    let (_, found) = h
        .post(
            "/_matrix/client/v3/keys/query",
            mallory.token(),
            json!({"device_keys": {alice.account.user_id.clone(): []}}),
        )
        .await;
    assert_eq!(found["device_keys"][&alice.account.user_id], json!({}));
}

async fn one_time_keys_are_claimed_once(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let mut alice = Device::new(h.register("alice", "pw").await);
    let bob = Device::new(h.register("bob", "pw").await);
    let otks = alice.one_time_keys(20);
    assert_eq!(upload(&h, &alice, json!({"one_time_keys": otks})).await.0, StatusCode::OK);

    let claim = json!({"one_time_keys": {alice.account.user_id.clone(): {alice.account.device_id.clone(): "signed_curve25519"}}});
    let claims = (0..30).map(|_| h.post("/_matrix/client/v3/keys/claim", bob.token(), claim.clone()));
    let mut ids = Vec::new();
    for (status, body) in futures_util::future::join_all(claims).await {
        assert_eq!(status, StatusCode::OK, "{body}");
        if let Some(keys) = body["one_time_keys"][&alice.account.user_id][&alice.account.device_id].as_object() {
            ids.extend(keys.keys().cloned());
        }
    }
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!((ids.len(), distinct.len()), (20, 20), "each key exactly once, no fallback was uploaded");
}

async fn to_device_messages_are_acknowledged_not_lost(backend: TestBackend) {
    let mut h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let alice2 = h.login("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let initial = h.sync(&alice, None, 0, None).await;
    let since = initial["next_batch"].as_str().unwrap().to_owned();

    let send = |txn: &str, device: &str, n: i64| {
        let path = format!("/_matrix/client/v3/sendToDevice/m.test/{txn}");
        let body = json!({"messages": {alice.user_id.clone(): {device.to_owned(): {"n": n}}}});
        (path, body)
    };
    let (path, body) = send("t1", &alice.device_id, 1);
    assert_eq!(h.put(&path, Some(&bob.access_token), body.clone()).await.0, StatusCode::OK);
    // The same transaction again sends nothing more.
    assert_eq!(h.put(&path, Some(&bob.access_token), body).await.0, StatusCode::OK);
    let (path, body) = send("t2", "*", 2);
    assert_eq!(h.put(&path, Some(&bob.access_token), body).await.0, StatusCode::OK);

    let n = |sync: &Value| -> Vec<i64> {
        sync["to_device"]["events"].as_array().unwrap().iter().map(|e| e["content"]["n"].as_i64().unwrap()).collect()
    };
    let first = h.sync(&alice, Some(&since), 0, None).await;
    assert_eq!(n(&first), [1, 2]);
    assert_eq!(first["to_device"]["events"][0]["sender"], bob.user_id);
    assert_eq!(first["to_device"]["events"][0]["type"], "m.test");
    assert_eq!(n(&h.sync(&alice2, Some(&since), 0, None).await), [2], "`*` reaches every device");

    // Not acknowledged yet (the client syncs again from the same token): delivered again,
    // also after a restart.
    h = h.restart().await;
    assert_eq!(n(&h.sync(&alice, Some(&since), 0, None).await), [1, 2]);
    // Acknowledged by syncing from the next token: gone for good.
    let next = first["next_batch"].as_str().unwrap();
    let after = h.sync(&alice, Some(next), 0, None).await;
    assert_eq!(n(&after), Vec::<i64>::new());
    assert_eq!(n(&h.sync(&alice, Some(&since), 0, None).await), Vec::<i64>::new());

    // A long-polling sync wakes for a to-device message.
    let next = after["next_batch"].as_str().unwrap().to_owned();
    let (path, body) = send("t3", &alice.device_id, 3);
    let (woken, _) = tokio::join!(h.sync(&alice, Some(&next), 10_000, None), async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        h.put(&path, Some(&bob.access_token), body).await
    });
    assert_eq!(n(&woken), [3]);
}

async fn device_lists_reach_the_right_users(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = Device::new(h.register("alice", "pw").await);
    let bob = Device::new(h.register("bob", "pw").await);
    let carol = Device::new(h.register("carol", "pw").await);
    let room = h.create_room(&alice.account, json!({"preset": "public_chat"})).await;
    assert_eq!(h.membership(&bob.account, &room, "join", None).await.0, StatusCode::OK);
    let since = |sync: &Value| sync["next_batch"].as_str().unwrap().to_owned();
    let alice_since = since(&h.sync(&alice.account, None, 0, None).await);
    let carol_since = since(&h.sync(&carol.account, None, 0, None).await);

    assert_eq!(upload(&h, &bob, json!({"device_keys": bob.device_keys()})).await.0, StatusCode::OK);
    let alice_sync = h.sync(&alice.account, Some(&alice_since), 0, None).await;
    assert_eq!(alice_sync["device_lists"]["changed"], json!([bob.account.user_id]));
    let carol_sync = h.sync(&carol.account, Some(&carol_since), 0, None).await;
    assert_eq!(carol_sync["device_lists"]["changed"], json!([]), "carol shares no room with bob");
    let (_, changes) = h
        .get(&format!("/_matrix/client/v3/keys/changes?from={alice_since}&to={}", since(&alice_sync)), alice.token())
        .await;
    assert_eq!(changes["changed"], json!([bob.account.user_id]));

    // Carol joins: alice hears of her (a new room-mate), carol hears of alice and bob.
    let alice_since = since(&alice_sync);
    let carol_since = since(&carol_sync);
    assert_eq!(h.membership(&carol.account, &room, "join", None).await.0, StatusCode::OK);
    let alice_sync = h.sync(&alice.account, Some(&alice_since), 0, None).await;
    assert_eq!(alice_sync["device_lists"]["changed"], json!([carol.account.user_id]));
    let carol_sync = h.sync(&carol.account, Some(&carol_since), 0, None).await;
    let mut seen: Vec<String> = serde_json::from_value(carol_sync["device_lists"]["changed"].clone()).unwrap();
    seen.sort();
    let mut expected = vec![alice.account.user_id.clone(), bob.account.user_id.clone()];
    expected.sort();
    assert_eq!(seen, expected);

    // Bob leaves the only room he shared with alice: `left`.
    let alice_since = since(&alice_sync);
    assert_eq!(h.membership(&bob.account, &room, "leave", None).await.0, StatusCode::OK);
    let alice_sync = h.sync(&alice.account, Some(&alice_since), 0, None).await;
    assert_eq!(alice_sync["device_lists"]["left"], json!([bob.account.user_id]));
    assert_eq!(alice_sync["device_lists"]["changed"], json!([]));
}

/// A cross-signing key pair.
struct CrossKey {
    key: ed25519_dalek::SigningKey,
}

impl CrossKey {
    fn new() -> Self {
        Self { key: ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng) }
    }

    fn public(&self) -> String {
        STANDARD_NO_PAD.encode(self.key.verifying_key().as_bytes())
    }

    fn sign(&self, user_id: &str, object: &mut Value) {
        use ed25519_dalek::Signer;
        let signature = STANDARD_NO_PAD.encode(self.key.sign(signing_bytes(object).as_bytes()).to_bytes());
        if !object["signatures"].is_object() {
            object["signatures"] = json!({});
        }
        if !object["signatures"][user_id].is_object() {
            object["signatures"][user_id] = json!({});
        }
        object["signatures"][user_id][format!("ed25519:{}", self.public())] = signature.into();
    }

    fn object(&self, user_id: &str, usage: &str) -> Value {
        json!({"user_id": user_id, "usage": [usage], "keys": {format!("ed25519:{}", self.public()): self.public()}})
    }
}

async fn cross_signing_keys_and_signatures(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = Device::new(h.register("alice", "pw").await);
    let bob = Device::new(h.register("bob", "pw").await);
    assert_eq!(upload(&h, &alice, json!({"device_keys": alice.device_keys()})).await.0, StatusCode::OK);
    let user = alice.account.user_id.clone();
    let (master, self_signing, user_signing) = (CrossKey::new(), CrossKey::new(), CrossKey::new());
    let master_key = master.object(&user, "master");
    let mut ssk = self_signing.object(&user, "self_signing");
    master.sign(&user, &mut ssk);
    let mut usk = user_signing.object(&user, "user_signing");
    master.sign(&user, &mut usk);

    // A self-signing key not signed by the master key is refused.
    let unsigned = json!({"master_key": master_key, "self_signing_key": self_signing.object(&user, "self_signing")});
    let response = h.post("/_matrix/client/v3/keys/device_signing/upload", alice.token(), unsigned).await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_INVALID_SIGNATURE");

    // The first upload needs no password; repeating it neither; replacing it does.
    let keys = json!({"master_key": master_key, "self_signing_key": ssk, "user_signing_key": usk});
    let (status, body) = h.post("/_matrix/client/v3/keys/device_signing/upload", alice.token(), keys.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = h.post("/_matrix/client/v3/keys/device_signing/upload", alice.token(), keys).await;
    assert_eq!(status, StatusCode::OK);
    let other = CrossKey::new();
    let replace = json!({"master_key": other.object(&user, "master")});
    let (status, body) = h.post("/_matrix/client/v3/keys/device_signing/upload", alice.token(), replace).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["flows"].is_array() && body["session"].is_string());

    // Alice signs her device with her self-signing key.
    let mut device = alice.device_keys();
    self_signing.sign(&user, &mut device);
    let body = json!({user.clone(): {alice.account.device_id.clone(): device}});
    let (status, result) = h.post("/_matrix/client/v3/keys/signatures/upload", alice.token(), body).await;
    assert_eq!((status, &result["failures"]), (StatusCode::OK, &json!({})), "{result}");
    // A forged signature is reported as a failure.
    let mut device = alice.device_keys();
    CrossKey::new().sign(&user, &mut device);
    let forged_sig = device["signatures"][&user]
        .as_object()
        .unwrap()
        .keys()
        .find(|k| !k.ends_with(&alice.account.device_id))
        .unwrap()
        .clone();
    let value = device["signatures"][&user][&forged_sig].clone();
    device["signatures"][&user].as_object_mut().unwrap().remove(&forged_sig);
    device["signatures"][&user][format!("ed25519:{}", self_signing.public())] = value;
    let body = json!({user.clone(): {alice.account.device_id.clone(): device}});
    let (_, result) = h.post("/_matrix/client/v3/keys/signatures/upload", alice.token(), body).await;
    assert_eq!(result["failures"][&user][&alice.account.device_id]["errcode"], "M_INVALID_SIGNATURE");

    // Bob sees alice's master and self-signing keys and the signature on her device, not her
    // user-signing key; alice sees her user-signing key.
    let query = json!({"device_keys": {user.clone(): []}});
    let (_, seen) = h.post("/_matrix/client/v3/keys/query", bob.token(), query.clone()).await;
    assert_eq!(seen["master_keys"][&user]["keys"], master_key["keys"]);
    assert_eq!(seen["self_signing_keys"][&user]["keys"], ssk["keys"]);
    assert!(seen["user_signing_keys"].get(&user).is_none());
    let device_sigs = &seen["device_keys"][&user][&alice.account.device_id]["signatures"][&user];
    assert!(device_sigs[format!("ed25519:{}", self_signing.public())].is_string(), "{device_sigs}");
    let (_, own) = h.post("/_matrix/client/v3/keys/query", alice.token(), query).await;
    assert_eq!(own["user_signing_keys"][&user]["keys"], usk["keys"]);
}

async fn key_backup_versions_and_etags(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let t = Some(alice.access_token.as_str());
    assert_error(&h.get("/_matrix/client/v3/room_keys/version", t).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let algorithm = "m.megolm_backup.v1.curve25519-aes-sha2";
    let (status, created) = h
        .post(
            "/_matrix/client/v3/room_keys/version",
            t,
            json!({"algorithm": algorithm, "auth_data": {"public_key": "abc"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let v1 = created["version"].as_str().unwrap().to_owned();
    let (_, current) = h.get("/_matrix/client/v3/room_keys/version", t).await;
    assert_eq!((current["version"].as_str(), &current["count"]), (Some(v1.as_str()), &json!(0)));
    let etag0 = current["etag"].as_str().unwrap().to_owned();

    let key = |index: i64, verified: bool| json!({"first_message_index": index, "forwarded_count": 0, "is_verified": verified, "session_data": {"ciphertext": format!("c{index}")}});
    let path = |room: &str, session: &str, version: &str| {
        format!("/_matrix/client/v3/room_keys/keys/{room}/{session}?version={version}")
    };
    let (status, updated) = h.put(&path("!r:x", "s1", &v1), t, key(5, false)).await;
    assert_eq!((status, &updated["count"]), (StatusCode::OK, &json!(1)), "{updated}");
    let etag1 = updated["etag"].as_str().unwrap().to_owned();
    assert_ne!(etag1, etag0);
    // A worse key (higher index) is not stored and leaves the etag alone; a better one is.
    let (_, same) = h.put(&path("!r:x", "s1", &v1), t, key(9, false)).await;
    assert_eq!(same["etag"], etag1);
    let (_, better) = h.put(&path("!r:x", "s1", &v1), t, key(2, false)).await;
    assert_ne!(better["etag"], etag1);
    let (_, stored) = h.get(&path("!r:x", "s1", &v1), t).await;
    assert_eq!(stored["first_message_index"], 2);
    let body =
        json!({"rooms": {"!r:x": {"sessions": {"s2": key(0, true)}}, "!q:x": {"sessions": {"s3": key(0, false)}}}});
    let (_, all) = h.put(&format!("/_matrix/client/v3/room_keys/keys?version={v1}"), t, body).await;
    assert_eq!(all["count"], 3);
    let (_, room) = h.get(&format!("/_matrix/client/v3/room_keys/keys/!r:x?version={v1}"), t).await;
    assert_eq!(room["sessions"].as_object().unwrap().len(), 2);
    let (_, empty) = h.get(&format!("/_matrix/client/v3/room_keys/keys/!none:x?version={v1}"), t).await;
    assert_eq!(empty, json!({"sessions": {}}));

    // A new version becomes current; the old one takes no more keys.
    let (_, created) =
        h.post("/_matrix/client/v3/room_keys/version", t, json!({"algorithm": algorithm, "auth_data": {}})).await;
    let v2 = created["version"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    let response = h.put(&path("!r:x", "s9", &v1), t, key(0, false)).await;
    assert_error(&response, StatusCode::FORBIDDEN, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(response.1["current_version"], v2);
    let update = json!({"algorithm": "other", "auth_data": {}});
    assert_error(
        &h.put(&format!("/_matrix/client/v3/room_keys/version/{v2}"), t, update).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let (_, deleted) = h.call("DELETE", &format!("/_matrix/client/v3/room_keys/keys/!r:x?version={v1}"), t, None).await;
    assert_eq!(deleted["count"], 1);
    assert_eq!(
        h.call("DELETE", &format!("/_matrix/client/v3/room_keys/version/{v1}"), t, None).await.0,
        StatusCode::OK
    );
    assert_error(
        &h.get(&format!("/_matrix/client/v3/room_keys/version/{v1}"), t).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    // Another user sees none of it.
    let bob = h.register("bob", "pw").await;
    let response = h.get(&format!("/_matrix/client/v3/room_keys/version/{v2}"), Some(&bob.access_token)).await;
    assert_error(&response, StatusCode::NOT_FOUND, "M_NOT_FOUND");
}

/// Alice and Bob's devices establish an Olm session through the server, Alice shares a Megolm
/// room key over it, and Bob decrypts her encrypted room message. The server stores no plaintext.
async fn olm_and_megolm_through_the_server(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = Device::new(h.register("alice", "pw").await);
    let mut bob = Device::new(h.register("bob", "pw").await);
    let otks = bob.one_time_keys(5);
    assert_eq!(
        upload(&h, &bob, json!({"device_keys": bob.device_keys(), "one_time_keys": otks})).await.0,
        StatusCode::OK
    );
    assert_eq!(upload(&h, &alice, json!({"device_keys": alice.device_keys()})).await.0, StatusCode::OK);
    let room = h.create_room(&alice.account, json!({"preset": "private_chat", "invite": [bob.account.user_id]})).await;
    assert_eq!(h.membership(&bob.account, &room, "join", None).await.0, StatusCode::OK);
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.encryption");
    let (status, _) = h.put(&path, alice.token(), json!({"algorithm": "m.megolm.v1.aes-sha2"})).await;
    assert_eq!(status, StatusCode::OK);
    let bob_since = h.sync(&bob.account, None, 0, None).await["next_batch"].as_str().unwrap().to_owned();

    // Alice: find Bob's device, claim a one-time key, open an Olm session.
    let (bob_user, bob_device) = (bob.account.user_id.clone(), bob.account.device_id.clone());
    let (_, found) =
        h.post("/_matrix/client/v3/keys/query", alice.token(), json!({"device_keys": {bob_user.clone(): []}})).await;
    let bob_keys = &found["device_keys"][&bob_user][&bob_device];
    let bob_curve = bob_keys["keys"][format!("curve25519:{bob_device}")].as_str().unwrap().to_owned();
    let claim = json!({"one_time_keys": {bob_user.clone(): {bob_device.clone(): "signed_curve25519"}}});
    let (_, claimed) = h.post("/_matrix/client/v3/keys/claim", alice.token(), claim).await;
    let otk = claimed["one_time_keys"][&bob_user][&bob_device].as_object().unwrap().values().next().unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut olm = alice
        .olm
        .create_outbound_session(
            OlmConfig::version_1(),
            vodozemac::Curve25519PublicKey::from_base64(&bob_curve).unwrap(),
            vodozemac::Curve25519PublicKey::from_base64(&otk).unwrap(),
        )
        .unwrap();

    // A Megolm session for the room; its key goes to Bob as an encrypted to-device m.room_key.
    let mut group = GroupSession::new(MegolmConfig::version_1());
    let room_key = json!({
        "type": "m.room_key",
        "content": {"algorithm": "m.megolm.v1.aes-sha2", "room_id": room, "session_id": group.session_id(), "session_key": group.session_key().to_base64()},
        "sender": alice.account.user_id, "recipient": bob_user, "recipient_keys": {"ed25519": bob.ed25519()},
        "keys": {"ed25519": alice.ed25519()},
    });
    let ciphertext = serde_json::to_value(olm.encrypt(room_key.to_string()).unwrap()).unwrap();
    let to_device = json!({
        "algorithm": "m.olm.v1.curve25519-aes-sha2",
        "sender_key": alice.curve25519(),
        "ciphertext": {bob_curve.clone(): ciphertext},
    });
    let body = json!({"messages": {bob_user.clone(): {bob_device.clone(): to_device}}});
    let (status, _) = h.put("/_matrix/client/v3/sendToDevice/m.room.encrypted/k1", alice.token(), body).await;
    assert_eq!(status, StatusCode::OK);

    // The room message, encrypted with Megolm.
    let plaintext = "the secret plan is in the blue folder";
    let event = json!({"type": "m.room.message", "content": {"msgtype": "m.text", "body": plaintext}, "room_id": room});
    let encrypted = json!({
        "algorithm": "m.megolm.v1.aes-sha2",
        "sender_key": alice.curve25519(),
        "device_id": alice.account.device_id,
        "session_id": group.session_id(),
        "ciphertext": group.encrypt(event.to_string()).to_base64(),
    });
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/m1");
    assert_eq!(h.put(&path, alice.token(), encrypted).await.0, StatusCode::OK);

    // Bob: the to-device message opens the Olm session, the room key opens the Megolm session,
    // and the timeline event decrypts.
    let sync = h.sync(&bob.account, Some(&bob_since), 0, None).await;
    let message = sync["to_device"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.encrypted")
        .unwrap()
        .clone();
    assert_eq!(message["sender"], alice.account.user_id);
    let olm_message: OlmMessage = serde_json::from_value(message["content"]["ciphertext"][&bob_curve].clone()).unwrap();
    let OlmMessage::PreKey(pre_key) = olm_message else { panic!("the first message is a pre-key message") };
    let sender_key =
        vodozemac::Curve25519PublicKey::from_base64(message["content"]["sender_key"].as_str().unwrap()).unwrap();
    let inbound = bob.olm.create_inbound_session(OlmConfig::version_1(), sender_key, &pre_key).unwrap();
    let room_key: Value = serde_json::from_slice(&inbound.plaintext).unwrap();
    assert_eq!(room_key["type"], "m.room_key");
    let session_key =
        vodozemac::megolm::SessionKey::from_base64(room_key["content"]["session_key"].as_str().unwrap()).unwrap();
    let mut inbound_group = InboundGroupSession::new(&session_key, MegolmConfig::version_1());
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    let encrypted = timeline.iter().find(|e| e["type"] == "m.room.encrypted").unwrap();
    let megolm = MegolmMessage::from_base64(encrypted["content"]["ciphertext"].as_str().unwrap()).unwrap();
    let decrypted: Value = serde_json::from_slice(&inbound_group.decrypt(&megolm).unwrap().plaintext).unwrap();
    assert_eq!(decrypted["content"]["body"], plaintext);

    // The server holds ciphertext only: no plaintext in its database or its log.
    let dump = h.server.database_dump().await;
    assert!(dump.contains(&group.session_id()), "the dump holds the stored events");
    assert!(!dump.contains(plaintext), "plaintext in the database");
    assert!(!dump.contains(&group.session_key().to_base64()), "room key in the database");
}
