//! Event filters (the parts this server applies): timeline `limit`, `types`/`not_types` with
//! `*` wildcards, `rooms`/`not_rooms`, and `lazy_load_members`.
//! <https://spec.matrix.org/v1.19/client-server-api/#filtering>

use serde::Deserialize;

use crate::api::error::MatrixError;

/// A room event filter.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct RoomEventFilter {
    /// Most events to return.
    pub limit: Option<i64>,
    /// Event types to include (`*` wildcards).
    pub types: Option<Vec<String>>,
    /// Event types to leave out; wins over `types`.
    pub not_types: Vec<String>,
    /// Rooms to include.
    pub rooms: Option<Vec<String>>,
    /// Rooms to leave out.
    pub not_rooms: Vec<String>,
    /// Send only the member events of senders in the timeline.
    pub lazy_load_members: bool,
}

/// The room part of a sync filter.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct RoomFilter {
    /// Filter for timeline events.
    pub timeline: RoomEventFilter,
    /// Filter for state events.
    pub state: RoomEventFilter,
    /// Rooms to include.
    pub rooms: Option<Vec<String>>,
    /// Rooms to leave out.
    pub not_rooms: Vec<String>,
    /// Whether to include rooms the user left.
    pub include_leave: bool,
}

/// A filter as `POST /user/{userId}/filter` stores it and `/sync` applies it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Filter {
    /// Room data.
    pub room: RoomFilter,
}

fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

impl RoomEventFilter {
    /// Parses a filter given inline as JSON; absent means "no filter".
    pub fn parse(json: Option<&str>) -> Result<Self, MatrixError> {
        match json {
            None => Ok(Self::default()),
            Some(json) => serde_json::from_str(json).map_err(|e| MatrixError::bad_json(format!("Invalid filter: {e}"))),
        }
    }

    /// Whether an event type passes the type filters.
    pub fn matches_type(&self, kind: &str) -> bool {
        !self.not_types.iter().any(|p| type_matches(p, kind))
            && self.types.as_ref().is_none_or(|types| types.iter().any(|p| type_matches(p, kind)))
    }
}

impl RoomFilter {
    /// Whether a room passes the room filters.
    pub fn includes_room(&self, room_id: &str) -> bool {
        !self.not_rooms.iter().any(|r| r == room_id)
            && self.rooms.as_ref().is_none_or(|rooms| rooms.iter().any(|r| r == room_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_precedence() {
        assert!(type_matches("m.room.*", "m.room.message"));
        assert!(type_matches("m.room.message", "m.room.message"));
        assert!(!type_matches("m.room.message", "m.room.messages"));
        let filter: Filter =
            serde_json::from_str(r#"{"room": {"not_rooms": ["!a"], "timeline": {"limit": 3}}}"#).unwrap();
        assert!(!filter.room.includes_room("!a"));
        assert!(filter.room.includes_room("!b"));
        assert_eq!(filter.room.timeline.limit, Some(3));
        assert!(RoomEventFilter::parse(Some("not json")).is_err());
    }
}
