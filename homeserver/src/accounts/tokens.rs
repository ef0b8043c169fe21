//! Access tokens, device IDs and session IDs: random strings from the OS generator.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use rand::distributions::{Alphanumeric, Uniform};
use sha2::{Digest, Sha256};

/// A new access token: 256 random bits, URL-safe, with a recognisable prefix so that a leaked
/// token can be found by secret scanners.
pub fn new_access_token() -> String {
    let bytes: [u8; 32] = rand::rngs::OsRng.r#gen();
    format!("myl_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The form in which a token is stored and looked up: hex SHA-256. Tokens carry 256 bits of
/// entropy, so a fast hash is enough; a slow one would only slow every request.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new device ID: ten upper-case letters, as other homeservers issue them.
pub fn new_device_id() -> String {
    let letters = Uniform::new_inclusive(b'A', b'Z');
    rand::rngs::OsRng.sample_iter(letters).take(10).map(char::from).collect()
}

/// A new opaque session ID (user-interactive auth).
pub fn new_session_id() -> String {
    rand::rngs::OsRng.sample_iter(Alphanumeric).take(24).map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_hash_stably() {
        let (a, b) = (new_access_token(), new_access_token());
        assert_ne!(a, b);
        assert!(a.starts_with("myl_") && a.len() == 4 + 43);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let d = new_device_id();
        assert!(d.len() == 10 && d.chars().all(|c| c.is_ascii_uppercase()));
    }
}
