//! The server's own cryptographic keys.

mod signing_key;

pub use signing_key::{SigningKey, SigningKeyError};
