//! The `X-Matrix` Authorization header: how servers sign their requests to each other
//! (<https://spec.matrix.org/v1.19/server-server-api/#request-authentication>).
//!
//! The signed object is `{method, uri, origin, destination, content?}`; the signature travels
//! in `Authorization: X-Matrix origin="…",destination="…",key="ed25519:…",sig="…"`.

use ruma_common::{CanonicalJsonObject, CanonicalJsonValue};

use crate::crypto::SigningKey;

/// The parameters of one `X-Matrix` Authorization header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XMatrix {
    /// The requesting server.
    pub origin: String,
    /// The server the request was meant for (optional before spec v1.3).
    pub destination: Option<String>,
    /// The key ID the request was signed with (`ed25519:…`).
    pub key: String,
    /// The signature (unpadded base64).
    pub sig: String,
}

impl XMatrix {
    /// Parses the header value (`X-Matrix k=v,k="v",…`). The scheme is case-insensitive,
    /// values may be quoted (with backslash escapes) or bare, unknown parameters are ignored.
    pub fn parse(header: &str) -> Result<Self, String> {
        let (scheme, params) = header.trim().split_once(' ').ok_or("not an X-Matrix header")?;
        if !scheme.eq_ignore_ascii_case("X-Matrix") {
            return Err("not an X-Matrix header".into());
        }
        let (mut origin, mut destination, mut key, mut sig) = (None, None, None, None);
        for (name, value) in parse_params(params)? {
            match name.to_ascii_lowercase().as_str() {
                "origin" => origin = Some(value),
                "destination" => destination = Some(value),
                "key" => key = Some(value),
                "sig" => sig = Some(value),
                _ => {}
            }
        }
        Ok(Self {
            origin: origin.ok_or("the X-Matrix header has no origin")?,
            destination,
            key: key.ok_or("the X-Matrix header has no key")?,
            sig: sig.ok_or("the X-Matrix header has no sig")?,
        })
    }

    /// Signs a request from `origin` (whose key is `key`) to `destination`.
    pub fn sign(
        key: &SigningKey,
        origin: &str,
        destination: &str,
        method: &str,
        uri: &str,
        content: Option<&CanonicalJsonValue>,
    ) -> Result<Self, String> {
        let mut object = request_object(method, uri, origin, destination, content);
        ruma_signatures::sign_json(origin, key.ruma_key_pair(), &mut object).map_err(|e| e.to_string())?;
        let sig = match object.get("signatures").and_then(|s| match s {
            CanonicalJsonValue::Object(by_server) => by_server.get(origin),
            _ => None,
        }) {
            Some(CanonicalJsonValue::Object(by_key)) => match by_key.get(&key.key_id()) {
                Some(CanonicalJsonValue::String(sig)) => sig.clone(),
                _ => return Err("signing produced no signature".into()),
            },
            _ => return Err("signing produced no signature".into()),
        };
        Ok(Self { origin: origin.to_owned(), destination: Some(destination.to_owned()), key: key.key_id(), sig })
    }

    /// The header value.
    pub fn to_header(&self) -> String {
        let destination =
            self.destination.as_deref().map(|d| format!("destination=\"{}\",", quote(d))).unwrap_or_default();
        format!(
            "X-Matrix origin=\"{}\",{destination}key=\"{}\",sig=\"{}\"",
            quote(&self.origin),
            quote(&self.key),
            quote(&self.sig)
        )
    }

    /// Checks the signature against the origin's `public_key` for a request we received as
    /// `destination`.
    pub fn verify(
        &self,
        public_key: &str,
        method: &str,
        uri: &str,
        destination: &str,
        content: Option<&CanonicalJsonValue>,
    ) -> Result<(), String> {
        if self.destination.as_deref().is_some_and(|d| d != destination) {
            return Err(format!("the request was meant for {}", self.destination.as_deref().unwrap_or_default()));
        }
        let mut object = request_object(method, uri, &self.origin, destination, content);
        let mut by_key = CanonicalJsonObject::new();
        by_key.insert(self.key.clone(), CanonicalJsonValue::String(self.sig.clone()));
        let mut signatures = CanonicalJsonObject::new();
        signatures.insert(self.origin.clone(), CanonicalJsonValue::Object(by_key));
        object.insert("signatures".into(), CanonicalJsonValue::Object(signatures));
        crate::crypto::verify_signature(&object, &self.origin, &self.key, public_key)
    }
}

fn request_object(
    method: &str,
    uri: &str,
    origin: &str,
    destination: &str,
    content: Option<&CanonicalJsonValue>,
) -> CanonicalJsonObject {
    let mut object = CanonicalJsonObject::new();
    object.insert("method".into(), CanonicalJsonValue::String(method.to_owned()));
    object.insert("uri".into(), CanonicalJsonValue::String(uri.to_owned()));
    object.insert("origin".into(), CanonicalJsonValue::String(origin.to_owned()));
    object.insert("destination".into(), CanonicalJsonValue::String(destination.to_owned()));
    if let Some(content) = content {
        object.insert("content".into(), content.clone());
    }
    object
}

fn quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `name=value` pairs separated by commas; values bare or quoted.
fn parse_params(input: &str) -> Result<Vec<(String, String)>, String> {
    let mut params = Vec::new();
    let mut chars = input.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(params);
        }
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if chars.next() != Some('=') {
            return Err(format!("a parameter without value: {}", name.trim()));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let value = if chars.next_if_eq(&'"').is_some() {
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or("an unfinished escape")?),
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => return Err("an unterminated quoted value".into()),
                }
            }
            value
        } else {
            std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_owned()
        };
        params.push((name.trim().to_owned(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_specs_example_and_bare_values() {
        let header = r#"X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com",key="ed25519:key1",sig="ABCDEF...""#;
        let parsed = XMatrix::parse(header).unwrap();
        assert_eq!(parsed.origin, "origin.hs.example.com");
        assert_eq!(parsed.destination.as_deref(), Some("destination.hs.example.com"));
        assert_eq!(parsed.key, "ed25519:key1");
        assert_eq!(parsed.sig, "ABCDEF...");
        let bare = XMatrix::parse("x-matrix origin=a.example:8448, key=\"ed25519:k\",sig=c2ln, extra=1").unwrap();
        assert_eq!(bare.origin, "a.example:8448");
        assert_eq!(bare.destination, None);
        assert_eq!(bare.sig, "c2ln");
        for bad in ["Bearer abc", "X-Matrix origin=a", "X-Matrix origin=\"a,key=b", "X-Matrix key=k,sig=s"] {
            assert!(XMatrix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_signed_request_verifies_only_as_sent() {
        let key = SigningKey::spec_test_vector();
        let content = CanonicalJsonValue::try_from(serde_json::json!({ "pdus": [] })).unwrap();
        let signed =
            XMatrix::sign(&key, "a.example", "b.example", "PUT", "/_matrix/federation/v1/send/1", Some(&content))
                .unwrap();
        let header = signed.to_header();
        let parsed = XMatrix::parse(&header).unwrap();
        assert_eq!(parsed, signed);
        let public = key.public_key_base64();
        let uri = "/_matrix/federation/v1/send/1";
        parsed.verify(&public, "PUT", uri, "b.example", Some(&content)).unwrap();
        // Anything changed fails: method, path, destination, body.
        assert!(parsed.verify(&public, "POST", uri, "b.example", Some(&content)).is_err());
        assert!(parsed.verify(&public, "PUT", "/_matrix/federation/v1/send/2", "b.example", Some(&content)).is_err());
        assert!(parsed.verify(&public, "PUT", uri, "c.example", Some(&content)).is_err());
        let other = CanonicalJsonValue::try_from(serde_json::json!({ "pdus": [1] })).unwrap();
        assert!(parsed.verify(&public, "PUT", uri, "b.example", Some(&other)).is_err());
        assert!(parsed.verify(&public, "PUT", uri, "b.example", None).is_err());
    }
}
