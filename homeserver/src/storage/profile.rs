//! Profile fields: `displayname`, `avatar_url`, `m.tz` and custom fields, stored as JSON.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Error, Result, Storage};

impl Storage {
    /// Every profile field of a user, keyed by field name.
    pub async fn profile(&self, user_id: &str) -> Result<BTreeMap<String, serde_json::Value>> {
        let rows = sqlx::query("SELECT field, value FROM profile_fields WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let field: String = r.try_get(0)?;
                let value: String = r.try_get(1)?;
                let value = serde_json::from_str(&value)
                    .map_err(|e| Error::Corrupt(format!("profile field {field} of {user_id}: {e}")))?;
                Ok((field, value))
            })
            .collect()
    }

    /// Sets one profile field (`value` is serialized JSON).
    pub async fn set_profile_field(&self, user_id: &str, field: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO profile_fields (user_id, field, value) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, field) DO UPDATE SET value = $3",
        )
        .bind(user_id)
        .bind(field)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes one profile field; removing an absent field is not an error.
    pub async fn delete_profile_field(&self, user_id: &str, field: &str) -> Result<()> {
        sqlx::query("DELETE FROM profile_fields WHERE user_id = $1 AND field = $2")
            .bind(user_id)
            .bind(field)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
