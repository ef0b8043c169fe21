//! Password hashing with argon2id.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Longest password accepted, in bytes: long enough for any passphrase, short enough that
/// hashing it cannot be used to burn CPU.
pub const MAX_PASSWORD_BYTES: usize = 512;

/// Errors of password hashing.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The hashing library failed (never expected with the default parameters).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The blocking task was cancelled.
    #[error("password hashing task failed")]
    Task,
}

/// Hashes a password with argon2id (the crate's defaults follow OWASP's recommendation:
/// 19 MiB, 2 iterations) and a random salt, in PHC string format.
pub async fn hash(password: String) -> Result<String, PasswordError> {
    // Argon2 is deliberately slow: run it off the async executor.
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    })
    .await
    .map_err(|_| PasswordError::Task)?
}

/// Checks a password against a stored PHC hash; a malformed hash never matches.
pub async fn verify(password: String, stored: String) -> Result<bool, PasswordError> {
    tokio::task::spawn_blocking(move || {
        let Ok(parsed) = PasswordHash::new(&stored) else { return false };
        Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()
    })
    .await
    .map_err(|_| PasswordError::Task)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn hash_then_verify() {
        let h = super::hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify("correct horse".into(), h.clone()).await.unwrap());
        assert!(!super::verify("wrong horse".into(), h).await.unwrap());
        assert!(!super::verify("x".into(), "not a hash".into()).await.unwrap());
    }
}
