//! The room versions this server supports.

use ruma_common::RoomVersionId;
use ruma_common::room_version_rules::RoomVersionRules;

/// New rooms get this version unless the client asks for another: the spec's recommendation.
pub const DEFAULT: RoomVersionId = RoomVersionId::V12;

/// Versions a client may ask for, with their stability.
pub const SUPPORTED: [RoomVersionId; 3] = [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12];

/// The rules of a supported version; `None` for any other.
pub fn rules(version: &RoomVersionId) -> Option<RoomVersionRules> {
    SUPPORTED.contains(version).then(|| version.rules()).flatten()
}

#[cfg(test)]
mod tests {
    #[test]
    fn supported_versions_have_rules_and_others_do_not() {
        for v in super::SUPPORTED {
            assert!(super::rules(&v).is_some(), "{v}");
        }
        assert!(super::rules(&ruma_common::RoomVersionId::V9).is_none());
        assert!(super::rules(&super::DEFAULT).is_some_and(|r| r.authorization.room_create_event_id_as_room_id));
    }
}
