//! Thumbnails on demand: made once per upload and size on a blocking thread, within a memory
//! budget, then kept in the object store beside the upload together with the image's header
//! (which decides the size to make) and any failure.

use futures_util::TryStreamExt;
use poem::Body;
use poem_openapi::ApiResponse;
use poem_openapi::payload::Binary;

use super::serve::CONTENT_SECURITY_POLICY;
use crate::api::error::MatrixError;
use crate::media::MediaError;
use crate::media::thumbnail::{self, Header, Method, Rendered, Size, ThumbnailError};
use crate::state::AppState;
use crate::storage::MediaItem;

/// The largest upload thumbnailed: its bytes are read into memory to decode.
const MAX_SOURCE_BYTES: u64 = 64 * 1024 * 1024;
/// Memory all thumbnailing in a process may hold at once (sources and decoded images), in MiB:
/// enough for two of the largest images side by side, many small ones, never more.
pub const THUMBNAIL_MEMORY_MIB: u32 = 512;
/// The cache entry holding an upload's image header.
const HEADER: &str = "header";

/// A thumbnail.
#[derive(ApiResponse)]
pub enum Thumbnail {
    /// A thumbnail of the content (or the content itself when it is small enough already).
    #[oai(status = 200)]
    Ok(
        Binary<Body>,
        /// `image/png` or `image/jpeg` for thumbnails; the image's own type for an original.
        #[oai(header = "Content-Type")]
        String,
        /// `inline`, with a file name.
        #[oai(header = "Content-Disposition")]
        String,
        /// Runs nothing the content might carry.
        #[oai(header = "Content-Security-Policy")]
        String,
        /// `nosniff`.
        #[oai(header = "X-Content-Type-Options")]
        String,
        /// `cross-origin`: web clients on other origins may embed it.
        #[oai(header = "Cross-Origin-Resource-Policy")]
        String,
        /// The size in bytes.
        #[oai(header = "Content-Length")]
        u64,
    ),
}

/// Parses the request's size and method.
pub fn requested(width: i64, height: i64, method: Option<&str>) -> Result<((u32, u32), Method), MatrixError> {
    let side = |n: i64| u32::try_from(n).ok().filter(|&n| n > 0);
    let (Some(width), Some(height)) = (side(width), side(height)) else {
        return Err(MatrixError::invalid_param("width and height must be positive integers"));
    };
    let method = match method {
        None | Some("scale") => Method::Scale,
        Some("crop") => Method::Crop,
        Some(_) => return Err(MatrixError::invalid_param("method must be crop or scale")),
    };
    Ok(((width, height), method))
}

/// A thumbnail of `item` (whose bytes are `sha256`) of at least `want`, or the original where
/// that is the better answer.
pub async fn thumbnail(
    state: &AppState,
    item: &MediaItem,
    sha256: &str,
    want: ((u32, u32), Method),
) -> Result<Thumbnail, MatrixError> {
    let (body, content_type, length) = thumbnail_body(state, item, sha256, want).await?;
    let extension = content_type.rsplit('/').next().unwrap_or("png");
    Ok(Thumbnail::Ok(
        Binary(body),
        content_type.to_owned(),
        format!("inline; filename=\"thumbnail.{extension}\""),
        CONTENT_SECURITY_POLICY.to_owned(),
        "nosniff".to_owned(),
        "cross-origin".to_owned(),
        length,
    ))
}

/// The thumbnail's bytes, type and length (see [`thumbnail`]).
pub async fn thumbnail_body(
    state: &AppState,
    item: &MediaItem,
    sha256: &str,
    (want, method): ((u32, u32), Method),
) -> Result<(Body, &'static str, u64), MatrixError> {
    let source_size = u64::try_from(item.size.unwrap_or(0)).unwrap_or(0);
    let header = header(state, sha256, source_size).await?;
    let rendered = match Size::choose((header.width, header.height), want, method) {
        Some(size) => cached_or_render(state, sha256, size, source_size + header.decoded_bytes).await?,
        None => Rendered::Original,
    };
    let (body, content_type, length) = match rendered {
        Rendered::Image { bytes, content_type } => {
            let length = bytes.len() as u64;
            (Body::from_bytes(bytes), content_type, length)
        }
        Rendered::Original => {
            let object = state.media.get(sha256, None).await?;
            let length = object.meta.size;
            // The type the bytes show, whatever the uploader said.
            (Body::from_bytes_stream(object.into_stream().map_err(std::io::Error::other)), header.content_type, length)
        }
    };
    Ok((body, content_type, length))
}

/// The header of the image `sha256`: cached, or read (then cached, failures too).
async fn header(state: &AppState, sha256: &str, source_size: u64) -> Result<Header, MatrixError> {
    if let Some(entry) = state.media.thumbnail(sha256, HEADER).await? {
        return match ThumbnailError::from_marker(&entry) {
            Some(failed) => Err(failed.into()),
            None => Header::from_entry(&entry).ok_or_else(MatrixError::internal),
        };
    }
    if source_size > MAX_SOURCE_BYTES {
        return Err(ThumbnailError::TooLarge.into());
    }
    // The first bytes tell whether it is an image at all, before the whole is read.
    let head = match source_size {
        0 => bytes::Bytes::new(),
        size => state.media.get(sha256, Some(0..size.min(64))).await?.bytes().await.map_err(MediaError::from)?,
    };
    let inspected = match thumbnail::image_type(&head) {
        None => Err(ThumbnailError::not_an_image()),
        Some(_) => {
            let _memory = reserve(state, source_size).await?;
            let source = state.media.get(sha256, None).await?.bytes().await.map_err(MediaError::from)?;
            thumbnail::inspect(&source)
        }
    };
    let entry = match &inspected {
        Ok(header) => header.to_entry(),
        Err(failed) => failed.to_marker(),
    };
    cache(state, sha256, HEADER, entry).await?;
    Ok(inspected?)
}

/// The cached thumbnail, or a new one (then cached); a failure is cached as well, so a hostile
/// image costs one decode, not one per request. `memory` is what rendering it takes at most.
async fn cached_or_render(state: &AppState, sha256: &str, size: Size, memory: u64) -> Result<Rendered, MatrixError> {
    let name = size.name();
    if let Some(cached) = cached(state, sha256, &name).await? {
        return cached;
    }
    let _memory = reserve(state, memory).await?;
    // Another request may have made it while this one waited.
    if let Some(cached) = cached(state, sha256, &name).await? {
        return cached;
    }
    let source = state.media.get(sha256, None).await?.bytes().await.map_err(MediaError::from)?;
    let rendered = tokio::task::spawn_blocking(move || thumbnail::render(source, size))
        .await
        .map_err(|_| MatrixError::internal())?;
    let entry = match &rendered {
        Ok(Rendered::Original) => bytes::Bytes::new(),
        Ok(Rendered::Image { bytes, .. }) => bytes.clone(),
        Err(failed) => failed.to_marker(),
    };
    cache(state, sha256, &name, entry).await?;
    Ok(rendered?)
}

/// A cache entry read back: a thumbnail, the original (empty) or a failure.
async fn cached(
    state: &AppState,
    sha256: &str,
    name: &str,
) -> Result<Option<Result<Rendered, MatrixError>>, MatrixError> {
    let Some(entry) = state.media.thumbnail(sha256, name).await? else { return Ok(None) };
    Ok(Some(match (thumbnail::image_type(&entry), ThumbnailError::from_marker(&entry)) {
        (Some(content_type), _) => Ok(Rendered::Image { content_type, bytes: entry }),
        (None, Some(failed)) => Err(failed.into()),
        (None, None) => Ok(Rendered::Original),
    }))
}

/// Writes a cache entry under the content's lock, and only while the content exists: a
/// thumbnail made while an admin deleted its source must not outlive it.
async fn cache(state: &AppState, sha256: &str, name: &str, entry: bytes::Bytes) -> Result<(), MatrixError> {
    let lock = state.storage.begin_media_write(sha256, None).await?;
    if state.media.exists(sha256).await? {
        state.media.put_thumbnail(sha256, name, entry).await?;
    }
    drop(lock);
    Ok(())
}

/// Takes `bytes` of the thumbnailers' memory budget (whole MiB), waiting for it if need be.
async fn reserve(state: &AppState, bytes: u64) -> Result<tokio::sync::SemaphorePermit<'_>, MatrixError> {
    let mib = u32::try_from(bytes.div_ceil(1024 * 1024)).unwrap_or(u32::MAX).clamp(1, THUMBNAIL_MEMORY_MIB);
    state.thumbnail_memory.acquire_many(mib).await.map_err(|_| MatrixError::internal())
}
