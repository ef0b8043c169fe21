//! The media repository: uploads (`POST /_matrix/media/v3/upload`, and `POST
//! /_matrix/media/v1/create` then `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`), the
//! upload limit (`/_matrix/client/v1/media/config`), and downloads: authenticated under
//! `/_matrix/client/v1/media/download`, and the deprecated unauthenticated
//! `/_matrix/media/v3/download` while `media.legacy_unauthenticated` allows it; thumbnails
//! likewise.
//! <https://spec.matrix.org/v1.19/client-server-api/#content-repository>

use poem::http::StatusCode;
use poem::web::Data;
use poem::{Body, Request};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{Object, OpenApi};

use super::Tag;
use super::auth::AuthedUser;
use super::client::login::Empty;
use super::error::{ApiResult, ErrCode, MatrixError};
use crate::state::AppState;
use crate::storage::now_ms;

pub(crate) mod serve;
pub(crate) mod thumbnails;
mod upload;

pub use serve::Download;
pub use thumbnails::{THUMBNAIL_MEMORY_MIB, Thumbnail};
use upload::Target;

/// Media endpoints.
#[derive(Default)]
pub struct MediaApi;

/// How long a reserved media ID waits for its upload.
const RESERVATION_MS: i64 = 24 * 60 * 60 * 1000;
/// Reserved, not yet uploaded IDs a user may hold at once.
const MAX_PENDING_PER_USER: i64 = 100;
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
        state.limits.media_upload(&user.user_id)?;
        let media_id = new_media_id();
        upload::store(&state, req, &user.user_id, filename.0.as_deref(), body.0, Target::New(&media_id)).await?;
        Ok(Json(ContentUri { content_uri: format!("mxc://{}/{media_id}", state.config.server_name) }))
    }

    /// `POST /_matrix/media/v1/create`
    ///
    /// Reserves an `mxc://` URI to upload to later.
    /// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixmediav1create>
    #[oai(path = "/_matrix/media/v1/create", method = "post", operation_id = "createContent")]
    async fn create(&self, state: Data<&AppState>, user: AuthedUser) -> ApiResult<Json<CreatedContent>> {
        state.limits.media_upload(&user.user_id)?;
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
        if server_name.0 != state.config.server_name {
            return Err(MatrixError::not_found("Media not found"));
        }
        let item = state.storage.media(&media_id).await?.ok_or_else(|| MatrixError::not_found("Media not found"))?;
        if item.uploader != user.user_id {
            return Err(MatrixError::forbidden("Only the user who reserved this media ID may upload to it"));
        }
        if item.sha256.is_some() {
            return Err(upload::already_uploaded());
        }
        if item.unused_expires_ts.is_some_and(|expires| expires < now_ms()) {
            return Err(MatrixError::not_found("The reservation expired"));
        }
        upload::store(&state, req, &user.user_id, filename.0.as_deref(), body.0, Target::Reserved(&media_id)).await?;
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
        req: &Request,
        _user: AuthedUser,
        /// The server the content was uploaded to.
        #[oai(name = "serverName")]
        server_name: Path<String>,
        /// The media ID.
        #[oai(name = "mediaId")]
        media_id: Path<String>,
        /// How long to wait for content that was reserved but not uploaded yet (ms).
        timeout_ms: Query<Option<i64>>,
    ) -> ApiResult<Download> {
        download(&state, req, &server_name, &media_id, None, timeout_ms.0).await
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
        req: &Request,
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
        /// How long to wait for content that was reserved but not uploaded yet (ms).
        timeout_ms: Query<Option<i64>>,
    ) -> ApiResult<Download> {
        download(&state, req, &server_name, &media_id, Some(&file_name), timeout_ms.0).await
    }

    /// `GET /_matrix/media/v3/download/{serverName}/{mediaId}` (deprecated, unauthenticated)
    ///
    /// Downloads content without an access token, while `media.legacy_unauthenticated` is on.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixmediav3downloadservernamemediaid>
    #[oai(path = "/_matrix/media/v3/download/:serverName/:mediaId", method = "get", operation_id = "getContent")]
    async fn legacy_download(
        &self,
        state: Data<&AppState>,
        req: &Request,
        /// The server the content was uploaded to.
        #[oai(name = "serverName")]
        server_name: Path<String>,
        /// The media ID.
        #[oai(name = "mediaId")]
        media_id: Path<String>,
        /// How long to wait for content that was reserved but not uploaded yet (ms).
        timeout_ms: Query<Option<i64>>,
    ) -> ApiResult<Download> {
        legacy_allowed(&state)?;
        download(&state, req, &server_name, &media_id, None, timeout_ms.0).await
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
        req: &Request,
        /// The server the content was uploaded to.
        #[oai(name = "serverName")]
        server_name: Path<String>,
        /// The media ID.
        #[oai(name = "mediaId")]
        media_id: Path<String>,
        /// The file name to give it.
        #[oai(name = "fileName")]
        file_name: Path<String>,
        /// How long to wait for content that was reserved but not uploaded yet (ms).
        timeout_ms: Query<Option<i64>>,
    ) -> ApiResult<Download> {
        legacy_allowed(&state)?;
        download(&state, req, &server_name, &media_id, Some(&file_name), timeout_ms.0).await
    }

    /// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`
    ///
    /// A thumbnail of an image: PNG, JPEG, GIF and WebP uploads, at the spec's sizes.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1mediathumbnailservernamemediaid>
    #[oai(
        path = "/_matrix/client/v1/media/thumbnail/:serverName/:mediaId",
        method = "get",
        operation_id = "getContentThumbnailAuthed"
    )]
    #[allow(clippy::too_many_arguments)] // One per parameter of the endpoint.
    async fn thumbnail(
        &self,
        state: Data<&AppState>,
        _user: AuthedUser,
        /// The server the content was uploaded to.
        #[oai(name = "serverName")]
        server_name: Path<String>,
        /// The media ID.
        #[oai(name = "mediaId")]
        media_id: Path<String>,
        /// The smallest width wanted.
        width: Query<i64>,
        /// The smallest height wanted.
        height: Query<i64>,
        /// `crop` or `scale` (the default).
        method: Query<Option<String>>,
        /// Whether an animated thumbnail is wanted. Thumbnails here are still images, which the
        /// spec allows whatever this says.
        animated: Query<Option<bool>>,
        /// How long to wait for content that was reserved but not uploaded yet (ms).
        timeout_ms: Query<Option<i64>>,
    ) -> ApiResult<Thumbnail> {
        let _ = animated;
        thumbnail(&state, &server_name, &media_id, (width.0, height.0, method.0.as_deref()), timeout_ms.0).await
    }

    /// `GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}` (deprecated, unauthenticated)
    ///
    /// A thumbnail without an access token, while `media.legacy_unauthenticated` is on.
    /// <https://spec.matrix.org/v1.19/client-server-api/#get_matrixmediav3thumbnailservernamemediaid>
    #[oai(
        path = "/_matrix/media/v3/thumbnail/:serverName/:mediaId",
        method = "get",
        operation_id = "getContentThumbnail"
    )]
    #[allow(clippy::too_many_arguments)] // One per parameter of the endpoint.
    async fn legacy_thumbnail(
        &self,
        state: Data<&AppState>,
        /// The server the content was uploaded to.
        #[oai(name = "serverName")]
        server_name: Path<String>,
        /// The media ID.
        #[oai(name = "mediaId")]
        media_id: Path<String>,
        /// The smallest width wanted.
        width: Query<i64>,
        /// The smallest height wanted.
        height: Query<i64>,
        /// `crop` or `scale` (the default).
        method: Query<Option<String>>,
        /// Whether an animated thumbnail is wanted (thumbnails here are still images).
        animated: Query<Option<bool>>,
        /// How long to wait for content that was reserved but not uploaded yet (ms).
        timeout_ms: Query<Option<i64>>,
    ) -> ApiResult<Thumbnail> {
        let _ = animated;
        legacy_allowed(&state)?;
        thumbnail(&state, &server_name, &media_id, (width.0, height.0, method.0.as_deref()), timeout_ms.0).await
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

async fn download(
    state: &AppState,
    req: &Request,
    server_name: &str,
    media_id: &str,
    file_name: Option<&str>,
    timeout_ms: Option<i64>,
) -> ApiResult<Download> {
    let (item, sha256) = serve::local_media(state, server_name, media_id, timeout_ms).await?;
    serve::download(state, req, item, &sha256, file_name).await
}

async fn thumbnail(
    state: &AppState,
    server_name: &str,
    media_id: &str,
    (width, height, method): (i64, i64, Option<&str>),
    timeout_ms: Option<i64>,
) -> ApiResult<Thumbnail> {
    let want = thumbnails::requested(width, height, method)?;
    let (item, sha256) = serve::local_media(state, server_name, media_id, timeout_ms).await?;
    thumbnails::thumbnail(state, &item, &sha256, want).await
}
