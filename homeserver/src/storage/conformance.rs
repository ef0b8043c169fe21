//! One storage test suite, run against SQLite and PostgreSQL.

use super::*;
use crate::test_support::{TestBackend, TestDatabase};

crate::backend_tests!(
    users_are_unique,
    logins_replace_device_tokens,
    devices_and_tokens_die_together,
    profile_fields,
    uia_sessions,
    migrations_are_idempotent,
    federation_queue_and_server_keys
);

async fn open(backend: TestBackend) -> (TestDatabase, Storage) {
    let db = TestDatabase::create(backend).await;
    let storage = Storage::connect(&db.url, 4).await.unwrap();
    (db, storage)
}

fn login<'a>(device_id: &'a str, token_hash: &'a str, now: i64) -> NewLogin<'a> {
    NewLogin { device_id, initial_display_name: Some("phone"), token_hash, ip: Some("127.0.0.1"), now }
}

async fn users_are_unique(backend: TestBackend) {
    let (_db, s) = open(backend).await;
    s.create_user("@a:hs", Some("hash"), 1, Some(login("D1", "t1", 1))).await.unwrap();
    let again = s.create_user("@a:hs", None, 2, None).await;
    assert!(matches!(again, Err(Error::Conflict { .. })), "{again:?}");
    assert!(s.user_exists("@a:hs").await.unwrap());
    assert!(!s.user_exists("@b:hs").await.unwrap());
    assert_eq!(s.password_hash("@a:hs").await.unwrap(), Some(Some("hash".to_owned())));
    s.create_user("@nopass:hs", None, 1, None).await.unwrap();
    assert_eq!(s.password_hash("@nopass:hs").await.unwrap(), Some(None));
    assert_eq!(s.password_hash("@b:hs").await.unwrap(), None);
    // A failed registration leaves nothing behind.
    assert_eq!(s.token_owner("t1").await.unwrap().unwrap().device_id, "D1");
    assert!(s.devices("@nopass:hs").await.unwrap().is_empty());
}

async fn logins_replace_device_tokens(backend: TestBackend) {
    let (_db, s) = open(backend).await;
    s.create_user("@a:hs", None, 1, Some(login("D1", "t1", 1))).await.unwrap();
    s.login("@a:hs", login("D1", "t2", 2)).await.unwrap();
    assert_eq!(s.token_owner("t1").await.unwrap(), None, "re-using a device replaces its token");
    let owner = s.token_owner("t2").await.unwrap().unwrap();
    assert_eq!((owner.user_id.as_str(), owner.device_id.as_str(), owner.last_seen_ts), ("@a:hs", "D1", Some(2)));
    s.login("@a:hs", login("D2", "t3", 3)).await.unwrap();
    let devices = s.devices("@a:hs").await.unwrap();
    assert_eq!(devices.iter().map(|d| d.device_id.as_str()).collect::<Vec<_>>(), ["D1", "D2"]);
    assert_eq!(devices[0].display_name.as_deref(), Some("phone"));
    s.touch_device("@a:hs", "D2", Some("10.0.0.1"), 99).await.unwrap();
    let d2 = s.device("@a:hs", "D2").await.unwrap().unwrap();
    assert_eq!((d2.last_seen_ip.as_deref(), d2.last_seen_ts), (Some("10.0.0.1"), Some(99)));
    // The same token hash twice is refused rather than silently shared.
    let dup = s.login("@a:hs", login("D3", "t3", 4)).await;
    assert!(matches!(dup, Err(Error::Conflict { .. })), "{dup:?}");
}

async fn devices_and_tokens_die_together(backend: TestBackend) {
    let (_db, s) = open(backend).await;
    s.create_user("@a:hs", None, 1, Some(login("D1", "t1", 1))).await.unwrap();
    s.login("@a:hs", login("D2", "t2", 2)).await.unwrap();
    s.login("@a:hs", login("D3", "t3", 3)).await.unwrap();
    s.rename_device("@a:hs", "D2", "laptop").await.unwrap();
    assert_eq!(s.device("@a:hs", "D2").await.unwrap().unwrap().display_name.as_deref(), Some("laptop"));
    assert!(matches!(s.rename_device("@a:hs", "NOPE", "x").await, Err(Error::NotFound)));

    s.delete_devices("@a:hs", &["D2".to_owned(), "UNKNOWN".to_owned()]).await.unwrap();
    assert_eq!(s.token_owner("t2").await.unwrap(), None);
    assert_eq!(s.device("@a:hs", "D2").await.unwrap(), None);

    s.set_password_hash("@a:hs", "new", Some("D1")).await.unwrap();
    assert_eq!(s.password_hash("@a:hs").await.unwrap(), Some(Some("new".to_owned())));
    assert_eq!(s.token_owner("t3").await.unwrap(), None, "other devices are logged out");
    assert!(s.token_owner("t1").await.unwrap().is_some(), "the current device stays");

    s.delete_all_devices("@a:hs").await.unwrap();
    assert_eq!(s.token_owner("t1").await.unwrap(), None);
    assert!(s.devices("@a:hs").await.unwrap().is_empty());
    assert!(matches!(s.set_password_hash("@nobody:hs", "x", None).await, Err(Error::NotFound)));
}

async fn profile_fields(backend: TestBackend) {
    let (_db, s) = open(backend).await;
    s.create_user("@a:hs", None, 1, None).await.unwrap();
    assert!(s.profile("@a:hs").await.unwrap().is_empty());
    s.set_profile_field("@a:hs", "displayname", "\"Alice\"").await.unwrap();
    s.set_profile_field("@a:hs", "displayname", "\"Alice L.\"").await.unwrap();
    s.set_profile_field("@a:hs", "org.example.x", "{\"n\":[1,2]}").await.unwrap();
    let profile = s.profile("@a:hs").await.unwrap();
    assert_eq!(profile["displayname"], "Alice L.");
    assert_eq!(profile["org.example.x"]["n"][1], 2);
    s.delete_profile_field("@a:hs", "displayname").await.unwrap();
    s.delete_profile_field("@a:hs", "never.set").await.unwrap();
    assert_eq!(s.profile("@a:hs").await.unwrap().len(), 1);
}

async fn uia_sessions(backend: TestBackend) {
    let (_db, s) = open(backend).await;
    s.create_uia_session("old", "register", None, 10, 0).await.unwrap();
    s.create_uia_session("S1", "change_password", Some("@a:hs"), 100, 50).await.unwrap();
    assert_eq!(s.uia_session("old").await.unwrap(), None, "expired sessions are swept");
    let session = s.uia_session("S1").await.unwrap().unwrap();
    assert_eq!(session.purpose, "change_password");
    assert_eq!(session.user_id.as_deref(), Some("@a:hs"));
    assert!(session.completed.is_empty());
    s.set_uia_completed("S1", &["m.login.password".to_owned()]).await.unwrap();
    assert_eq!(s.uia_session("S1").await.unwrap().unwrap().completed, ["m.login.password"]);
    s.delete_uia_session("S1").await.unwrap();
    assert_eq!(s.uia_session("S1").await.unwrap(), None);
}

#[tokio::test]
async fn sqlite_is_durable() {
    let (_db, s) = open(TestBackend::Sqlite).await;
    let row = sqlx::query("PRAGMA journal_mode").fetch_one(&s.pool).await.unwrap();
    assert_eq!(sqlx::Row::get::<String, _>(&row, 0), "wal");
    // 2 = FULL; checked on several pooled connections.
    for _ in 0..3 {
        let mut conn = s.pool.acquire().await.unwrap();
        let row = sqlx::query("PRAGMA synchronous").fetch_one(&mut *conn).await.unwrap();
        assert_eq!(sqlx::Row::get::<i64, _>(&row, 0), 2);
    }
}

async fn migrations_are_idempotent(backend: TestBackend) {
    let (db, s) = open(backend).await;
    s.create_user("@a:hs", None, 1, None).await.unwrap();
    s.close().await;
    let reopened = Storage::connect(&db.url, 2).await.unwrap();
    assert!(reopened.user_exists("@a:hs").await.unwrap());
    assert_eq!(reopened.backend(), if backend == TestBackend::Sqlite { Backend::Sqlite } else { Backend::Postgres });
}

async fn federation_queue_and_server_keys(backend: TestBackend) {
    let (_db, s) = open(backend).await;
    let item = |destination: &str, kind: &'static str, n: usize| Outgoing {
        destination: destination.to_owned(),
        kind,
        json: format!("{{\"n\":{n}}}"),
    };
    // 60 PDUs and 3 EDUs for b, one EDU for c.
    let mut items: Vec<Outgoing> = (0..60).map(|n| item("b.example", "pdu", n)).collect();
    items.extend((60..63).map(|n| item("b.example", "edu", n)));
    items.push(item("c.example", "edu", 99));
    s.enqueue_federation(&items, 1).await.unwrap();
    let mut due = s.due_destinations(10).await.unwrap();
    due.sort();
    assert_eq!(due, ["b.example", "c.example"]);

    // One process holds b; another cannot take it until the lease ends.
    assert!(s.lease_destination("b.example", "p1", 1_000, 10).await.unwrap());
    assert!(!s.lease_destination("b.example", "p2", 1_000, 20).await.unwrap());
    assert!(s.lease_destination("b.example", "p1", 2_000, 30).await.unwrap(), "the holder renews");
    assert_eq!(s.due_destinations(40).await.unwrap(), ["c.example"]);
    assert_eq!(s.next_due_at(40).await.unwrap(), Some(2_001), "free again when the lease runs out");

    // The first transaction stops at the spec's 50 PDUs; a retry after failure is the same one.
    let first = s.next_transaction("b.example").await.unwrap().unwrap();
    assert_eq!((first.pdus.len(), first.edus.len()), (50, 0));
    assert_eq!(first.pdus[0], "{\"n\":0}");
    assert_eq!(s.transaction_failed("b.example", "p1", 5_000).await.unwrap(), 1);
    assert!(!s.lease_destination("b.example", "p1", 9_000, 4_000).await.unwrap(), "not before retry_at");
    assert_eq!(s.next_due_at(4_000).await.unwrap(), Some(5_000));
    s.enqueue_federation(&[item("b.example", "edu", 63)], 4_500).await.unwrap();
    assert!(s.lease_destination("b.example", "p2", 9_000, 5_000).await.unwrap());
    let retry = s.next_transaction("b.example").await.unwrap().unwrap();
    assert_eq!(retry, first, "a retry sends exactly the same transaction");
    assert_eq!(s.destination_failures("b.example").await.unwrap(), 1);
    s.transaction_sent("b.example", "p1", &retry.txn_id).await.unwrap();
    assert_eq!(s.destination_failures("b.example").await.unwrap(), 1, "p1 lost the lease: it cannot acknowledge");
    s.transaction_sent("b.example", "p2", &retry.txn_id).await.unwrap();
    assert_eq!(s.destination_failures("b.example").await.unwrap(), 0);
    let second = s.next_transaction("b.example").await.unwrap().unwrap();
    assert_ne!(second.txn_id, first.txn_id);
    assert_eq!((second.pdus.len(), second.edus.len()), (10, 4), "the rest, in order");
    assert_eq!(second.pdus[0], "{\"n\":50}");
    assert_eq!(second.edus[3], "{\"n\":63}");
    s.transaction_sent("b.example", "p2", &second.txn_id).await.unwrap();
    assert_eq!(s.next_transaction("b.example").await.unwrap(), None);

    // Hearing from a backed-off server makes it due at once.
    assert!(s.lease_destination("c.example", "p1", 9_000, 100).await.unwrap());
    s.transaction_failed("c.example", "p1", 1_000_000).await.unwrap();
    assert!(s.due_destinations(200).await.unwrap().is_empty());
    assert!(s.destination_is_back("c.example").await.unwrap());
    assert!(!s.destination_is_back("c.example").await.unwrap(), "only once");
    assert_eq!(s.due_destinations(200).await.unwrap(), ["c.example"]);

    // Transactions received: the answer is kept.
    assert_eq!(s.received_transaction("c.example", "t1").await.unwrap(), None);
    s.record_received_transaction("c.example", "t1", "{}", 1).await.unwrap();
    assert_eq!(s.received_transaction("c.example", "t1").await.unwrap().as_deref(), Some("{}"));

    // Server keys: stored per document, served back.
    let key = ServerKey { public_key: "K".into(), valid_until_ts: 500, expired_ts: None };
    s.store_server_keys("c.example", &[("ed25519:a".into(), key.clone())], "{\"doc\":1}", 1).await.unwrap();
    assert_eq!(s.server_key("c.example", "ed25519:a").await.unwrap(), Some(key));
    assert_eq!(s.server_key("c.example", "ed25519:b").await.unwrap(), None);
    assert_eq!(s.server_key_responses("c.example").await.unwrap(), [("{\"doc\":1}".to_owned(), 500)]);
}

/// Other processes' commits are heard on PostgreSQL (SQLite serves one process: no channel);
/// a dropped listening connection comes back, says so, and hears what follows.
#[tokio::test]
#[cfg_attr(not(myelin_postgres_tests), ignore = "set MYELIN_TEST_POSTGRES_URL to run")]
async fn changes_are_heard_across_processes_and_after_a_reconnect() {
    let (_sqlite, s) = open(TestBackend::Sqlite).await;
    assert!(s.changes().await.unwrap().is_none());

    let (_db, s) = open(TestBackend::Postgres).await;
    let mut changes = s.changes().await.unwrap().expect("PostgreSQL listens");
    let position = s.set_presence("@a:x", "online", None, 1).await.unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Stream(position));
    let outgoing = Outgoing { destination: "b.example".into(), kind: "edu", json: "{}".into() };
    s.enqueue_federation(&[outgoing], 1).await.unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Outbox);

    // The listening connection is cut (a database restart, a proxy timeout).
    let killed = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&s.pool)
    .await
    .unwrap();
    assert_eq!(killed.len(), 1, "one listening connection");
    assert_eq!(next_change(&mut changes).await, Change::Missed);
    let position = s.set_presence("@a:x", "offline", None, 2).await.unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Stream(position));
}

async fn next_change(changes: &mut Changes) -> Change {
    tokio::time::timeout(std::time::Duration::from_secs(20), changes.next()).await.expect("a change")
}
