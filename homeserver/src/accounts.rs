//! Account primitives: password hashing, access tokens and device IDs, user ID rules.
//!
//! Pure functions without storage or HTTP; the API layer combines them with `storage`.

pub mod password;
pub mod tokens;
pub mod user_ids;
