//! Serving stored media: finding the item (waiting for a reserved ID's upload when asked to),
//! byte ranges, and the headers that keep uploaded content from running in the server's origin.

use std::ops::Range;
use std::time::Duration;

use futures_util::TryStreamExt;
use poem::http::{StatusCode, header};
use poem::{Body, Request};
use poem_openapi::ApiResponse;
use poem_openapi::payload::{Binary, Json};

use crate::api::error::{ErrCode, ErrorBody, MatrixError};
use crate::state::AppState;
use crate::storage::{MediaItem, now_ms};

/// How long a download waits for a reserved ID's upload unless told (the spec's default).
const DEFAULT_WAIT_MS: u64 = 20_000;
/// The longest wait granted.
const MAX_WAIT_MS: u64 = 60_000;

/// Runs nothing the content might carry, whatever a browser makes of it.
pub const CONTENT_SECURITY_POLICY: &str = "sandbox; default-src 'none'; script-src 'none'; \
    plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

/// Types a browser may show inline: they cannot run script in the server's origin.
const INLINE_TYPES: &[&str] = &[
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/flac",
    "audio/x-flac",
];

/// A download.
#[derive(ApiResponse)]
pub enum Download {
    /// The content.
    #[oai(status = 200)]
    Ok(
        Binary<Body>,
        /// The type it was uploaded with.
        #[oai(header = "Content-Type")]
        String,
        /// `inline` for types browsers show safely, else `attachment`, with the file name.
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
        /// The content's SHA-256: the same for every download of the same bytes.
        #[oai(header = "ETag")]
        String,
        /// `bytes`: a `Range` request gets part of the content.
        #[oai(header = "Accept-Ranges")]
        String,
        /// The size in bytes.
        #[oai(header = "Content-Length")]
        u64,
    ),
    /// The byte range the `Range` header asked for.
    #[oai(status = 206)]
    Partial(
        Binary<Body>,
        /// The type it was uploaded with.
        #[oai(header = "Content-Type")]
        String,
        /// `inline` for types browsers show safely, else `attachment`, with the file name.
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
        /// The content's SHA-256: the same for every download of the same bytes.
        #[oai(header = "ETag")]
        String,
        /// `bytes FIRST-LAST/SIZE`.
        #[oai(header = "Content-Range")]
        String,
        /// The size of the range in bytes.
        #[oai(header = "Content-Length")]
        u64,
    ),
    /// The `Range` header asked for bytes past the end.
    #[oai(status = 416)]
    RangeNotSatisfiable(
        Json<ErrorBody>,
        /// `bytes */SIZE`.
        #[oai(header = "Content-Range")]
        String,
    ),
}

/// What a `Range` header asks of content of a given size.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    Whole,
    Part(Range<u64>),
    Unsatisfiable,
}

/// Reads a `Range` header (RFC 9110 §14). One range is served; several, other units or
/// malformed headers get the whole content, as the RFC allows.
fn wanted(header: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else { return Wanted::Whole };
    let Some((first, last)) = spec.trim().split_once('-') else { return Wanted::Whole };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let number = |s: &str| if s.is_empty() { Ok(None) } else { s.parse::<u64>().map(Some) };
    let (Ok(first), Ok(last)) = (number(first.trim()), number(last.trim())) else { return Wanted::Whole };
    match (first, last) {
        (None, None) => Wanted::Whole,
        (None, Some(0)) => Wanted::Unsatisfiable,
        (None, Some(_)) if size == 0 => Wanted::Unsatisfiable,
        (None, Some(suffix)) => Wanted::Part(size.saturating_sub(suffix)..size),
        (Some(first), _) if first >= size => Wanted::Unsatisfiable,
        (Some(first), None) => Wanted::Part(first..size),
        (Some(first), Some(last)) if last < first => Wanted::Whole,
        (Some(first), Some(last)) => Wanted::Part(first..last.saturating_add(1).min(size)),
    }
}

/// A media item by its `mxc://` server name and media ID: ours (a reserved one is waited for up
/// to `timeout_ms`, the spec's default when `None`), or another server's, fetched over
/// federation the first time.
pub async fn local_media(
    state: &AppState,
    server_name: &str,
    media_id: &str,
    timeout_ms: Option<i64>,
) -> Result<(MediaItem, String), MatrixError> {
    if server_name != state.config.server_name {
        if state.federation_client.is_none() {
            return Err(MatrixError::not_found("Media of other servers is not available"));
        }
        return crate::federation::media::remote_media(state, server_name, media_id, timeout_ms).await;
    }
    let wait = timeout_ms.map_or(DEFAULT_WAIT_MS, |ms| u64::try_from(ms).unwrap_or(0)).min(MAX_WAIT_MS);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait);
    loop {
        // Registered before the read, so an upload finishing in between still wakes us.
        let uploaded = state.media_uploaded.notified();
        tokio::pin!(uploaded);
        uploaded.as_mut().enable();
        let item = state.storage.media(media_id).await?.ok_or_else(|| MatrixError::not_found("Media not found"))?;
        if let Some(sha256) = item.sha256.clone() {
            return Ok((item, sha256));
        }
        if item.unused_expires_ts.is_some_and(|expires| expires < now_ms()) {
            return Err(MatrixError::not_found("Media not found"));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(MatrixError::new(
                ErrCode::NotYetUploaded,
                StatusCode::GATEWAY_TIMEOUT,
                "The content was not uploaded yet",
            ));
        }
        let _ = tokio::time::timeout(deadline - now, uploaded).await;
    }
}

/// Serves `item` (whose bytes are `sha256`), whole or the range `req` asks for.
pub async fn download(
    state: &AppState,
    req: &Request,
    item: MediaItem,
    sha256: &str,
    file_name: Option<&str>,
) -> Result<Download, MatrixError> {
    let size = u64::try_from(item.size.unwrap_or(0)).unwrap_or(0);
    let etag = format!("\"{sha256}\"");
    let range = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok());
    // A range of other bytes than the client holds would corrupt its copy (RFC 9110 §13.1.5).
    let if_range = req.headers().get(header::IF_RANGE).map(|v| v.as_bytes() == etag.as_bytes());
    let wanted = if if_range == Some(false) { Wanted::Whole } else { wanted(range, size) };
    let part = match &wanted {
        Wanted::Unsatisfiable => {
            let error =
                MatrixError::new(ErrCode::Unknown, StatusCode::RANGE_NOT_SATISFIABLE, "The range is past the end");
            return Ok(Download::RangeNotSatisfiable(Json(error.body()), format!("bytes */{size}")));
        }
        Wanted::Whole => None,
        Wanted::Part(part) => Some(part.clone()),
    };
    let object = state.media.get(sha256, part.clone()).await?;
    let body = Binary(Body::from_bytes_stream(object.into_stream().map_err(std::io::Error::other)));
    let content_type = item.content_type.clone().unwrap_or_else(|| "application/octet-stream".to_owned());
    let name = file_name.map(str::to_owned).or(item.upload_name);
    let disposition = content_disposition(&content_type, name.as_deref());
    Ok(match part {
        None => Download::Ok(
            body,
            content_type,
            disposition,
            CONTENT_SECURITY_POLICY.to_owned(),
            "nosniff".to_owned(),
            "cross-origin".to_owned(),
            etag,
            "bytes".to_owned(),
            size,
        ),
        Some(part) => Download::Partial(
            body,
            content_type,
            disposition,
            CONTENT_SECURITY_POLICY.to_owned(),
            "nosniff".to_owned(),
            "cross-origin".to_owned(),
            etag,
            format!("bytes {}-{}/{size}", part.start, part.end - 1),
            part.end - part.start,
        ),
    })
}

/// `inline` only for types that cannot run script, otherwise `attachment`; the file name
/// percent-encoded (RFC 6266 / RFC 8187), so no name can break out of the header.
pub fn content_disposition(content_type: &str, name: Option<&str>) -> String {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let kind = if INLINE_TYPES.contains(&essence.as_str()) { "inline" } else { "attachment" };
    match name {
        Some(name) => {
            let encoded: String = name
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{kind}; filename*=utf-8''{encoded}")
        }
        None => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_is_inline_only_for_safe_types_and_escapes_names() {
        use super::content_disposition as cd;
        assert_eq!(cd("image/png", Some("cat.png")), "inline; filename*=utf-8''cat.png");
        assert_eq!(cd("text/html", Some("x.html")), "attachment; filename*=utf-8''x.html");
        assert_eq!(cd("image/svg+xml", None), "attachment");
        assert_eq!(cd("TEXT/PLAIN; charset=utf-8", None), "inline");
        assert_eq!(cd("text/plain", Some("a\"b\r\nc d.txt")), "inline; filename*=utf-8''a%22b%0D%0Ac%20d.txt");
        assert_eq!(cd("image/png", Some("ü.png")), "inline; filename*=utf-8''%C3%BC.png");
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        let w = |h: &str, size| wanted(Some(h), size);
        assert_eq!(w("bytes=0-99", 1000), Wanted::Part(0..100));
        assert_eq!(w("bytes=900-", 1000), Wanted::Part(900..1000));
        assert_eq!(w("bytes=-100", 1000), Wanted::Part(900..1000));
        assert_eq!(w("bytes=-5000", 1000), Wanted::Part(0..1000));
        assert_eq!(w("bytes=990-5000", 1000), Wanted::Part(990..1000));
        assert_eq!(w("bytes=1000-", 1000), Wanted::Unsatisfiable);
        assert_eq!(w("bytes=-0", 1000), Wanted::Unsatisfiable);
        assert_eq!(w("bytes=0-", 0), Wanted::Unsatisfiable);
        assert_eq!(w("bytes=0-1,5-6", 1000), Wanted::Whole);
        assert_eq!(w("bytes=5-1", 1000), Wanted::Whole);
        assert_eq!(w("items=0-1", 1000), Wanted::Whole);
        assert_eq!(w("bytes=a-b", 1000), Wanted::Whole);
        assert_eq!(wanted(None, 1000), Wanted::Whole);
    }
}
