//! The profile's local store: an SQLite file whose secret values (Olm account and sessions,
//! Megolm sessions, cached events) are encrypted with the store key that lives in the OS keyring.
//!
//! Only identifiers, public keys and the sync token are stored in the clear; a stolen
//! `store.db` without the keyring entry reveals no key material and no message.

use std::path::Path;
use std::str::FromStr;

use anyhow::Context;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

/// Authenticated encryption of stored values with the profile's store key.
pub struct Cipher(XChaCha20Poly1305);

const NONCE_LEN: usize = 24;

impl Cipher {
    pub fn new(key: &[u8; 32]) -> Self {
        Self(XChaCha20Poly1305::new(key.into()))
    }

    /// `nonce || ciphertext`; the nonce is random, so equal values encrypt differently.
    pub fn seal(&self, plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .0
            .encrypt(XNonce::from_slice(&nonce), plaintext)
            .map_err(|_| anyhow::anyhow!("cannot encrypt a value for the local store"))?;
        Ok([nonce.as_slice(), &ciphertext].concat())
    }

    pub fn open(&self, sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(sealed.len() > NONCE_LEN, "a stored secret is truncated");
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.0
            .decrypt(XNonce::from_slice(nonce), ciphertext)
            .map_err(|_| anyhow::anyhow!("a stored secret cannot be decrypted: wrong store key or corrupted store"))
    }

    pub fn seal_json<T: serde::Serialize>(&self, value: &T) -> anyhow::Result<Vec<u8>> {
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(value)?);
        self.seal(&plain)
    }

    pub fn open_json<T: serde::de::DeserializeOwned>(&self, sealed: &[u8]) -> anyhow::Result<T> {
        let plain = zeroize::Zeroizing::new(self.open(sealed)?);
        serde_json::from_slice(&plain).context("a stored secret is not valid JSON")
    }
}

/// The local store of one profile.
pub struct Store {
    pub pool: SqlitePool,
    pub cipher: Cipher,
}

impl Store {
    pub async fn open(path: &Path, key: &[u8; 32]) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Olm state must not roll back after a crash: a reused one-time key or a
            // forgotten ratchet step breaks the session for good.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open the local store {}", path.display()))?;
        restrict_permissions(path)?;
        sqlx::migrate!("./migrations").run(&pool).await.context("upgrading the local store")?;
        Ok(Self { pool, cipher: Cipher::new(key) })
    }

    pub async fn get(&self, key: &str) -> anyhow::Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM kv WHERE key = $1").bind(key).fetch_optional(&self.pool).await?;
        Ok(row.map(|row| row.get(0)))
    }

    pub async fn set(&self, key: &str, value: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO kv (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn secret<T: serde::de::DeserializeOwned>(&self, key: &str) -> anyhow::Result<Option<T>> {
        let row = sqlx::query("SELECT value FROM secrets WHERE key = $1").bind(key).fetch_optional(&self.pool).await?;
        row.map(|row| self.cipher.open_json(&row.get::<Vec<u8>, _>(0))).transpose()
    }

    pub async fn set_secret<T: serde::Serialize>(&self, key: &str, value: &T) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO secrets (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(self.cipher.seal_json(value)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// The store holds only ciphertext for secrets, but its metadata (who we talk to) is private too.
fn restrict_permissions(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for file in [path.to_owned(), path.with_extension("db-wal"), path.with_extension("db-shm")] {
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot restrict permissions of {}", file.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_round_trip_and_detect_tampering() {
        let cipher = Cipher::new(&[7; 32]);
        let sealed = cipher.seal(b"olm account").unwrap();
        assert_ne!(cipher.seal(b"olm account").unwrap(), sealed, "nonces are random");
        assert!(!sealed.windows(11).any(|w| w == b"olm account"));
        assert_eq!(cipher.open(&sealed).unwrap(), b"olm account");
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(cipher.open(&tampered).is_err());
        assert!(Cipher::new(&[8; 32]).open(&sealed).is_err());
    }
}
