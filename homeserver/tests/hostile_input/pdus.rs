//! Received PDUs: the checks `federation::rooms::verify_pdu` runs once the sender's keys are at
//! hand ([`parse_pdu`], then [`check_pdu`]), given signed events of each room version and what
//! a hostile server can make of them: fields of other types or values, fields removed or added,
//! huge or deeply nested values, bytes flipped in content, hashes or signatures, another room
//! version's rules. Whatever passes must be the event its server signed, or its redacted form.

use std::sync::LazyLock;

use myelin_homeserver::federation::FederationError;
use myelin_homeserver::federation::rooms::{check_pdu, parse_pdu};
use myelin_homeserver::rooms::pdu::Pdu;
use proptest::prelude::*;
use ruma_common::CanonicalJsonObject;
use ruma_common::canonical_json::redact;
use ruma_common::room_version_rules::RoomVersionRules;
use ruma_common::serde::Base64;
use ruma_common::serde::base64::Standard;
use ruma_events::TimelineEventType;
use serde_json::{Value, json};

use super::{ORIGIN, create_event, event, public_keys, room_versions, sign_raw};

/// A signed event to mutate: a message (content not kept by redaction) or a member event
/// (`membership` kept, so covered by the signature).
struct Base {
    rules: RoomVersionRules,
    pdu: Pdu,
    value: Value,
}

/// Per room version: a message and a member event, signed by [`ORIGIN`].
static BASES: LazyLock<Vec<Base>> = LazyLock::new(|| {
    let mut bases = Vec::new();
    for (version, rules) in room_versions() {
        let create = create_event(&version, &rules);
        let auth =
            if rules.authorization.room_create_event_id_as_room_id { vec![] } else { vec![create.event_id.clone()] };
        let alice = format!("@alice:{ORIGIN}");
        let message = json!({ "msgtype": "m.text", "body": "hello" });
        let member = json!({ "membership": "join", "displayname": "Alice" });
        let prev = vec![create.event_id.clone()];
        for (kind, state_key, content) in [
            (TimelineEventType::RoomMessage, None, message),
            (TimelineEventType::RoomMember, Some(alice.as_str()), member),
        ] {
            let pdu = event(&rules, &create, &alice, kind, state_key, content, prev.clone(), auth.clone(), 2)
                .expect("a signed event");
            let value = serde_json::to_value(&pdu.json).expect("JSON");
            bases.push(Base { rules: rules.clone(), pdu, value });
        }
    }
    bases
});

/// What the server does with a PDU another server sent, keys at hand.
fn receive(value: &Value, rules: &RoomVersionRules) -> Result<Pdu, FederationError> {
    check_pdu(parse_pdu(value, rules)?, &public_keys(), rules)
}

/// The object without what neither signatures nor hashes cover.
fn signed_part(object: &CanonicalJsonObject) -> CanonicalJsonObject {
    let mut object = object.clone();
    object.remove("signatures");
    object.remove("unsigned");
    object
}

/// What may come out of the checks for a mutation of `base`: nothing, the event as signed, or
/// its redacted form (content that no longer matches the hash), never anything else.
fn assert_signed_or_refused(base: &Base, outcome: &Result<Pdu, FederationError>) -> Result<(), TestCaseError> {
    let Ok(pdu) = outcome else { return Ok(()) };
    prop_assert_eq!(&pdu.event_id, &base.pdu.event_id);
    let redacted = redact(base.pdu.json.clone(), &base.rules.redaction, None).expect("redactable");
    let got = signed_part(&pdu.json);
    prop_assert!(
        got == signed_part(&base.pdu.json) || got == signed_part(&redacted),
        "accepted something its server did not sign: {}",
        serde_json::to_string(&pdu.json).unwrap_or_default()
    );
    Ok(())
}

/// Top-level fields of a PDU, required and optional.
const FIELDS: [&str; 14] = [
    "type",
    "sender",
    "room_id",
    "content",
    "state_key",
    "depth",
    "prev_events",
    "auth_events",
    "origin_server_ts",
    "hashes",
    "signatures",
    "unsigned",
    "redacts",
    "event_id",
];

/// Top-level fields the signature covers in every room version, and the signatures.
const SIGNED_FIELDS: [&str; 9] =
    ["type", "sender", "room_id", "depth", "prev_events", "auth_events", "origin_server_ts", "hashes", "signatures"];

/// JSON values of every type, some of them shaped like what a field expects.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        any::<String>().prop_map(Value::String),
        "[@!$#][a-z0-9]{0,12}(:[a-z.]{1,12})?".prop_map(Value::String),
        Just(json!(format!("@mallory:{ORIGIN}"))),
        Just(json!("$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")),
        Just(json!({ "sha256": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" })),
        Just(json!({ "membership": "join" })),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What a hostile server does to a signed event.
#[derive(Clone, Debug)]
enum Mutation {
    /// A top-level field set to another value.
    Set(&'static str, Value),
    /// A top-level field removed.
    Remove(&'static str),
    /// A field added at the top level or in content.
    Add { in_content: bool, key: String, value: Value },
    /// A long string in a field (IDs may be 255 bytes, a PDU 65,535).
    Huge(&'static str, usize),
    /// Nested arrays in content, as deep as a parser at the edge lets through.
    Deep(usize),
    /// The event checked with another room version's rules.
    OtherRules(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let field = proptest::sample::select(FIELDS.to_vec());
    prop_oneof![
        4 => (field.clone(), any_value()).prop_map(|(f, v)| Mutation::Set(f, v)),
        2 => field.clone().prop_map(Mutation::Remove),
        2 => (any::<bool>(), "[a-z_]{1,10}", any_value())
            .prop_map(|(in_content, key, value)| Mutation::Add { in_content, key, value }),
        2 => (proptest::sample::select(vec!["type", "sender", "room_id", "state_key", "unsigned", "content"]),
              prop_oneof![250usize..260, 65_000usize..66_000, Just(1 << 20)])
            .prop_map(|(f, n)| Mutation::Huge(f, n)),
        1 => (1usize..127).prop_map(Mutation::Deep),
        1 => any::<prop::sample::Index>().prop_map(Mutation::OtherRules),
    ]
}

/// Applies `mutation` to `value` (a PDU object), or to the rules it is checked with.
fn apply(value: &mut Value, rules: &mut RoomVersionRules, mutation: &Mutation) {
    let object = value.as_object_mut().expect("an object");
    match mutation.clone() {
        Mutation::Set(field, new) => {
            object.insert(field.to_owned(), new);
        }
        Mutation::Remove(field) => {
            object.remove(field);
        }
        Mutation::Add { in_content: true, key, value } => put(object, "content", key, value),
        Mutation::Add { in_content: false, key, value } => {
            object.insert(key, value);
        }
        Mutation::Huge(field, len) => {
            let huge = Value::String("x".repeat(len));
            match field {
                "unsigned" | "content" => put(object, field, "padding".to_owned(), huge),
                _ => _ = object.insert(field.to_owned(), huge),
            }
        }
        Mutation::Deep(depth) => {
            let nested = (0..depth).fold(json!([]), |inner, _| json!([inner]));
            put(object, "content", "nested".to_owned(), nested);
        }
        Mutation::OtherRules(index) => *rules = room_versions()[index.index(3)].1.clone(),
    }
}

/// Sets `key` in the object `field` of `object`, which becomes an object if it was not one.
fn put(object: &mut serde_json::Map<String, Value>, field: &str, key: String, value: Value) {
    let target = object.entry(field).or_insert_with(|| json!({}));
    if !target.is_object() {
        *target = json!({});
    }
    target[key] = value;
}

/// The byte ranges of a string value in `text`: the first occurrence of `"value"`.
fn value_range(text: &str, value: &str) -> std::ops::Range<usize> {
    let quoted = format!("\"{value}\"");
    let start = text.find(&quoted).expect("the value is in the text") + 1;
    start..start + value.len()
}

/// [`ORIGIN`]'s signature on a PDU.
fn signature_of(value: &Value) -> &str {
    value["signatures"][ORIGIN].as_object().and_then(|s| s.values().next()).and_then(Value::as_str).expect("signed")
}

/// The characters of (standard) base64, to change one for another.
fn base64_characters() -> Vec<char> {
    ('A'..='Z').chain('a'..='z').chain('0'..='9').chain(['+', '/']).collect()
}

/// Where a character is changed.
#[derive(Clone, Copy, Debug)]
enum Region {
    /// The message body: not covered by the signature, only by the content hash.
    Body,
    /// The member event's `membership`: kept by redaction, so signed.
    Membership,
    /// The content hash.
    Hash,
    /// The signature.
    Signature,
}

proptest! {
    #![proptest_config(super::config(384))]

    /// Any mutation of a signed event: refused, or the event as signed (or redacted); never a
    /// panic.
    #[test]
    fn mutated_events_are_refused_or_unchanged(
        base in 0..6usize,
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let base = &BASES[base];
        let (mut value, mut rules) = (base.value.clone(), base.rules.clone());
        for mutation in &mutations {
            apply(&mut value, &mut rules, mutation);
        }
        assert_signed_or_refused(base, &receive(&value, &rules))?;
    }

    /// A field the signature covers (or `signatures` itself), given another value or removed:
    /// refused.
    #[test]
    fn changed_signed_fields_are_refused(
        base in 0..6usize,
        field in proptest::sample::select(SIGNED_FIELDS.to_vec()),
        new in any_value(),
        remove in any::<bool>(),
    ) {
        let base = &BASES[base];
        prop_assume!(base.value.get(field) != Some(&new));
        let mutation = if remove { Mutation::Remove(field) } else { Mutation::Set(field, new) };
        let (mut value, mut rules) = (base.value.clone(), base.rules.clone());
        apply(&mut value, &mut rules, &mutation);
        prop_assert!(receive(&value, &rules).is_err(), "{:?} accepted", mutation);
    }
}

proptest! {
    // Each case verifies a signature: slower ones.
    #![proptest_config(super::config(256))]

    /// One character changed in the signature, the content hash or signed content: refused;
    /// in content only the hash covers: accepted redacted, never as changed. (A signature's
    /// last base64 character has spare bits: a change there that leaves its bytes alone is the
    /// same signature.)
    #[test]
    fn one_changed_character_is_caught(
        version in 0..3usize,
        region in proptest::sample::select(vec![Region::Body, Region::Membership, Region::Hash, Region::Signature]),
        at in any::<prop::sample::Index>(),
        replacement in proptest::sample::select(base64_characters()),
    ) {
        let base = &BASES[version * 2 + usize::from(matches!(region, Region::Membership))];
        let text = serde_json::to_string(&base.value).expect("JSON");
        let signature = signature_of(&base.value);
        let range = match region {
            Region::Body => value_range(&text, "hello"),
            Region::Membership => value_range(&text, "join"),
            Region::Hash => value_range(&text, base.value["hashes"]["sha256"].as_str().expect("hashed")),
            Region::Signature => value_range(&text, signature),
        };
        let position = range.start + at.index(range.len());
        let original = text.as_bytes()[position] as char;
        prop_assume!(original != replacement);
        let mut changed = text.clone();
        changed.replace_range(position..=position, &replacement.to_string());
        let value: Value = serde_json::from_str(&changed).expect("still JSON");
        let outcome = receive(&value, &base.rules);
        match region {
            Region::Body => {
                let pdu = outcome.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(pdu.content_value(), json!({}), "redacted");
                prop_assert_eq!(&pdu.event_id, &base.pdu.event_id);
            }
            Region::Signature => {
                let bytes = |s: &str| Base64::<Standard>::parse(s).ok().map(|b| b.as_bytes().to_vec());
                let same_bytes = bytes(signature_of(&value)) == bytes(signature);
                prop_assert_eq!(outcome.is_ok(), same_bytes, "{}", changed);
                assert_signed_or_refused(base, &outcome)?;
            }
            Region::Membership | Region::Hash => prop_assert!(outcome.is_err(), "{}", changed),
        }
    }

    /// Events signed as they are but too big somewhere: an ID-like field past 255 bytes, more
    /// than 20 prev or 10 auth events, a PDU past 65,535 bytes (here through `unsigned`, which
    /// no signature covers): refused; within the limits: accepted.
    #[test]
    fn size_limits_hold_for_signed_events(
        version in 0..3usize,
        kind_len in 250usize..260,
        state_key_len in proptest::option::of(250usize..260),
        prev in 18usize..23,
        auth in 8usize..13,
        padding in prop_oneof![Just(0usize), 65_000usize..66_000],
    ) {
        let (version, rules) = &room_versions()[version];
        let create = create_event(version, rules);
        let ids = |n: usize, tag: &str| (0..n).map(|i| format!("${tag}{i:0>42}")).collect::<Vec<_>>();
        let mut object = json!({
            "type": "x".repeat(kind_len),
            "sender": format!("@alice:{ORIGIN}"),
            "room_id": create.room_id,
            "content": {},
            "depth": 3,
            "origin_server_ts": 1_700_000_000_000u64,
            "prev_events": ids(prev, "p"),
            "auth_events": ids(auth, "a"),
        });
        if let Some(n) = state_key_len {
            object["state_key"] = json!("k".repeat(n));
        }
        let mut value = sign_raw(object, rules);
        if padding > 0 {
            value["unsigned"] = json!({ "padding": "x".repeat(padding) });
        }
        let size = serde_json::to_string(&value).expect("JSON").len();
        let within = kind_len <= 255
            && state_key_len.is_none_or(|n| n <= 255)
            && prev <= 20
            && auth <= 10
            && size <= 65_535;
        let outcome = receive(&value, rules);
        prop_assert_eq!(outcome.is_ok(), within, "{:?}", outcome.err());
    }
}

/// A PDU claiming another server's user as sender, signed by ours: the sender's server did not
/// sign it, and the sender of the server that did cannot be put in its place.
#[test]
fn a_spoofed_sender_is_refused() {
    for base in BASES.iter() {
        let mut value = base.value.clone();
        value["sender"] = json!("@alice:elsewhere.example");
        let error = receive(&value, &base.rules).expect_err("a spoofed sender");
        assert!(error.to_string().contains("signature"), "{error}");
        // Signed again by ours, as another server's user: still not that server's signature.
        let mut object = parse_pdu(&value, &base.rules).expect("well-formed");
        object.remove("signatures");
        object.remove("hashes");
        ruma_signatures::hash_and_sign_event(ORIGIN, super::KEY.ruma_key_pair(), &mut object, &base.rules.redaction)
            .expect("signs");
        assert!(check_pdu(object, &public_keys(), &base.rules).is_err());
    }
}
