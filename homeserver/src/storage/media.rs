//! Media metadata: who uploaded what, its type, name, size and content hash.

use sqlx::Row;

use super::{Backend, Error, Result, Storage, WriteTx};

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

/// A write to the media table that holds its content hash (and, for uploads under a quota,
/// the uploader) against concurrent writers: whoever deletes the last reference to some bytes
/// also deletes the object, and must not race an upload of the same bytes that found the object
/// already there. Uploads check the object is there, deletions remove it, while this is open.
pub struct MediaWrite {
    tx: WriteTx,
}

impl Storage {
    /// Starts a media write holding `sha256` and, when given, `uploader`.
    ///
    /// SQLite has one writer at a time, so the transaction alone serializes; PostgreSQL takes
    /// transaction-scoped advisory locks, always the uploader's before the content's, so that
    /// two writers cannot wait on each other.
    pub async fn begin_media_write(&self, sha256: &str, uploader: Option<&str>) -> Result<MediaWrite> {
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            for key in uploader.map(lock_key).into_iter().chain([lock_key(sha256)]) {
                sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS locked")
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(MediaWrite { tx })
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

    /// Bytes a user has uploaded, in all.
    pub async fn media_usage(&self, uploader: &str) -> Result<i64> {
        media_usage(&mut *self.pool.acquire().await?, uploader).await
    }

    /// A media item.
    pub async fn media(&self, media_id: &str) -> Result<Option<MediaItem>> {
        media(&mut *self.pool.acquire().await?, media_id).await
    }

    /// Another server's media item, if we keep a copy.
    pub async fn remote_media(&self, origin: &str, media_id: &str) -> Result<Option<MediaItem>> {
        let row = sqlx::query(
            "SELECT content_type, upload_name, size, sha256 FROM remote_media WHERE origin = $1 AND media_id = $2",
        )
        .bind(origin)
        .bind(media_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(MediaItem {
                media_id: media_id.to_owned(),
                uploader: String::new(),
                content_type: r.try_get(0)?,
                upload_name: r.try_get(1)?,
                size: Some(r.try_get(2)?),
                sha256: Some(r.try_get(3)?),
                unused_expires_ts: None,
            })
        })
        .transpose()
    }
}

impl MediaWrite {
    /// Bytes `uploader` has uploaded, in all.
    pub async fn usage(&mut self, uploader: &str) -> Result<i64> {
        media_usage(&mut self.tx, uploader).await
    }

    /// Records a finished upload under a new media ID.
    pub async fn insert(&mut self, media_id: &str, uploader: &str, uploaded: &Uploaded<'_>, now: i64) -> Result<()> {
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
        .execute(&mut *self.tx)
        .await
        .map_err(super::on_conflict("media.media_id"))?;
        Ok(())
    }

    /// Completes a reserved ID with its upload. [`Error::NotFound`] unless it is still reserved.
    pub async fn complete(&mut self, media_id: &str, uploaded: &Uploaded<'_>) -> Result<()> {
        let done = sqlx::query(
            "UPDATE media SET content_type = $2, upload_name = $3, size = $4, sha256 = $5, unused_expires_ts = NULL \
             WHERE media_id = $1 AND sha256 IS NULL",
        )
        .bind(media_id)
        .bind(uploaded.content_type)
        .bind(uploaded.upload_name)
        .bind(uploaded.size)
        .bind(uploaded.sha256)
        .execute(&mut *self.tx)
        .await?;
        match done.rows_affected() {
            0 => Err(Error::NotFound),
            _ => Ok(()),
        }
    }

    /// Deletes a media item; returns it as it was, or `None` if it was not there.
    pub async fn delete(&mut self, media_id: &str) -> Result<Option<MediaItem>> {
        let item = media(&mut self.tx, media_id).await?;
        if item.is_some() {
            sqlx::query("DELETE FROM media WHERE media_id = $1").bind(media_id).execute(&mut *self.tx).await?;
        }
        Ok(item)
    }

    /// Records a copy of another server's media item.
    pub async fn insert_remote(
        &mut self,
        origin: &str,
        media_id: &str,
        fetched: &Uploaded<'_>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO remote_media (origin, media_id, content_type, upload_name, size, sha256, fetched_ts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (origin, media_id) DO NOTHING",
        )
        .bind(origin)
        .bind(media_id)
        .bind(fetched.content_type)
        .bind(fetched.upload_name)
        .bind(fetched.size)
        .bind(fetched.sha256)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// How many media items (ours, and copies of other servers') use the bytes `sha256`.
    pub async fn references(&mut self, sha256: &str) -> Result<i64> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM media WHERE sha256 = $1) + (SELECT COUNT(*) FROM remote_media WHERE sha256 = $1)",
        )
        .bind(sha256)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Commits.
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await
    }
}

async fn media_usage(conn: &mut sqlx::AnyConnection, uploader: &str) -> Result<i64> {
    let row = sqlx::query("SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM media WHERE uploader = $1")
        .bind(uploader)
        .fetch_one(conn)
        .await?;
    Ok(row.try_get(0)?)
}

async fn media(conn: &mut sqlx::AnyConnection, media_id: &str) -> Result<Option<MediaItem>> {
    let row = sqlx::query(
        "SELECT media_id, uploader, content_type, upload_name, size, sha256, unused_expires_ts FROM media \
         WHERE media_id = $1",
    )
    .bind(media_id)
    .fetch_optional(conn)
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

/// An advisory lock key: the first 8 bytes of the SHA-256 of `name`.
fn lock_key(name: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    i64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
}
