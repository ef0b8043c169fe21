//! Hostile input from other servers: property tests that throw arbitrary and mutated data at
//! what federation parses and checks before anything is stored: the `X-Matrix` header, canonical
//! JSON, received PDUs (format, signatures, hashes) and the authorization rules. Each property
//! states what must be refused, and that nothing panics.
//!
//! Runs are bounded (a case count per property, each property at most a few seconds in a debug
//! build) and reproducible: a fixed seed, and no regression files written into the source tree.
//! To explore further, `PROPTEST_RNG_SEED` picks another seed and `PROPTEST_CASES` another count
//! (e.g. `PROPTEST_CASES=20000 PROPTEST_RNG_SEED=$RANDOM cargo test --test hostile_input`).
//! A failing input that proptest finds becomes a regular `#[test]` next to the property, with
//! the fix.

mod canonical_json;
mod event_auth;
mod pdus;
mod x_matrix;

use std::sync::LazyLock;

use js_int::UInt;
use myelin_homeserver::crypto::SigningKey;
use myelin_homeserver::rooms::pdu::{Pdu, PduTemplate, Placement};
use proptest::test_runner::{Config, RngSeed};
use ruma_common::room_version_rules::RoomVersionRules;
use ruma_common::serde::Base64;
use ruma_common::{MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, RoomVersionId, UserId};
use ruma_events::TimelineEventType;

/// The seed of every property, unless `PROPTEST_RNG_SEED` is set (to explore further).
const SEED: u64 = 0x6d79_656c_696e;

/// A property's configuration: `cases` cases, a fixed seed, no persistence files (unless the
/// environment asks for other cases or another seed).
fn config(cases: u32) -> Config {
    let mut config = Config { failure_persistence: None, ..Config::default() };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    config
}

/// The server whose events the tests build and sign.
const ORIGIN: &str = "origin.example";

/// The signing key of [`ORIGIN`].
static KEY: LazyLock<SigningKey> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temporary directory");
    SigningKey::load_or_generate(&dir.path().join("signing.key")).expect("a signing key")
});

/// What a receiving server knows of [`ORIGIN`]'s keys.
fn public_keys() -> ruma_signatures::PublicKeyMap {
    let public = Base64::parse(KEY.public_key_base64()).expect("base64");
    [(ORIGIN.to_owned(), [(KEY.key_id(), public)].into())].into()
}

/// The room versions the properties run over: both redaction algorithms, both room ID formats.
fn room_versions() -> [(RoomVersionId, RoomVersionRules); 3] {
    [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12].map(|v| {
        let rules = v.rules().expect("a known version");
        (v, rules)
    })
}

/// A room of `rules`' version: its create event (by `@alice`), whose ID is the room ID's
/// source in v12.
fn create_event(version: &RoomVersionId, rules: &RoomVersionRules) -> Pdu {
    let room_id = RoomId::parse(format!("!room:{ORIGIN}")).expect("room ID");
    let v12 = rules.authorization.room_create_event_id_as_room_id;
    let creator = format!("@alice:{ORIGIN}");
    let content = serde_json::json!({ "room_version": version.as_str(), "creator": creator });
    let template = PduTemplate { kind: TimelineEventType::RoomCreate, state_key: Some(String::new()), content };
    let placement =
        Placement { room_id: (!v12).then_some(&*room_id), rules, prev_events: vec![], auth_events: vec![], depth: 1 };
    let sender = UserId::parse(&creator).expect("user ID");
    template.build(&sender, placement, ts(1), &KEY).expect("a create event")
}

/// An event of [`ORIGIN`] in `create`'s room.
#[allow(clippy::too_many_arguments)]
fn event(
    rules: &RoomVersionRules,
    create: &Pdu,
    sender: &str,
    kind: TimelineEventType,
    state_key: Option<&str>,
    content: serde_json::Value,
    prev_events: Vec<OwnedEventId>,
    auth_events: Vec<OwnedEventId>,
    depth: i64,
) -> Result<Pdu, myelin_homeserver::rooms::pdu::PduError> {
    let sender = UserId::parse(sender).expect("user ID");
    let template = PduTemplate { kind, state_key: state_key.map(str::to_owned), content };
    let placement = Placement { room_id: Some(&create.room_id), rules, prev_events, auth_events, depth };
    template.build(&sender, placement, ts(u32::try_from(depth).unwrap_or(0).saturating_mul(1000)), &KEY)
}

/// `object` hashed and signed by [`ORIGIN`] as it is, whatever it holds: for events the
/// server's own builder would not make.
fn sign_raw(object: serde_json::Value, rules: &RoomVersionRules) -> serde_json::Value {
    let mut object: ruma_common::CanonicalJsonObject = serde_json::from_value(object).expect("canonical JSON");
    ruma_signatures::hash_and_sign_event(ORIGIN, KEY.ruma_key_pair(), &mut object, &rules.redaction)
        .expect("hashed and signed");
    serde_json::to_value(object).expect("JSON")
}

/// A timestamp `ms` milliseconds after a fixed start.
fn ts(ms: u32) -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch(UInt::from(1_700_000_000u32) + UInt::from(ms))
}
