//! The `X-Matrix` Authorization header parser
//! (<https://spec.matrix.org/v1.19/server-server-api/#request-authentication>): whatever a
//! client sends parses or is refused without a panic, what we send parses back as sent, and
//! the parameter syntax the spec allows (case-insensitive scheme, quoted or bare values, any
//! order, unknown parameters) gives the values written.

use myelin_homeserver::federation::authorization::XMatrix;
use proptest::prelude::*;

/// One `name=value` pair as a peer might write it.
#[derive(Clone, Debug)]
struct Param {
    name: String,
    value: String,
    quoted: bool,
    /// Whitespace around `=`.
    padding: (String, String),
}

impl Param {
    fn render(&self) -> String {
        let value = if self.quoted {
            format!("\"{}\"", self.value.replace('\\', "\\\\").replace('"', "\\\""))
        } else {
            self.value.clone()
        };
        format!("{}{}={}{value}", self.name, self.padding.0, self.padding.1)
    }
}

/// A value: anything when quoted; bare, no comma or quote and no surrounding whitespace.
fn value(quoted: bool) -> BoxedStrategy<String> {
    if quoted { any::<String>().boxed() } else { "[^,\"\\s]([^,\"]*[^,\"\\s])?|".boxed() }
}

fn padding() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), Just(" ".to_owned()), Just("  ".to_owned()), Just("\t".to_owned())]
}

/// A parameter named `name` (its case shuffled).
fn param(name: &'static str) -> impl Strategy<Value = Param> {
    let name = proptest::collection::vec(any::<bool>(), name.len()).prop_map(move |upper| {
        name.chars().zip(upper).map(|(c, up)| if up { c.to_ascii_uppercase() } else { c }).collect::<String>()
    });
    (name, any::<bool>(), (padding(), padding())).prop_flat_map(|(name, quoted, padding)| {
        value(quoted).prop_map(move |value| Param { name: name.clone(), value, quoted, padding: padding.clone() })
    })
}

/// A parameter the spec does not define, which must be ignored.
fn unknown_param() -> impl Strategy<Value = Param> {
    let name = "[A-Za-z_]{1,10}".prop_filter("not a known name", |n| {
        !["origin", "destination", "key", "sig"].contains(&n.to_ascii_lowercase().as_str())
    });
    (name, any::<bool>(), (padding(), padding())).prop_flat_map(|(name, quoted, padding)| {
        value(quoted).prop_map(move |value| Param { name: name.clone(), value, quoted, padding: padding.clone() })
    })
}

/// A header: scheme, the four parameters (each maybe left out), unknown ones, shuffled, with
/// random separators.
fn near_valid_header() -> impl Strategy<Value = (String, bool, Vec<(Param, bool)>)> {
    let scheme = prop_oneof![
        4 => Just(("X-Matrix", true)),
        2 => Just(("x-matrix", true)),
        2 => Just(("X-MATRIX", true)),
        1 => Just(("XMatrix", false)),
        1 => Just(("Bearer", false)),
        1 => Just(("X-Matrix,", false)),
    ];
    let known = (param("origin"), param("destination"), param("key"), param("sig"));
    let present = proptest::collection::vec(prop::bool::weighted(0.85), 4);
    let unknown = proptest::collection::vec(unknown_param(), 0..3);
    let separators = proptest::collection::vec(prop_oneof![Just(","), Just(", "), Just(" ,"), Just(",,")], 8);
    (scheme, known, present, unknown, separators, any::<bool>(), any::<prop::sample::Index>()).prop_map(
        |((scheme, valid), (origin, destination, key, sig), present, unknown, separators, trailing, shuffle)| {
            let mut params: Vec<(Param, bool)> = [origin, destination, key, sig]
                .into_iter()
                .zip(present)
                .filter(|(_, present)| *present)
                .map(|(param, _)| (param, true))
                .chain(unknown.into_iter().map(|param| (param, false)))
                .collect();
            let len = params.len();
            if len > 1 {
                params.rotate_left(shuffle.index(len));
            }
            let mut header = format!("{scheme} ");
            for (i, (param, _)) in params.iter().enumerate() {
                if i > 0 {
                    header.push_str(separators[i % separators.len()]);
                }
                header.push_str(&param.render());
            }
            if trailing {
                header.push(',');
            }
            (header, valid, params)
        },
    )
}

proptest! {
    #![proptest_config(super::config(2048))]

    /// Any header value, and any text after the scheme: parsed or refused, and what parses
    /// survives our own serialization unchanged.
    #[test]
    fn any_header_parses_or_is_refused(raw in any::<String>(), after_scheme in any::<String>()) {
        for header in [raw, format!("X-Matrix {after_scheme}")] {
            if let Ok(parsed) = XMatrix::parse(&header) {
                prop_assert_eq!(XMatrix::parse(&parsed.to_header()), Ok(parsed));
            }
        }
    }

    /// What we send parses back to the same origin, destination, key and signature, whatever
    /// characters they hold (quotes, backslashes, commas, `=`, spaces, non-ASCII).
    #[test]
    fn our_headers_round_trip(
        origin in any::<String>(),
        destination in proptest::option::of(any::<String>()),
        key in any::<String>(),
        sig in any::<String>(),
    ) {
        let header = XMatrix { origin, destination, key, sig };
        prop_assert_eq!(XMatrix::parse(&header.to_header()), Ok(header));
    }

    /// The syntax the spec allows gives the values written; a wrong scheme or a missing
    /// origin, key or sig is refused.
    #[test]
    fn near_valid_headers_give_their_values((header, valid_scheme, params) in near_valid_header()) {
        let find = |name: &str| {
            params.iter().find(|(p, known)| *known && p.name.eq_ignore_ascii_case(name)).map(|(p, _)| p.value.clone())
        };
        let parsed = XMatrix::parse(&header);
        match (valid_scheme, find("origin"), find("key"), find("sig")) {
            (true, Some(origin), Some(key), Some(sig)) => {
                let expected = XMatrix { origin, destination: find("destination"), key, sig };
                prop_assert_eq!(parsed, Ok(expected), "{}", header);
            }
            _ => prop_assert!(parsed.is_err(), "{header} parsed as {parsed:?}"),
        }
    }
}
