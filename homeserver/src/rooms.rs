//! Rooms: events as signed PDUs, room versions, authorization, state, the timeline append path
//! and membership.
//!
//! Spec algorithms (hashing, signing, event IDs, authorization rules) come from ruma's crates;
//! this module supplies them with data from `storage` and never imports poem.

pub mod create;
pub mod membership;
pub mod notices;
pub mod pdu;
pub mod power;
pub mod timeline;
pub mod version;
pub mod visibility;

use crate::storage;

/// The state events an invitee is shown of a room (stripped state), besides member events.
pub const STRIPPED_STATE_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// Errors of the rooms layer, in domain words; the API layer picks errcodes.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    /// No such room (or event) here.
    #[error("not found")]
    NotFound,
    /// The authorization rules, or another rule of the server, refuse the event.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The room version is not one this server supports.
    #[error("unsupported room version {0}")]
    UnsupportedVersion(String),
    /// The requested event is malformed.
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// The alias is taken.
    #[error("alias in use")]
    AliasInUse,
    /// The event would exceed the spec's 65,536-byte limit, or a field its 255 bytes.
    #[error("event too large: {0}")]
    TooLarge(String),
    /// Events the event refers to (prev or auth events) are not here yet.
    #[error("missing events: {0:?}")]
    MissingEvents(Vec<ruma_common::OwnedEventId>),
    /// Stored data could not be read back.
    #[error("corrupt room data: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
}

impl From<pdu::PduError> for RoomError {
    fn from(err: pdu::PduError) -> Self {
        match err {
            pdu::PduError::Signing(ruma_signatures::JsonError::PduTooLarge) => {
                Self::TooLarge("Events may be at most 65536 bytes".to_owned())
            }
            pdu::PduError::FieldTooLong(field) => {
                Self::TooLarge(format!("The event's {field} may be at most {} bytes", pdu::MAX_FIELD_BYTES))
            }
            pdu::PduError::Invalid(reason) => Self::InvalidEvent(reason),
            other => Self::Corrupt(other.to_string()),
        }
    }
}
