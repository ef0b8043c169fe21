//! Storing an upload: streamed into the object store under the size limit and the uploader's
//! quota, moved to its content address, then recorded in the database under a lock on its bytes
//! (see [`crate::storage::MediaWrite`]) that also checks they are still there.

use poem::http::{StatusCode, header};
use poem::{Body, Request};

use crate::api::error::{ErrCode, MatrixError};
use crate::media::MediaError;
use crate::state::AppState;
use crate::storage::{MediaWrite, Uploaded, now_ms};

/// The longest file name kept.
const MAX_FILE_NAME: usize = 255;

/// Where an upload goes.
pub enum Target<'a> {
    /// A new media ID.
    New(&'a str),
    /// A media ID reserved by `POST /create`.
    Reserved(&'a str),
}

/// Streams `body` into the store and records it as `target`, uploaded by `uploader`.
pub async fn store(
    state: &AppState,
    req: &Request,
    uploader: &str,
    filename: Option<&str>,
    body: Body,
    target: Target<'_>,
) -> Result<(), MatrixError> {
    let max = state.config.media.max_upload_size;
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        // Refused at once; the streaming check catches bodies that lie or do not say.
        return Err(MediaError::TooLarge(max).into());
    }
    let quota = state.config.media.max_user_storage;
    let mut limit = max;
    if let Some(quota) = quota {
        let left = quota.saturating_sub(used(state.storage.media_usage(uploader).await?));
        if left == 0 || declared.is_some_and(|len| len > left) {
            return Err(over_quota());
        }
        limit = limit.min(left);
    }
    let staged = match state.media.put(body.into_bytes_stream(), limit).await {
        Err(MediaError::TooLarge(_)) if limit < max => return Err(over_quota()),
        other => other?,
    };
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 255);
    let sha256 = staged.sha256.clone();
    let upload_name: Option<String> =
        filename.filter(|n| !n.is_empty()).map(|n| n.chars().take(MAX_FILE_NAME).collect());
    let row = Uploaded {
        content_type,
        upload_name: upload_name.as_deref(),
        size: i64::try_from(staged.size).map_err(|_| MatrixError::internal())?,
        sha256: &sha256,
    };
    // At its address before the lock is taken: on S3 this is a copy, which may take seconds and
    // must not hold the database's writer.
    state.media.settle(staged).await?;
    let mut write = state.storage.begin_media_write(&sha256, quota.map(|_| uploader)).await?;
    let recorded = async {
        if !state.media.exists(&sha256).await? {
            // An admin deleted the same bytes between the move and the lock.
            tracing::warn!(%sha256, "upload lost to a concurrent deletion of the same content");
            return Err(MatrixError::new(
                ErrCode::Unknown,
                StatusCode::CONFLICT,
                "The content was deleted; upload again",
            ));
        }
        // Again under the lock: concurrent uploads of one user cannot overrun the quota together.
        if let Some(quota) = quota
            && used(write.usage(uploader).await?) + row.size as u64 > quota
        {
            return Err(over_quota());
        }
        record(&mut write, &target, uploader, &row).await
    }
    .await;
    if let Err(err) = recorded {
        // The refused upload's bytes go, unless an earlier upload of them stays. (After a
        // database error the count fails too: the bytes then stay, unreferenced.)
        if matches!(write.references(&sha256).await, Ok(0))
            && let Err(failure) = state.media.delete(&sha256).await
        {
            tracing::warn!(%sha256, %failure, "could not remove a refused upload's bytes");
        }
        return Err(err);
    }
    write.commit().await?;
    state.media_uploaded.notify_waiters();
    Ok(())
}

async fn record(
    write: &mut MediaWrite,
    target: &Target<'_>,
    uploader: &str,
    row: &Uploaded<'_>,
) -> Result<(), MatrixError> {
    match target {
        Target::New(media_id) => Ok(write.insert(media_id, uploader, row, now_ms()).await?),
        Target::Reserved(media_id) => write.complete(media_id, row).await.map_err(|e| match e {
            crate::storage::Error::NotFound => already_uploaded(),
            other => other.into(),
        }),
    }
}

fn used(bytes: i64) -> u64 {
    u64::try_from(bytes).unwrap_or(0)
}

fn over_quota() -> MatrixError {
    MatrixError::forbidden("This upload would exceed your storage quota")
}

/// `M_CANNOT_OVERWRITE_MEDIA`: a reserved media ID takes one upload.
pub fn already_uploaded() -> MatrixError {
    MatrixError::new(ErrCode::CannotOverwriteMedia, StatusCode::CONFLICT, "Media already uploaded")
}
