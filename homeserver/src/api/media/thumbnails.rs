//! Thumbnails on demand: made once per upload and size on a blocking thread (a few at a time),
//! then kept in the object store beside the upload.

use futures_util::TryStreamExt;
use poem::Body;
use poem_openapi::ApiResponse;
use poem_openapi::payload::Binary;

use super::serve::CONTENT_SECURITY_POLICY;
use crate::api::error::MatrixError;
use crate::media::MediaError;
use crate::media::thumbnail::{self, Method, Rendered, Size, ThumbnailError};
use crate::state::AppState;
use crate::storage::MediaItem;

/// The largest upload thumbnailed: its bytes are read into memory to decode.
const MAX_SOURCE_BYTES: i64 = 64 * 1024 * 1024;

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
pub fn requested(width: i64, height: i64, method: Option<&str>) -> Result<Option<Size>, MatrixError> {
    let side = |n: i64| u32::try_from(n).ok().filter(|&n| n > 0);
    let (Some(width), Some(height)) = (side(width), side(height)) else {
        return Err(MatrixError::invalid_param("width and height must be positive integers"));
    };
    let method = match method {
        None | Some("scale") => Method::Scale,
        Some("crop") => Method::Crop,
        Some(_) => return Err(MatrixError::invalid_param("method must be crop or scale")),
    };
    Ok(Size::for_request(width, height, method))
}

/// The thumbnail of `item` (whose bytes are `sha256`) at `size`; `None` for a size larger than
/// any made: the original.
pub async fn thumbnail(
    state: &AppState,
    item: &MediaItem,
    sha256: &str,
    size: Option<Size>,
) -> Result<Thumbnail, MatrixError> {
    if item.size.unwrap_or(0) > MAX_SOURCE_BYTES {
        return Err(ThumbnailError::TooLarge.into());
    }
    let rendered = match size {
        Some(size) => cached_or_render(state, sha256, size).await?,
        None => Rendered::Original,
    };
    let (body, content_type, length) = match rendered {
        Rendered::Image { bytes, content_type } => {
            let length = bytes.len() as u64;
            (Body::from_bytes(bytes), content_type, length)
        }
        Rendered::Original => {
            // Only images are answered, with the type their bytes show, whatever the uploader said.
            let head = state.media.get(sha256, Some(0..64)).await?.bytes().await.map_err(MediaError::from)?;
            let Some(content_type) = thumbnail::image_type(&head) else {
                return Err(ThumbnailError::Unsupported("not a PNG, JPEG, GIF or WebP image".to_owned()).into());
            };
            let object = state.media.get(sha256, None).await?;
            let length = object.meta.size;
            (Body::from_bytes_stream(object.into_stream().map_err(std::io::Error::other)), content_type, length)
        }
    };
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

/// The cached thumbnail, or a new one (then cached). An empty cached object means the
/// original is the answer at that size.
async fn cached_or_render(state: &AppState, sha256: &str, size: Size) -> Result<Rendered, MatrixError> {
    let name = size.name();
    if let Some(bytes) = state.media.thumbnail(sha256, &name).await? {
        return Ok(match thumbnail::image_type(&bytes) {
            Some(content_type) => Rendered::Image { content_type, bytes },
            None => Rendered::Original,
        });
    }
    let _permit = state.thumbnailers.acquire().await.map_err(|_| MatrixError::internal())?;
    let source = state.media.get(sha256, None).await?.bytes().await.map_err(MediaError::from)?;
    let rendered = tokio::task::spawn_blocking(move || thumbnail::render(&source, size))
        .await
        .map_err(|_| MatrixError::internal())??;
    let cached = match &rendered {
        Rendered::Original => bytes::Bytes::new(),
        Rendered::Image { bytes, .. } => bytes.clone(),
    };
    state.media.put_thumbnail(sha256, &name, cached).await?;
    Ok(rendered)
}
