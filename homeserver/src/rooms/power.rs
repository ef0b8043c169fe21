//! Power levels as the server applies them outside the authorization rules (e.g. who may
//! redact others' events). The rules themselves are ruma-state-res's.

use std::collections::BTreeMap;

use ruma_common::room_version_rules::RoomVersionRules;
use ruma_common::{OwnedUserId, UserId};
use serde::Deserialize;

use super::RoomError;
use super::pdu::Pdu;

/// The effective power levels of a room.
#[derive(Debug, Clone)]
pub struct PowerLevels {
    users: BTreeMap<OwnedUserId, i64>,
    users_default: i64,
    creators: Vec<OwnedUserId>,
    /// Level needed to redact other users' events.
    pub redact: i64,
    events: BTreeMap<String, i64>,
    state_default: i64,
}

#[derive(Deserialize, Default)]
struct Content {
    #[serde(default)]
    users: BTreeMap<OwnedUserId, serde_json::Value>,
    users_default: Option<serde_json::Value>,
    redact: Option<serde_json::Value>,
    #[serde(default)]
    events: BTreeMap<String, serde_json::Value>,
    state_default: Option<serde_json::Value>,
}

fn level(value: Option<&serde_json::Value>, default: i64) -> i64 {
    match value {
        Some(serde_json::Value::Number(n)) => n.as_i64().unwrap_or(default),
        // Room versions before 10 allowed numeric strings; accept them when reading.
        Some(serde_json::Value::String(s)) => s.trim().parse().unwrap_or(default),
        _ => default,
    }
}

impl PowerLevels {
    /// Computes the levels from the create event and the power levels event, if any.
    pub fn from_events(create: &Pdu, power_levels: Option<&Pdu>, rules: &RoomVersionRules) -> Self {
        // Only room versions that privilege creators (12+) give them unlimited power; before,
        // the creator's level is whatever the power levels say.
        let mut creators = Vec::new();
        if rules.authorization.explicitly_privilege_room_creators {
            creators.push(create.sender.clone());
        }
        if rules.authorization.additional_room_creators
            && let Some(extra) = create.content_value().get("additional_creators").and_then(|v| v.as_array())
        {
            creators.extend(extra.iter().filter_map(|v| v.as_str()).filter_map(|s| UserId::parse(s).ok()));
        }
        let Some(power_levels) = power_levels else {
            // Without a power levels event the creator has 100 and everyone else 0.
            return Self {
                users: BTreeMap::from([(create.sender.clone(), 100)]),
                users_default: 0,
                creators,
                redact: 50,
                events: BTreeMap::new(),
                state_default: 0,
            };
        };
        let content: Content = serde_json::from_str(power_levels.content.get()).unwrap_or_default();
        Self {
            users: content.users.iter().map(|(u, v)| (u.clone(), level(Some(v), 0))).collect(),
            users_default: level(content.users_default.as_ref(), 0),
            redact: level(content.redact.as_ref(), 50),
            events: content.events.iter().map(|(k, v)| (k.clone(), level(Some(v), 0))).collect(),
            state_default: level(content.state_default.as_ref(), 50),
            creators,
        }
    }

    /// The level needed to send a state event of `kind`.
    pub fn state_level(&self, kind: &str) -> i64 {
        self.events.get(kind).copied().unwrap_or(self.state_default)
    }

    /// A user's level; room creators rank above every number in room versions that say so.
    pub fn user_level(&self, user: &UserId) -> i64 {
        if self.creators.iter().any(|c| c == user) && !self.users.contains_key(user) {
            return i64::MAX;
        }
        self.users.get(user).copied().unwrap_or(self.users_default)
    }
}

/// Whether `user_id` could send a state event of `kind` in the room now (for server-side
/// decisions that mirror a state change, such as publishing the room in the directory).
pub async fn can_send_state(
    state: &crate::state::AppState,
    room_id: &ruma_common::RoomId,
    user_id: &str,
    kind: &str,
) -> Result<bool, RoomError> {
    let storage = &state.storage;
    let Some(room) = storage.room(room_id.as_str()).await? else { return Ok(false) };
    if storage.membership(room_id.as_str(), user_id).await?.is_none_or(|(m, _)| m != "join") {
        return Ok(false);
    }
    let version =
        ruma_common::RoomVersionId::try_from(room.version.as_str()).map_err(|e| RoomError::Corrupt(e.to_string()))?;
    let rules = super::version::rules(&version).ok_or(RoomError::UnsupportedVersion(room.version))?;
    let load = |kind: &'static str| async move {
        match storage.current_state_event(room_id.as_str(), kind, "").await? {
            Some(e) => Ok::<_, RoomError>(Some(Pdu::from_json(&e.event_id, &e.room_id, &e.json)?)),
            None => Ok(None),
        }
    };
    let create = load("m.room.create").await?.ok_or(RoomError::NotFound)?;
    let power_levels = load("m.room.power_levels").await?;
    let levels = PowerLevels::from_events(&create, power_levels.as_ref(), &rules);
    let user = UserId::parse(user_id).map_err(|e| RoomError::Corrupt(e.to_string()))?;
    Ok(levels.user_level(&user) >= levels.state_level(kind))
}
