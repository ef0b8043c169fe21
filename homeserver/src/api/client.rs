//! The Client-Server API, one file per area of the spec.

pub mod account;
pub mod account_data;
pub mod capabilities;
pub mod devices;
pub mod directory;
pub mod ephemeral;
pub mod key_backup;
pub mod keys;
pub mod login;
pub mod presence;
pub mod profile;
pub mod register;
pub mod room_events;
pub mod rooms;
pub mod sync;
pub mod to_device;
pub mod versions;
