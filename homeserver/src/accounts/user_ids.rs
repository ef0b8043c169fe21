//! User ID rules for this server: what a new account may be called, and which identifiers
//! name a local user.

use rand::Rng;
use rand::distributions::Uniform;

/// Why a username cannot become a new account.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUsername {
    /// Characters outside `a-z 0-9 . _ = - / +`, or empty.
    #[error("user ID localparts may only contain a-z, 0-9, '.', '_', '=', '-', '/' and '+'")]
    BadCharacters,
    /// Longer than the spec's 255 bytes for the whole user ID.
    #[error("user ID would be longer than 255 bytes")]
    TooLong,
    /// Leading `_` is reserved for application services and bridges.
    #[error("user IDs starting with '_' are reserved")]
    Reserved,
    /// All digits, the shape of the IDs this server generates.
    #[error("user IDs may not consist of digits only")]
    Numeric,
}

/// Turns a requested username into a user ID on `server_name`.
///
/// The spec lets the server map a username onto the localpart grammar "in a logical manner";
/// like other homeservers we lower-case it, then refuse anything still outside the grammar.
pub fn user_id_for_username(username: &str, server_name: &str) -> Result<String, InvalidUsername> {
    let localpart = username.to_lowercase();
    if localpart.is_empty()
        || !localpart.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'=' | b'-' | b'/' | b'+')
        })
    {
        return Err(InvalidUsername::BadCharacters);
    }
    if localpart.starts_with('_') {
        return Err(InvalidUsername::Reserved);
    }
    if localpart.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidUsername::Numeric);
    }
    let user_id = format!("@{localpart}:{server_name}");
    if user_id.len() > 255 {
        return Err(InvalidUsername::TooLong);
    }
    Ok(user_id)
}

/// A user ID for a registration that gave no username: digits only, a shape
/// [`user_id_for_username`] refuses, so generated and chosen IDs never collide.
pub fn generated_user_id(server_name: &str) -> String {
    let digits = Uniform::new_inclusive(b'0', b'9');
    let localpart: String = rand::rngs::OsRng.sample_iter(digits).take(12).map(char::from).collect();
    format!("@{localpart}:{server_name}")
}

/// Resolves a login identifier (`alice` or `@alice:server`) to a local user ID, or `None` if
/// it names a user on another server or cannot be a user ID at all.
pub fn local_user_id(identifier: &str, server_name: &str) -> Option<String> {
    if let Some(rest) = identifier.strip_prefix('@') {
        let (localpart, server) = rest.split_once(':')?;
        (server == server_name && !localpart.is_empty()).then(|| format!("@{}:{server_name}", localpart.to_lowercase()))
    } else if identifier.is_empty() || identifier.contains(':') {
        None
    } else {
        Some(format!("@{}:{server_name}", identifier.to_lowercase()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(user_id_for_username("Alice", "hs:8008").unwrap(), "@alice:hs:8008");
        assert_eq!(user_id_for_username("a.b_c=d-e/f+g", "hs").unwrap(), "@a.b_c=d-e/f+g:hs");
        assert_eq!(user_id_for_username("", "hs"), Err(InvalidUsername::BadCharacters));
        assert_eq!(user_id_for_username("al ice", "hs"), Err(InvalidUsername::BadCharacters));
        assert_eq!(user_id_for_username("al:ice", "hs"), Err(InvalidUsername::BadCharacters));
        assert_eq!(user_id_for_username("élan", "hs"), Err(InvalidUsername::BadCharacters));
        assert_eq!(user_id_for_username("_bridge", "hs"), Err(InvalidUsername::Reserved));
        assert_eq!(user_id_for_username("123", "hs"), Err(InvalidUsername::Numeric));
        assert_eq!(user_id_for_username(&"a".repeat(260), "hs"), Err(InvalidUsername::TooLong));
        let generated = generated_user_id("hs");
        assert!(user_id_for_username(&generated[1..13], "hs").is_err());
    }

    #[test]
    fn login_identifiers() {
        assert_eq!(local_user_id("Alice", "hs:1").as_deref(), Some("@alice:hs:1"));
        assert_eq!(local_user_id("@alice:hs:1", "hs:1").as_deref(), Some("@alice:hs:1"));
        assert_eq!(local_user_id("@alice:other", "hs:1"), None);
        assert_eq!(local_user_id("", "hs:1"), None);
        assert_eq!(local_user_id("@:hs:1", "hs:1"), None);
    }
}
