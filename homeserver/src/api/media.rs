//! The media repository: uploads (`POST /_matrix/media/v3/upload`, and `POST
//! /_matrix/media/v1/create` then `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`), the
//! upload limit (`/_matrix/client/v1/media/config`), and downloads: authenticated under
//! `/_matrix/client/v1/media/download`, and the deprecated unauthenticated
//! `/_matrix/media/v3/download` while `media.legacy_unauthenticated` allows it.
//! <https://spec.matrix.org/v1.19/client-server-api/#content-repository>

use futures_util::TryStreamExt;
use poem::http::{StatusCode, header};
use poem::web::Data;
use poem::{Body, Request};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::Tag;
use super::auth::AuthedUser;
use super::client::login::Empty;
use super::error::{ApiResult, ErrCode, MatrixError};
use crate::state::AppState;
use crate::storage::{MediaItem, Uploaded, now_ms};

/// Media endpoints.
#[derive(Default)]
pub struct MediaApi;

/// How long a reserved media ID waits for its upload.
const RESERVATION_MS: i64 = 24 * 60 * 60 * 1000;
/// Reserved, not yet uploaded IDs a user may hold at once.
const MAX_PENDING_PER_USER: i64 = 100;
/// The longest file name kept.
const MAX_FILE_NAME: usize = 255;

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

/// An upload's result.
#[derive(Debug, Object)]
pub struct ContentUri {
    /// The `mxc://` URI of the upload.
    pub content_uri: String,
}

/// `POST /_matrix/media/v1/create` response.
#[derive(Debug, Object)]
pub struct CreatedContent {
    /// The `mxc://` URI to upload to.
    pub content_uri: String,
    /// Until when (ms since the epoch) the upload may come.
    pub unused_expires_at: i64,
}

/// The repository's limits.
#[derive(Debug, Object)]
pub struct MediaConfig {
    /// The largest upload in bytes.
    #[oai(rename = "m.upload.size")]
    pub upload_size: i64,
}

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
        /// The size in bytes.
        #[oai(header = "Content-Length")]
        u64,
    ),
}

#[OpenApi(tag = "Tag::Media")]
impl MediaApi {
    /// `POST /_matrix/media/v3/upload`
    ///
    /// Uploads content; the body is the raw bytes, streamed to the store.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixmediav3upload>
    #[oai(path = "/_matrix/media/v3/upload", method = "post", operation_id = "uploadContent")]
    async fn upload(
        &self,
        state: Data<&AppState>,
        req: &Request,
        user: AuthedUser,
        /// The file's name.
        filename: Query<Option<String>>,
        body: Binary<Body>,
    ) -> ApiResult<Json<ContentUri>> {
        check_declared_size(&state, req)?;
        let stored = state.media.put(body.0.into_bytes_stream(), state.config.media.max_upload_size).await?;
        let media_id = new_media_id();
        let uploaded = uploaded(req, filename.0.as_deref(), &stored)?;
        state.storage.insert_media(&media_id, &user.user_id, &uploaded.as_row(), now_ms()).await?;
        Ok(Json(ContentUri { content_uri: format!("mxc://{}/{media_id}", state.config.server_name) }))
    }

    /// `POST /_matrix/media/v1/create`
    ///
    /// Reserves an `mxc://` URI to upload to later.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixmediav1create>
    #[oai(path = "/_matrix/media/v1/create", method = "post", operation_id = "createContent")]
    async fn create(&self, state: Data<&AppState>, user: AuthedUser) -> ApiResult<Json<CreatedContent>> {
        let now = now_ms();
        if state.storage.pending_media_count(&user.user_id, now).await? >= MAX_PENDING_PER_USER {
            return Err(MatrixError::new(
                ErrCode::LimitExceeded,
                StatusCode::TOO_MANY_REQUESTS,
                "Too many reserved media IDs waiting for their upload",
            ));
        }
        let media_id = new_media_id();
        let expires = now + RESERVATION_MS;
        state.storage.reserve_media(&media_id, &user.user_id, now, expires).await?;
        Ok(Json(CreatedContent {
            content_uri: format!("mxc://{}/{media_id}", state.config.server_name),
            unused_expires_at: expires,
        }))
    }

    /// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`
    ///
    /// Uploads the content of a reserved `mxc://` URI, once.
    /// <https://spec.matrix.org/v1.19/client-server-api/#put_matrixmediav3uploadservernamemediaid>
    #[oai(path = "/_matrix/media/v3/upload/:serverName/:mediaId", method = "put", operation_id = "uploadContentToMXC")]
    async fn upload_reserved(
        &self,
        state: Data<&AppState>,
        req: &Request,
        user: AuthedUser,
        /// This server's name.
        #[oai(name = "serverName")]
        server_name: Path<String>,
        /// The reserved media ID.
        #[oai(name = "mediaId")]
        media_id: Path<String>,
        /// The file's name.
        filename: Query<Option<String>>,
        body: Binary<Body>,
    ) -> ApiResult<Json<Empty>> {
        let item = local_media(&state, &server_name, &media_id).await?;
        if item.uploader != user.user_id {
            return Err(MatrixError::forbidden("Only the user who reserved this media ID may upload to it"));
        }
        if item.sha256.is_some() {
            return Err(MatrixError::new(
                ErrCode::CannotOverwriteMedia,
                StatusCode::CONFLICT,
                "Media already uploaded",
            ));
        }
        if item.unused_expires_ts.is_some_and(|expires| expires < now_ms()) {
            return Err(MatrixError::not_found("The reservation expired"));
        }
        check_declared_size(&state, req)?;
        let stored = state.media.put(body.0.into_bytes_stream(), state.config.media.max_upload_size).await?;
        let uploaded = uploaded(req, filename.0.as_deref(), &stored)?;
        state.storage.complete_media(&media_id, &uploaded.as_row()).await.map_err(|e| match e {
            crate::storage::Error::NotFound => {
                MatrixError::new(ErrCode::CannotOverwriteMedia, StatusCode::CONFLICT, "Media already uploaded")
            }
            other => other.into(),
        })?;
        Ok(Json(Empty {}))
    }

    /// `GET /_matrix/client/v1/media/config`
    ///
    /// The largest upload the server takes.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1mediaconfig>
    #[oai(path = "/_matrix/client/v1/media/config", method = "get", operation_id = "getConfigAuthed")]
    async fn config(&self, state: Data<&AppState>, _user: AuthedUser) -> ApiResult<Json<MediaConfig>> {
        Ok(Json(media_config(&state)))
    }

    /// `GET /_matrix/media/v3/config` (deprecated)
    ///
    /// The largest upload the server takes.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixmediav3config>
    #[oai(path = "/_matrix/media/v3/config", method = "get", operation_id = "getConfig")]
    async fn legacy_config(&self, state: Data<&AppState>, _user: AuthedUser) -> ApiResult<Json<MediaConfig>> {
        Ok(Json(media_config(&state)))
    }

    /// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}`
    ///
    /// Downloads content.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1mediadownloadservernamemediaid>
    #[oai(
        path = "/_matrix/client/v1/media/download/:serverName/:mediaId",
        method = "get",
        operation_id = "getContentAuthed"
    )]
    async fn download(
        &self,
        state: Data<&AppState>,
        _user: AuthedUser,
        /// The server the content was uploaded to.
        #[oai(name = "serverName")]
        server_name: Path<String>,
        /// The media ID.
        #[oai(name = "mediaId")]
        media_id: Path<String>,
    ) -> ApiResult<Download> {
        serve(&state, &server_name, &media_id, None).await
    }

    /// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}`
    ///
    /// Downloads content, named `fileName`.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1mediadownloadservernamemediaidfilename>
    #[oai(
        path = "/_matrix/client/v1/media/download/:serverName/:mediaId/:fileName",
        method = "get",
        operation_id = "getContentOverrideNameAuthed"
    )]
    async fn download_named(
        &self,
        state: Data<&AppState>,
        _user: AuthedUser,
        /// The server the content was uploaded to.
        #[oai(name = "serverName")]
        server_name: Path<String>,
        /// The media ID.
        #[oai(name = "mediaId")]
        media_id: Path<String>,
        /// The file name to give it.
        #[oai(name = "fileName")]
        file_name: Path<String>,
    ) -> ApiResult<Download> {
        serve(&state, &server_name, &media_id, Some(&file_name)).await
    }

    /// `GET /_matrix/media/v3/download/{serverName}/{mediaId}` (deprecated, unauthenticated)
    ///
    /// Downloads content without an access token, while `media.legacy_unauthenticated` is on.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixmediav3downloadservernamemediaid>
    #[oai(path = "/_matrix/media/v3/download/:serverName/:mediaId", method = "get", operation_id = "getContent")]
    async fn legacy_download(
        &self,
        state: Data<&AppState>,
        /// The server the content was uploaded to.
        #[oai(name = "serverName")]
        server_name: Path<String>,
        /// The media ID.
        #[oai(name = "mediaId")]
        media_id: Path<String>,
    ) -> ApiResult<Download> {
        legacy_allowed(&state)?;
        serve(&state, &server_name, &media_id, None).await
    }

    /// `GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}` (deprecated, unauthenticated)
    ///
    /// Downloads content named `fileName` without an access token, while
    /// `media.legacy_unauthenticated` is on.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixmediav3downloadservernamemediaidfilename>
    #[oai(
        path = "/_matrix/media/v3/download/:serverName/:mediaId/:fileName",
        method = "get",
        operation_id = "getContentOverrideName"
    )]
    async fn legacy_download_named(
        &self,
        state: Data<&AppState>,
        /// The server the content was uploaded to.
        #[oai(name = "serverName")]
        server_name: Path<String>,
        /// The media ID.
        #[oai(name = "mediaId")]
        media_id: Path<String>,
        /// The file name to give it.
        #[oai(name = "fileName")]
        file_name: Path<String>,
    ) -> ApiResult<Download> {
        legacy_allowed(&state)?;
        serve(&state, &server_name, &media_id, Some(&file_name)).await
    }
}

fn media_config(state: &AppState) -> MediaConfig {
    MediaConfig { upload_size: i64::try_from(state.config.media.max_upload_size).unwrap_or(i64::MAX) }
}

fn legacy_allowed(state: &AppState) -> Result<(), MatrixError> {
    match state.config.media.legacy_unauthenticated {
        true => Ok(()),
        // What the spec asks of servers that froze the unauthenticated endpoints.
        false => Err(MatrixError::not_found("Use the authenticated /_matrix/client/v1/media endpoints")),
    }
}

fn new_media_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Refuses at once an upload whose declared length is over the limit (the stream check
/// catches the rest).
fn check_declared_size(state: &AppState, req: &Request) -> Result<(), MatrixError> {
    let limit = state.config.media.max_upload_size;
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(crate::media::MediaError::TooLarge(limit).into());
    }
    Ok(())
}

/// What an upload stores besides its bytes.
struct UploadInfo {
    content_type: Option<String>,
    upload_name: Option<String>,
    size: i64,
    sha256: String,
}

impl UploadInfo {
    fn as_row(&self) -> Uploaded<'_> {
        Uploaded {
            content_type: self.content_type.as_deref(),
            upload_name: self.upload_name.as_deref(),
            size: self.size,
            sha256: &self.sha256,
        }
    }
}

fn uploaded(req: &Request, filename: Option<&str>, stored: &crate::media::Stored) -> Result<UploadInfo, MatrixError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 255)
        .map(str::to_owned);
    let upload_name = filename.filter(|n| !n.is_empty()).map(|n| n.chars().take(MAX_FILE_NAME).collect());
    Ok(UploadInfo {
        content_type,
        upload_name,
        size: i64::try_from(stored.size).map_err(|_| MatrixError::internal())?,
        sha256: stored.sha256.clone(),
    })
}

/// A media item of this server, by the server name and media ID of its `mxc://` URI.
async fn local_media(state: &AppState, server_name: &str, media_id: &str) -> Result<MediaItem, MatrixError> {
    if server_name != state.config.server_name {
        // Remote media arrives with federation.
        return Err(MatrixError::not_found("Media of other servers is not available"));
    }
    state.storage.media(media_id).await?.ok_or_else(|| MatrixError::not_found("Media not found"))
}

async fn serve(state: &AppState, server_name: &str, media_id: &str, file_name: Option<&str>) -> ApiResult<Download> {
    let item = local_media(state, server_name, media_id).await?;
    let Some(sha256) = item.sha256.as_deref() else {
        return Err(MatrixError::new(
            ErrCode::NotYetUploaded,
            StatusCode::GATEWAY_TIMEOUT,
            "The content was not uploaded yet",
        ));
    };
    let object = state.media.get(sha256, None).await?;
    let size = object.meta.size;
    let stream = object.into_stream().map_err(std::io::Error::other);
    let content_type = item.content_type.clone().unwrap_or_else(|| "application/octet-stream".to_owned());
    let name = file_name.map(str::to_owned).or(item.upload_name);
    Ok(Download::Ok(
        Binary(Body::from_bytes_stream(stream)),
        content_type.clone(),
        content_disposition(&content_type, name.as_deref()),
        "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; \
         media-src 'self'; object-src 'self';"
            .to_owned(),
        "nosniff".to_owned(),
        "cross-origin".to_owned(),
        size,
    ))
}

/// `inline` only for types that cannot run script, otherwise `attachment`; the file name
/// percent-encoded (RFC 6266 / RFC 8187), so no name can break out of the header.
fn content_disposition(content_type: &str, name: Option<&str>) -> String {
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
}
