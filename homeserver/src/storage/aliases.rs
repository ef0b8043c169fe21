//! Room aliases (`#name:server`).

use sqlx::Row;

use super::{Result, Storage, on_conflict};

impl Storage {
    /// Points an alias at a room; [`super::Error::Conflict`] if the alias exists.
    pub async fn create_alias(&self, alias: &str, room_id: &str, creator: &str, now: i64) -> Result<()> {
        sqlx::query("INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES ($1, $2, $3, $4)")
            .bind(alias)
            .bind(room_id)
            .bind(creator)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(on_conflict("room_aliases.alias"))?;
        Ok(())
    }

    /// The room and creator of an alias.
    pub async fn alias(&self, alias: &str) -> Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT room_id, creator FROM room_aliases WHERE alias = $1")
            .bind(alias)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// Removes an alias; `false` if it did not exist.
    pub async fn delete_alias(&self, alias: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM room_aliases WHERE alias = $1").bind(alias).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    /// The local aliases of a room.
    pub async fn room_aliases(&self, room_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias")
            .bind(room_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }
}

impl Storage {
    /// Lists a room in the public directory, or takes it out.
    pub async fn set_published(&self, room_id: &str, published: bool) -> Result<()> {
        sqlx::query("UPDATE rooms SET published = $1 WHERE room_id = $2")
            .bind(i64::from(published))
            .bind(room_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Rooms listed in the public directory.
    pub async fn published_rooms(&self) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT room_id FROM rooms WHERE published = 1 ORDER BY room_id").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }
}
