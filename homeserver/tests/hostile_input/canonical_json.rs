//! Canonical JSON as the server produces it (<https://spec.matrix.org/v1.19/appendices/#canonical-json>):
//! ruma's `CanonicalJsonValue`, which the federation edge parses request bodies into, whose
//! text is what signatures and hashes cover, and which `Pdu::json_string` stores. Checked
//! against an encoder written here from the spec's grammar.

use proptest::prelude::*;
use ruma_common::{CanonicalJsonObject, CanonicalJsonValue};
use serde_json::{Map, Number, Value};

/// The largest integer canonical JSON allows (and its negation the smallest).
const MAX_SAFE: i64 = (1 << 53) - 1;

/// The spec's encoding, written out: sorted keys (by code point), no whitespace, strings with
/// only the escapes the grammar has (`\"`, `\\`, `\b \t \n \f \r`, `\u00XX` for other control
/// characters, lowercase hex), everything else as UTF-8. `None` for a value that has none
/// (a float, an integer out of range).
fn reference(value: &Value) -> Option<String> {
    Some(match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_i64() {
            Some(i) if (-MAX_SAFE..=MAX_SAFE).contains(&i) => i.to_string(),
            _ => return None,
        },
        Value::String(s) => quote(s),
        Value::Array(items) => format!("[{}]", items.iter().map(reference).collect::<Option<Vec<_>>>()?.join(",")),
        Value::Object(object) => {
            let mut entries: Vec<(&String, &Value)> = object.iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.chars().cmp(b.chars()));
            let entries = entries
                .into_iter()
                .map(|(k, v)| Some(format!("{}:{}", quote(k), reference(v)?)))
                .collect::<Option<Vec<_>>>()?;
            format!("{{{}}}", entries.join(","))
        }
    })
}

fn quote(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Strings that stress the escaping: controls, quotes, backslashes, `/`, DEL, non-BMP.
fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(
            prop_oneof![
                (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap_or('?')),
                proptest::sample::select(vec!['"', '\\', '/', '\u{7f}', '\u{2028}', 'é', '😀', 'a', ' ']),
            ],
            0..12
        )
        .prop_map(|chars| chars.into_iter().collect()),
    ]
}

/// Any JSON value, floats and out-of-range integers included.
fn any_json() -> impl Strategy<Value = Value> {
    json(true)
}

/// A JSON value canonical JSON can hold.
fn canonical_json() -> impl Strategy<Value = Value> {
    json(false)
}

fn json(with_invalid_numbers: bool) -> BoxedStrategy<Value> {
    let integer = prop_oneof![
        (-MAX_SAFE..=MAX_SAFE).prop_map(Value::from),
        (-3i64..=3).prop_map(Value::from),
        (-3i64..=3).prop_map(|d| Value::from(if d < 0 { -MAX_SAFE - d - 1 } else { MAX_SAFE - d })),
    ];
    let invalid_number = prop_oneof![
        any::<i64>().prop_filter("out of range", |i| !(-MAX_SAFE..=MAX_SAFE).contains(i)).prop_map(Value::from),
        (0u64..4).prop_map(|d| Value::from(MAX_SAFE as u64 + 1 + d)),
        (0i64..4).prop_map(|d| Value::from(-MAX_SAFE - 1 - d)),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        Just(Value::Number(Number::from_f64(-0.0).expect("finite"))),
        Just(Value::Number(Number::from_f64(1.0).expect("finite"))),
    ];
    let mut leaf =
        prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::Bool), integer, string().prop_map(Value::String),]
            .boxed();
    if with_invalid_numbers {
        leaf = prop_oneof![8 => leaf, 1 => invalid_number].boxed();
    }
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((string(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
    .boxed()
}

/// `value` as JSON text in a layout chosen by `choices`: whitespace between tokens, keys in
/// another order, characters written as `\u` escapes (surrogate pairs past the BMP) or `\/`.
fn render(value: &Value, choices: &mut impl Iterator<Item = u8>) -> String {
    let space = |c: u8| ["", " ", "\n", "\t", "\r\n  ", ""][usize::from(c % 6)];
    let mut next = || choices.next().unwrap_or(0);
    match value {
        Value::String(s) => {
            let mut out = String::from('"');
            for c in s.chars() {
                let choice = next();
                match c {
                    '"' | '\\' => out.push_str(&format!("\\{c}")),
                    '/' if choice % 2 == 0 => out.push_str("\\/"),
                    c if u32::from(c) < 0x20 || choice % 5 == 0 => {
                        let mut units = [0u16; 2];
                        for unit in c.encode_utf16(&mut units) {
                            out.push_str(&format!("\\u{unit:04X}"));
                        }
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => {
            let (before, after) = (space(next()), space(next()));
            let items: Vec<String> = items.iter().map(|item| render(item, choices)).collect();
            format!("[{before}{}{after}]", items.join(&format!("{after},{before}")))
        }
        Value::Object(object) => {
            let (before, after, turn) = (space(next()), space(next()), next());
            let mut entries: Vec<String> = object
                .iter()
                .map(|(k, v)| {
                    let key = render(&Value::String(k.clone()), choices);
                    format!("{key}{before}:{after}{}", render(v, choices))
                })
                .collect();
            if !entries.is_empty() {
                let len = entries.len();
                entries.rotate_left(usize::from(turn) % len);
            }
            format!("{{{after}{}{before}}}", entries.join(&format!(",{before}")))
        }
        other => other.to_string(),
    }
}

proptest! {
    #![proptest_config(super::config(1024))]

    /// A value with a float or an integer out of `[-(2^53)+1, 2^53-1]` is refused (not
    /// rounded, not a panic); any other is written exactly as the spec's encoding, parses back
    /// to itself, and its text is a fixed point.
    #[test]
    fn values_encode_as_the_spec_says(value in any_json()) {
        let expected = reference(&value);
        let canonical = CanonicalJsonValue::try_from(value.clone());
        prop_assert_eq!(canonical.is_ok(), expected.is_some(), "{:?} → {:?}", value, canonical);
        let (Ok(canonical), Some(expected)) = (canonical, expected) else { return Ok(()) };
        let text = canonical.to_string();
        prop_assert_eq!(&text, &expected);
        let reparsed: CanonicalJsonValue = serde_json::from_str(&text).expect("canonical JSON parses");
        prop_assert_eq!(&reparsed, &canonical);
        prop_assert_eq!(reparsed.to_string(), text);
        prop_assert_eq!(Value::from(canonical), value);
    }

    /// JSON text as a peer may lay it out (whitespace, key order, `\u` escapes) parses, at the
    /// federation edge, into the value that canonical JSON then writes one way only.
    #[test]
    fn any_layout_of_a_value_canonicalizes_the_same(
        value in canonical_json(),
        choices in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let text = render(&value, &mut choices.iter().copied().cycle());
        let parsed: CanonicalJsonValue =
            serde_json::from_slice(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(Some(parsed.to_string()), reference(&value), "{}", text);
    }

    /// Whatever bytes arrive as a federation request body: parsed or refused, never a panic,
    /// and what parses is re-encoded canonically.
    #[test]
    fn any_body_parses_or_is_refused(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        value in any_json(),
        flip in any::<(prop::sample::Index, u8)>(),
    ) {
        let mut mutated = value.to_string().into_bytes();
        if !mutated.is_empty() {
            let at = flip.0.index(mutated.len());
            mutated[at] = flip.1;
        }
        for body in [bytes, mutated] {
            if let Ok(parsed) = serde_json::from_slice::<CanonicalJsonValue>(&body) {
                let text = parsed.to_string();
                prop_assert_eq!(serde_json::from_str::<CanonicalJsonValue>(&text).ok(), Some(parsed));
            }
        }
    }
}

proptest! {
    #![proptest_config(super::config(512))]

    /// What signatures cover: the object without `signatures` and `unsigned`, canonical; and
    /// what the server stores of a PDU is canonical too.
    #[test]
    fn signed_and_stored_forms_are_canonical(
        value in canonical_json(),
        signatures in canonical_json(),
        unsigned in canonical_json(),
    ) {
        let mut object = match value {
            Value::Object(object) => object,
            other => [("content".to_owned(), other)].into_iter().collect(),
        };
        let bare = reference(&Value::Object(object.clone())).expect("canonical");
        object.insert("signatures".into(), signatures);
        object.insert("unsigned".into(), unsigned.clone());
        let canonical: CanonicalJsonObject = serde_json::from_value(Value::Object(object)).expect("canonical");
        prop_assert_eq!(ruma_signatures::to_canonical_json_string_for_signing(&canonical).expect("serializes"), bare);
        // A stored PDU's text: `Pdu::json_string` writes the object as signed.
        let (version, rules) = &super::room_versions()[1];
        let mut pdu = super::create_event(version, rules);
        pdu.json.insert("unsigned".into(), CanonicalJsonValue::try_from(unsigned).expect("canonical"));
        let expected = reference(&serde_json::to_value(&pdu.json).expect("serializes")).expect("canonical");
        prop_assert_eq!(pdu.json_string(), expected);
    }
}

/// The spec's examples (appendices, "Canonical JSON"), and the number forms it forbids.
#[test]
fn the_specs_examples_and_forbidden_numbers() {
    let examples = [
        (r#"{}"#, r#"{}"#),
        (r#"{"one": 1, "two": "Two"}"#, r#"{"one":1,"two":"Two"}"#),
        (r#"{"b": "2", "a": "1"}"#, r#"{"a":"1","b":"2"}"#),
        (r#"{"b":"2","a":"1"}"#, r#"{"a":"1","b":"2"}"#),
        (
            r#"{"auth": {"success": true, "mxid": "@john.doe:example.com", "profile": {"display_name": "John Doe", "three_pids": [{"medium": "email", "address": "john.doe@example.org"}, {"medium": "msisdn", "address": "123456789"}]}}}"#,
            r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#,
        ),
        (r#"{"a": "日本語"}"#, r#"{"a":"日本語"}"#),
        (r#"{"本": 2, "日": 1}"#, r#"{"日":1,"本":2}"#),
        (r#"{"a": "\u65E5"}"#, r#"{"a":"日"}"#),
        (r#"{"a": null}"#, r#"{"a":null}"#),
        (
            r#"{"a": -1, "b": 9007199254740991, "c": -9007199254740991}"#,
            r#"{"a":-1,"b":9007199254740991,"c":-9007199254740991}"#,
        ),
        (r#"{"a": "\u0000\u001F\u007F\/"}"#, "{\"a\":\"\\u0000\\u001f\u{7f}/\"}"),
    ];
    for (input, expected) in examples {
        let value: CanonicalJsonValue = serde_json::from_str(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(value.to_string(), expected, "{input}");
    }
    for forbidden in
        ["9007199254740992", "-9007199254740992", "18446744073709551615", "1.0", "1e3", "-0", "0.5", "1E400"]
    {
        let body = format!(r#"{{"n": {forbidden}}}"#);
        assert!(serde_json::from_str::<CanonicalJsonValue>(&body).is_err(), "{forbidden} accepted");
    }
}

/// Nesting deeper than anything an event holds is refused by the parser at the edge, not
/// followed down until the stack runs out.
#[test]
fn deep_nesting_is_refused_at_the_edge() {
    for open in ["[", "{\"a\":"] {
        let body = open.repeat(100_000);
        assert!(serde_json::from_slice::<CanonicalJsonValue>(body.as_bytes()).is_err());
        assert!(serde_json::from_slice::<Value>(body.as_bytes()).is_err());
    }
    let nested = format!("{}{}", "[".repeat(120), "]".repeat(120));
    assert!(serde_json::from_slice::<CanonicalJsonValue>(nested.as_bytes()).is_ok(), "moderate nesting is fine");
}
