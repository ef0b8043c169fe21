//! Sync filters uploaded by clients.

use sqlx::Row;

use super::{Result, Storage};

impl Storage {
    /// Stores a filter and returns its ID.
    pub async fn create_filter(&self, user_id: &str, json: &str) -> Result<i64> {
        let row = sqlx::query("INSERT INTO filters (user_id, json) VALUES ($1, $2) RETURNING filter_id")
            .bind(user_id)
            .bind(json)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// A filter of a user.
    pub async fn filter(&self, user_id: &str, filter_id: i64) -> Result<Option<String>> {
        let row = sqlx::query("SELECT json FROM filters WHERE user_id = $1 AND filter_id = $2")
            .bind(user_id)
            .bind(filter_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(r.try_get(0)?)).transpose()
    }
}
