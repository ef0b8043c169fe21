//! Other servers' signing keys, verified and cached.

use sqlx::Row;

use super::{Result, Storage};

/// One cached key of another server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerKey {
    /// Unpadded base64 Ed25519 public key.
    pub public_key: String,
    /// Until when the server said the key is valid (ms).
    pub valid_until_ts: i64,
    /// When the server retired it (ms), for keys listed as `old_verify_keys`.
    pub expired_ts: Option<i64>,
}

impl Storage {
    /// Stores the keys of one verified key document, replacing what was known of those keys.
    pub async fn store_server_keys(
        &self,
        server_name: &str,
        keys: &[(String, ServerKey)],
        response_json: &str,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for (key_id, key) in keys {
            sqlx::query(
                "INSERT INTO server_keys \
                 (server_name, key_id, public_key, valid_until_ts, expired_ts, response_json, fetched_ts) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (server_name, key_id) DO UPDATE SET public_key = $3, valid_until_ts = $4, \
                 expired_ts = $5, response_json = $6, fetched_ts = $7",
            )
            .bind(server_name)
            .bind(key_id)
            .bind(&key.public_key)
            .bind(key.valid_until_ts)
            .bind(key.expired_ts)
            .bind(response_json)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A cached key of `server_name`.
    pub async fn server_key(&self, server_name: &str, key_id: &str) -> Result<Option<ServerKey>> {
        let row = sqlx::query(
            "SELECT public_key, valid_until_ts, expired_ts FROM server_keys WHERE server_name = $1 AND key_id = $2",
        )
        .bind(server_name)
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ServerKey { public_key: r.try_get(0)?, valid_until_ts: r.try_get(1)?, expired_ts: r.try_get(2)? })
        })
        .transpose()
    }

    /// The signed key documents cached for `server_name` (one per distinct document), with the
    /// latest `valid_until_ts` of their keys.
    pub async fn server_key_responses(&self, server_name: &str) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT response_json, MAX(valid_until_ts) FROM server_keys WHERE server_name = $1 GROUP BY response_json",
        )
        .bind(server_name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }
}
