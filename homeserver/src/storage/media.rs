//! Media metadata: who uploaded what, its type, name, size and content hash.

use sqlx::Row;

use super::{Error, Result, Storage};

/// A media item as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaItem {
    /// The media ID (the part after the server name in its `mxc://` URI).
    pub media_id: String,
    /// Who uploaded (or reserved) it.
    pub uploader: String,
    /// The `Content-Type` it was uploaded with.
    pub content_type: Option<String>,
    /// The file name it was uploaded with.
    pub upload_name: Option<String>,
    /// Size in bytes, once uploaded.
    pub size: Option<i64>,
    /// SHA-256 of the bytes (hex), once uploaded: the object's key.
    pub sha256: Option<String>,
    /// For a reserved ID not uploaded yet: when the reservation ends.
    pub unused_expires_ts: Option<i64>,
}

/// What an upload stored.
#[derive(Clone, Debug)]
pub struct Uploaded<'a> {
    /// `Content-Type`.
    pub content_type: Option<&'a str>,
    /// File name.
    pub upload_name: Option<&'a str>,
    /// Size in bytes.
    pub size: i64,
    /// SHA-256 (hex).
    pub sha256: &'a str,
}

impl Storage {
    /// Records a finished upload under a new media ID.
    pub async fn insert_media(&self, media_id: &str, uploader: &str, uploaded: &Uploaded<'_>, now: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO media (media_id, uploader, created_ts, content_type, upload_name, size, sha256) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(media_id)
        .bind(uploader)
        .bind(now)
        .bind(uploaded.content_type)
        .bind(uploaded.upload_name)
        .bind(uploaded.size)
        .bind(uploaded.sha256)
        .execute(&mut *tx)
        .await
        .map_err(super::on_conflict("media.media_id"))?;
        tx.commit().await?;
        Ok(())
    }

    /// Reserves a media ID for a later upload (`POST /create`).
    pub async fn reserve_media(&self, media_id: &str, uploader: &str, now: i64, expires: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO media (media_id, uploader, created_ts, unused_expires_ts) VALUES ($1, $2, $3, $4)")
            .bind(media_id)
            .bind(uploader)
            .bind(now)
            .bind(expires)
            .execute(&mut *tx)
            .await
            .map_err(super::on_conflict("media.media_id"))?;
        tx.commit().await?;
        Ok(())
    }

    /// Reserved IDs of a user that were not uploaded to and have not expired.
    pub async fn pending_media_count(&self, uploader: &str, now: i64) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM media WHERE uploader = $1 AND unused_expires_ts > $2")
            .bind(uploader)
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Completes a reserved ID with its upload. [`Error::NotFound`] unless it is still reserved.
    pub async fn complete_media(&self, media_id: &str, uploaded: &Uploaded<'_>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE media SET content_type = $2, upload_name = $3, size = $4, sha256 = $5, unused_expires_ts = NULL \
             WHERE media_id = $1 AND sha256 IS NULL",
        )
        .bind(media_id)
        .bind(uploaded.content_type)
        .bind(uploaded.upload_name)
        .bind(uploaded.size)
        .bind(uploaded.sha256)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    /// A media item.
    pub async fn media(&self, media_id: &str) -> Result<Option<MediaItem>> {
        let row = sqlx::query(
            "SELECT media_id, uploader, content_type, upload_name, size, sha256, unused_expires_ts FROM media \
             WHERE media_id = $1",
        )
        .bind(media_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(MediaItem {
                media_id: r.try_get(0)?,
                uploader: r.try_get(1)?,
                content_type: r.try_get(2)?,
                upload_name: r.try_get(3)?,
                size: r.try_get(4)?,
                sha256: r.try_get(5)?,
                unused_expires_ts: r.try_get(6)?,
            })
        })
        .transpose()
    }
}
