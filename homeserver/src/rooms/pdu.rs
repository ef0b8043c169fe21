//! PDUs: events as servers sign, hash and exchange them.
//!
//! A [`Pdu`] keeps the canonical JSON object exactly as signed (what federation ships) next to
//! the parsed fields the server works with. Building one follows the spec:
//! content hash, signature by the server key, event ID = reference hash
//! (<https://spec.matrix.org/v1.19/server-server-api/#calculating-the-reference-hash-for-an-event>),
//! all through ruma-signatures so that canonical JSON and redaction match other servers bit for bit.

use js_int::UInt;
use ruma_common::canonical_json::redact;
use ruma_common::room_version_rules::{RoomIdFormatVersion, RoomVersionRules};
use ruma_common::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomId, UserId,
};
use ruma_events::TimelineEventType;
use serde_json::value::RawValue;

use crate::crypto::SigningKey;

/// Errors building or parsing a PDU.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    /// The JSON is not a valid PDU.
    #[error("invalid PDU: {0}")]
    Invalid(String),
    /// Signing or hashing failed (e.g. the event is larger than 65,536 bytes).
    #[error("cannot sign or hash the event: {0}")]
    Signing(#[from] ruma_signatures::JsonError),
    /// A field is longer than the spec's 255 bytes.
    #[error("`{0}` is longer than 255 bytes")]
    FieldTooLong(&'static str),
}

/// The spec's cap on `type`, `state_key`, `sender` and IDs in a PDU, in bytes: other servers
/// refuse a PDU over it, so a local event over it would split the room.
pub const MAX_FIELD_BYTES: usize = 255;

/// A persisted or newly built event.
#[derive(Clone, Debug)]
pub struct Pdu {
    /// The event ID (a reference hash).
    pub event_id: OwnedEventId,
    /// The room (for a v12 create event, derived from its own reference hash).
    pub room_id: OwnedRoomId,
    /// Who sent it.
    pub sender: OwnedUserId,
    /// The event type.
    pub kind: TimelineEventType,
    /// Present on state events.
    pub state_key: Option<String>,
    /// The `content` object.
    pub content: Box<RawValue>,
    /// When the sending server created it.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// Depth in the room's DAG.
    pub depth: i64,
    /// The events this one follows.
    pub prev_events: Vec<OwnedEventId>,
    /// The state events that authorize it.
    pub auth_events: Vec<OwnedEventId>,
    /// For redactions: the redacted event.
    pub redacts: Option<OwnedEventId>,
    /// The complete signed PDU.
    pub json: CanonicalJsonObject,
}

/// What a local user wants to send; [`PduTemplate::build`] turns it into a signed PDU.
#[derive(Clone, Debug)]
pub struct PduTemplate {
    /// Event type.
    pub kind: TimelineEventType,
    /// State key, for state events.
    pub state_key: Option<String>,
    /// The content object.
    pub content: serde_json::Value,
}

/// Where a new event goes in its room's DAG.
#[derive(Clone)]
pub struct Placement<'a> {
    /// The room (ignored for a v12 create event, whose ID derives from the event).
    pub room_id: Option<&'a RoomId>,
    /// The room version's rules.
    pub rules: &'a RoomVersionRules,
    /// The room's forward extremities.
    pub prev_events: Vec<OwnedEventId>,
    /// The auth events selected for this event.
    pub auth_events: Vec<OwnedEventId>,
    /// One more than the largest depth among `prev_events`.
    pub depth: i64,
}

impl PduTemplate {
    /// Builds, hashes and signs the PDU with the server key.
    pub fn build(
        self,
        sender: &UserId,
        placement: Placement<'_>,
        origin_server_ts: MilliSecondsSinceUnixEpoch,
        key: &SigningKey,
    ) -> Result<Pdu, PduError> {
        let invalid = |e: &dyn std::fmt::Display| PduError::Invalid(e.to_string());
        if self.kind.to_string().len() > MAX_FIELD_BYTES {
            return Err(PduError::FieldTooLong("type"));
        }
        if self.state_key.as_ref().is_some_and(|k| k.len() > MAX_FIELD_BYTES) {
            return Err(PduError::FieldTooLong("state_key"));
        }
        let is_v12_create =
            self.kind == TimelineEventType::RoomCreate && placement.rules.room_id_format == RoomIdFormatVersion::V2;
        let mut object = CanonicalJsonObject::new();
        let mut put = |k: &str, v: serde_json::Value| -> Result<(), PduError> {
            object.insert(k.to_owned(), CanonicalJsonValue::try_from(v).map_err(|e| invalid(&e))?);
            Ok(())
        };
        let mut content = self.content;
        if self.kind == TimelineEventType::RoomRedaction && !placement.rules.redaction.keep_room_redaction_redacts {
            // Before room version 11, `redacts` is a top-level PDU field, not part of content.
            if let Some(redacts) = content.as_object_mut().and_then(|c| c.remove("redacts")) {
                put("redacts", redacts)?;
            }
        }
        put("type", self.kind.to_string().into())?;
        put("sender", sender.as_str().into())?;
        put("content", content)?;
        put("origin_server_ts", u64::from(origin_server_ts.get()).into())?;
        put("depth", placement.depth.into())?;
        put("prev_events", serde_json::to_value(&placement.prev_events).map_err(|e| invalid(&e))?)?;
        put("auth_events", serde_json::to_value(&placement.auth_events).map_err(|e| invalid(&e))?)?;
        if let Some(state_key) = self.state_key {
            put("state_key", state_key.into())?;
        }
        if !is_v12_create {
            let room_id = placement.room_id.ok_or_else(|| PduError::Invalid("an event needs a room ID".into()))?;
            put("room_id", room_id.as_str().into())?;
        }
        let room_id = if is_v12_create { None } else { placement.room_id };
        Pdu::seal(object, sender.server_name().as_str(), placement.rules, key, room_id)
    }
}

impl Pdu {
    /// Hashes and signs `object` as `server_name`, and derives its event ID (and, for a v12
    /// create event, its room ID, when `room_id` is `None`).
    pub fn seal(
        mut object: CanonicalJsonObject,
        server_name: &str,
        rules: &RoomVersionRules,
        key: &SigningKey,
        room_id: Option<&RoomId>,
    ) -> Result<Self, PduError> {
        ruma_signatures::hash_and_sign_event(server_name, key.ruma_key_pair(), &mut object, &rules.redaction)?;
        let hash = ruma_signatures::reference_hash(&object, rules)?;
        let event_id = EventId::new_v2_or_v3(&hash).map_err(|e| PduError::Invalid(e.to_string()))?;
        let room_id = match room_id {
            Some(room_id) => room_id.to_owned(),
            None => RoomId::new_v2(&hash).map_err(|e| PduError::Invalid(e.to_string()))?,
        };
        Self::from_canonical(event_id, room_id, object)
    }

    /// A PDU as another server sent it: the event ID is its reference hash, the room ID its
    /// `room_id` (or, for a v12 create event, derived from the hash). Signatures are not checked
    /// here.
    pub fn from_received(object: CanonicalJsonObject, rules: &RoomVersionRules) -> Result<Self, PduError> {
        let invalid = |e: &dyn std::fmt::Display| PduError::Invalid(e.to_string());
        let hash = ruma_signatures::reference_hash(&object, rules)?;
        let event_id = EventId::new_v2_or_v3(&hash).map_err(|e| invalid(&e))?;
        let room_id = match object.get("room_id") {
            Some(CanonicalJsonValue::String(room_id)) => RoomId::parse(room_id.as_str()).map_err(|e| invalid(&e))?,
            None if object.get("type") == Some(&CanonicalJsonValue::String("m.room.create".into()))
                && rules.room_id_format == RoomIdFormatVersion::V2 =>
            {
                RoomId::new_v2(&hash).map_err(|e| invalid(&e))?
            }
            _ => return Err(PduError::Invalid(format!("no room_id in {event_id}"))),
        };
        Self::from_canonical(event_id, room_id, object)
    }

    /// Parses a stored PDU (`json` as persisted, without `event_id`).
    pub fn from_json(event_id: &str, room_id: &str, json: &str) -> Result<Self, PduError> {
        let invalid = |e: &dyn std::fmt::Display| PduError::Invalid(e.to_string());
        let object: CanonicalJsonObject = serde_json::from_str(json).map_err(|e| invalid(&e))?;
        let event_id = EventId::parse(event_id).map_err(|e| invalid(&e))?;
        let room_id = RoomId::parse(room_id).map_err(|e| invalid(&e))?;
        Self::from_canonical(event_id, room_id, object)
    }

    fn from_canonical(
        event_id: OwnedEventId,
        room_id: OwnedRoomId,
        json: CanonicalJsonObject,
    ) -> Result<Self, PduError> {
        let invalid = |what: &str| PduError::Invalid(format!("{what} in {event_id}"));
        let str_field = |name: &str| match json.get(name) {
            Some(CanonicalJsonValue::String(s)) => Ok(s.as_str()),
            _ => Err(invalid(name)),
        };
        let ids = |name: &str| -> Result<Vec<OwnedEventId>, PduError> {
            match json.get(name) {
                Some(CanonicalJsonValue::Array(items)) => items
                    .iter()
                    .map(|v| match v {
                        CanonicalJsonValue::String(s) => EventId::parse(s.as_str()).map_err(|_| invalid(name)),
                        _ => Err(invalid(name)),
                    })
                    .collect(),
                _ => Err(invalid(name)),
            }
        };
        let int = |name: &str| match json.get(name) {
            Some(CanonicalJsonValue::Integer(i)) => Ok(i64::from(*i)),
            _ => Err(invalid(name)),
        };
        let content = json.get("content").ok_or_else(|| invalid("content"))?;
        let content = serde_json::value::to_raw_value(content).map_err(|_| invalid("content"))?;
        let kind = TimelineEventType::from(str_field("type")?);
        let redacts = match json.get("redacts") {
            Some(CanonicalJsonValue::String(s)) => Some(EventId::parse(s.as_str()).map_err(|_| invalid("redacts"))?),
            _ => serde_json::from_str::<serde_json::Value>(content.get())
                .ok()
                .and_then(|c| c.get("redacts").and_then(|r| r.as_str()).map(str::to_owned))
                .filter(|_| kind == TimelineEventType::RoomRedaction)
                .and_then(|r| EventId::parse(r).ok()),
        };
        let ts = UInt::try_from(int("origin_server_ts")?).map_err(|_| invalid("origin_server_ts"))?;
        Ok(Self {
            sender: UserId::parse(str_field("sender")?).map_err(|_| invalid("sender"))?,
            state_key: match json.get("state_key") {
                Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
                None => None,
                Some(_) => return Err(invalid("state_key")),
            },
            origin_server_ts: MilliSecondsSinceUnixEpoch(ts),
            depth: int("depth")?,
            prev_events: ids("prev_events")?,
            auth_events: ids("auth_events")?,
            redacts,
            kind,
            content,
            event_id,
            room_id,
            json,
        })
    }

    /// The PDU as canonical JSON text, for storage.
    pub fn json_string(&self) -> String {
        // Keys are sorted (a BTreeMap) and serde_json writes compactly: canonical JSON, as
        // `CanonicalJsonValue`'s `Display` would give, without copying the object first.
        serde_json::to_string(&self.json).unwrap_or_default()
    }

    /// The content as a JSON value.
    pub fn content_value(&self) -> serde_json::Value {
        serde_json::from_str(self.content.get()).unwrap_or(serde_json::Value::Null)
    }

    /// A field of the content, if it is a string.
    pub fn content_str(&self, field: &str) -> Option<String> {
        self.content_value().get(field).and_then(|v| v.as_str()).map(str::to_owned)
    }

    /// This event with its content stripped by the room version's redaction algorithm.
    pub fn redacted(&self, rules: &RoomVersionRules) -> Result<Self, PduError> {
        let redacted =
            redact(self.json.clone(), &rules.redaction, None).map_err(|e| PduError::Invalid(e.to_string()))?;
        Self::from_canonical(self.event_id.clone(), self.room_id.clone(), redacted)
    }

    /// The event in the Client-Server API's format (`ClientEvent`), with `room_id` unless the
    /// context gives it (sync).
    pub fn to_client_event(&self, with_room_id: bool) -> serde_json::Value {
        let view = EventView {
            kind: self.kind.to_string(),
            sender: self.sender.to_string(),
            state_key: self.state_key.clone(),
            content: self.content_value(),
            origin_server_ts: u64::from(self.origin_server_ts.get()),
            redacts: self.redacts.as_ref().map(ToString::to_string),
        };
        view.into_client_event(self.event_id.as_str(), with_room_id.then_some(self.room_id.as_str()))
    }

    /// The stripped form used in invite state: type, state key, sender and content.
    pub fn to_stripped_state(&self) -> serde_json::Value {
        serde_json::json!({
            "type": self.kind.to_string(),
            "state_key": self.state_key.clone().unwrap_or_default(),
            "sender": self.sender,
            "content": self.content_value(),
        })
    }
}

/// What clients see of a stored PDU, read in one pass: the read paths that serve many events
/// (sync, pagination) use this rather than [`Pdu`], which builds and checks the whole signed
/// object. The stored JSON was checked when it was accepted.
#[derive(Debug, serde::Deserialize)]
pub struct EventView {
    /// The event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Who sent it.
    pub sender: String,
    /// Present on state events.
    #[serde(default)]
    pub state_key: Option<String>,
    /// The content.
    pub content: serde_json::Value,
    /// When the sending server created it.
    pub origin_server_ts: u64,
    /// A redaction's target before room version 11 (later versions carry it in content).
    #[serde(default)]
    pub redacts: Option<String>,
}

impl EventView {
    /// Reads a stored PDU.
    pub fn parse(json: &str) -> Result<Self, PduError> {
        serde_json::from_str(json).map_err(|e| PduError::Invalid(e.to_string()))
    }

    /// The event in the Client-Server API's format (`ClientEvent`); `room_id` unless the context
    /// gives it (sync).
    pub fn into_client_event(self, event_id: &str, room_id: Option<&str>) -> serde_json::Value {
        let redacts = match self.redacts {
            Some(redacts) => Some(redacts.into()),
            None if self.kind == "m.room.redaction" => self.content.get("redacts").cloned(),
            None => None,
        };
        let mut event = serde_json::Map::with_capacity(8);
        event.insert("type".into(), self.kind.into());
        event.insert("event_id".into(), event_id.into());
        event.insert("sender".into(), self.sender.into());
        event.insert("origin_server_ts".into(), self.origin_server_ts.into());
        event.insert("content".into(), self.content);
        event.insert("unsigned".into(), serde_json::Value::Object(serde_json::Map::new()));
        if let Some(state_key) = self.state_key {
            event.insert("state_key".into(), state_key.into());
        }
        if let Some(room_id) = room_id {
            event.insert("room_id".into(), room_id.into());
        }
        if let Some(redacts) = redacts {
            // Room versions 11+ carry `redacts` in content; clients written for older versions
            // read it at the top level, so it appears in both places.
            event.insert("redacts".into(), redacts);
        }
        serde_json::Value::Object(event)
    }
}

impl ruma_state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        // v12 create events carry no room_id; their ID implies it.
        self.json.contains_key("room_id").then_some(&*self.room_id)
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use ruma_common::RoomVersionId;
    use ruma_common::room_version_rules::RoomVersionRules;

    use super::*;

    fn spec_key() -> SigningKey {
        SigningKey::spec_test_vector()
    }

    /// The spec's "Event Signing" test vector (appendices): content hash and signature.
    #[test]
    fn event_signing_matches_the_spec_vector() {
        let mut event: CanonicalJsonObject = serde_json::from_str(
            r#"{"room_id": "!x:domain", "sender": "@a:domain", "origin": "domain", "origin_server_ts": 1000000,
                "signatures": {}, "hashes": {}, "type": "X", "content": {}, "prev_events": [], "auth_events": [],
                "depth": 3, "unsigned": {"age_ts": 1000000}}"#,
        )
        .unwrap();
        let key = spec_key();
        let pair = key.ruma_key_pair();
        ruma_signatures::hash_and_sign_event("domain", pair, &mut event, &RoomVersionRules::V10.redaction).unwrap();
        let signed = serde_json::to_value(&event).unwrap();
        assert_eq!(signed["hashes"]["sha256"], "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos");
        assert_eq!(
            signed["signatures"]["domain"]["ed25519:1"],
            "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
        );
    }

    fn create_event(version: &RoomVersionId, room_id: Option<&RoomId>) -> Pdu {
        let rules = version.rules().unwrap();
        let sender = UserId::parse("@alice:domain").unwrap();
        let template = PduTemplate {
            kind: TimelineEventType::RoomCreate,
            state_key: Some(String::new()),
            content: serde_json::json!({"room_version": version.as_str()}),
        };
        let placement = Placement { room_id, rules: &rules, prev_events: vec![], auth_events: vec![], depth: 1 };
        template.build(&sender, placement, MilliSecondsSinceUnixEpoch(UInt::from(1_000u32)), &spec_key()).unwrap()
    }

    #[test]
    fn v12_room_ids_derive_from_the_create_event() {
        let create = create_event(&RoomVersionId::V12, None);
        assert_eq!(create.room_id.as_str()[1..], create.event_id.as_str()[1..]);
        assert!(!create.json.contains_key("room_id"));
        // The reference hash recomputed from the stored JSON gives the same ID.
        let reparsed =
            Pdu::from_json(create.event_id.as_str(), create.room_id.as_str(), &create.json_string()).unwrap();
        let rules = RoomVersionRules::V12;
        assert_eq!(
            format!("${}", ruma_signatures::reference_hash(&reparsed.json, &rules).unwrap()),
            create.event_id.as_str()
        );
    }

    #[test]
    fn v10_and_v11_events_carry_the_given_room_id_and_verify() {
        for version in [RoomVersionId::V10, RoomVersionId::V11] {
            let room_id = RoomId::parse("!abc:domain").unwrap();
            let create = create_event(&version, Some(&room_id));
            assert_eq!(create.room_id, room_id);
            assert_eq!(create.json["room_id"], CanonicalJsonValue::String("!abc:domain".into()));
            let key = spec_key();
            let public_keys = std::collections::BTreeMap::from([(
                "domain".to_owned(),
                std::collections::BTreeMap::from([(
                    key.key_id(),
                    ruma_common::serde::Base64::parse(key.public_key_base64()).unwrap(),
                )]),
            )]);
            let verified =
                ruma_signatures::verify_event(&public_keys, &create.json, &version.rules().unwrap()).unwrap();
            assert_eq!(verified, ruma_signatures::Verified::All);
        }
    }

    #[test]
    fn redaction_strips_content_per_version() {
        let room_id = RoomId::parse("!abc:domain").unwrap();
        let rules = RoomVersionRules::V11;
        let sender = UserId::parse("@alice:domain").unwrap();
        let template = PduTemplate {
            kind: TimelineEventType::RoomMessage,
            state_key: None,
            content: serde_json::json!({"msgtype": "m.text", "body": "secret"}),
        };
        let placement =
            Placement { room_id: Some(&room_id), rules: &rules, prev_events: vec![], auth_events: vec![], depth: 2 };
        let message = template.build(&sender, placement, MilliSecondsSinceUnixEpoch::now(), &spec_key()).unwrap();
        let redacted = message.redacted(&rules).unwrap();
        assert_eq!(redacted.content_value(), serde_json::json!({}));
        assert_eq!(redacted.event_id, message.event_id);
        assert_eq!(redacted.to_client_event(true)["room_id"], "!abc:domain");
    }

    /// The one-pass view gives clients the same event as the full parse, `redacts` included
    /// whether the room version keeps it at the top level or in content.
    #[test]
    fn event_view_matches_the_full_parse() {
        let room_id = RoomId::parse("!abc:domain").unwrap();
        let sender = UserId::parse("@alice:domain").unwrap();
        for rules in [RoomVersionRules::V10, RoomVersionRules::V11] {
            let template = PduTemplate {
                kind: TimelineEventType::RoomRedaction,
                state_key: None,
                content: serde_json::json!({"redacts": "$target", "reason": "spam"}),
            };
            let placement = Placement {
                room_id: Some(&room_id),
                rules: &rules,
                prev_events: vec![],
                auth_events: vec![],
                depth: 2,
            };
            let pdu = template.build(&sender, placement, MilliSecondsSinceUnixEpoch::now(), &spec_key()).unwrap();
            let view = EventView::parse(&pdu.json_string()).unwrap();
            let event = view.into_client_event(pdu.event_id.as_str(), Some(room_id.as_str()));
            assert_eq!(event, pdu.to_client_event(true));
            assert_eq!(event["redacts"], "$target");
        }
    }
}
