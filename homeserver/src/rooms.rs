//! Rooms: events as signed PDUs, room versions, authorization, state, the timeline append path
//! and membership.
//!
//! Spec algorithms (hashing, signing, event IDs, authorization rules) come from ruma's crates;
//! this module supplies them with data from `storage` and never imports poem.

pub mod pdu;
pub mod version;
