//! The media repository: uploads, reserved uploads, downloads and their headers, limits.

use myelin_homeserver::backend_tests;

use crate::support::*;

backend_tests!(
    upload_and_download_with_safe_headers,
    reserved_uploads_complete_once,
    uploads_are_limited_while_streaming,
);

impl Harness {
    /// Uploads bytes with a content type (and a file name); returns status and JSON.
    async fn upload(&self, token: &str, content_type: &str, name: Option<&str>, bytes: Vec<u8>) -> (StatusCode, Value) {
        let mut url = self.url("/_matrix/media/v3/upload");
        if let Some(name) = name {
            url = format!("{url}?filename={name}");
        }
        let resp = self
            .http
            .post(url)
            .bearer_auth(token)
            .header("Content-Type", content_type)
            .body(bytes)
            .send()
            .await
            .unwrap();
        decode(resp).await
    }

    /// A raw GET, optionally authenticated.
    async fn raw_get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.unwrap()
    }
}

/// `server/media` of an `mxc://server/media` URI.
fn mxc_path(uri: &Value) -> String {
    uri.as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned()
}

fn objects(h: &Harness) -> Vec<String> {
    let dir = h.server.config.data_dir.join("media").join("sha256");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

async fn upload_and_download_with_safe_headers(backend: TestBackend) {
    let mut h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let png = b"\x89PNG\r\n\x1a\nnot really an image".to_vec();
    let (status, uploaded) = h.upload(&alice.access_token, "image/png", Some("cat.png"), png.clone()).await;
    assert_eq!(status, StatusCode::OK, "{uploaded}");
    let path = mxc_path(&uploaded["content_uri"]);
    assert!(path.starts_with(&format!("{}/", h.server_name())), "{path}");

    let resp = h.raw_get(&format!("/_matrix/client/v1/media/download/{path}"), Some(&bob.access_token)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let headers = resp.headers().clone();
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["content-disposition"], "inline; filename*=utf-8''cat.png");
    assert!(headers["content-security-policy"].to_str().unwrap().starts_with("sandbox; default-src 'none'"));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cross-origin-resource-policy"], "cross-origin");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), png);

    // A name in the path wins; active content is an attachment, never inline.
    let (_, html) =
        h.upload(&alice.access_token, "text/html", Some("page.html"), b"<script>alert(1)</script>".to_vec()).await;
    let html_path = mxc_path(&html["content_uri"]);
    let resp =
        h.raw_get(&format!("/_matrix/client/v1/media/download/{html_path}/x%20y.html"), Some(&bob.access_token)).await;
    assert_eq!(resp.headers()["content-disposition"], "attachment; filename*=utf-8''x%20y.html");

    // The authenticated path needs a token; the legacy one does not (on by default).
    let resp = h.raw_get(&format!("/_matrix/client/v1/media/download/{path}"), None).await;
    assert_error(&decode(resp).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    let resp = h.raw_get(&format!("/_matrix/media/v3/download/{path}"), None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // Unknown media and other servers' media.
    let resp = h
        .raw_get(&format!("/_matrix/client/v1/media/download/{}/nope", h.server_name()), Some(&bob.access_token))
        .await;
    assert_error(&decode(resp).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    // The same bytes uploaded again share one object; everything survives a restart.
    let (_, again) = h.upload(&bob.access_token, "image/png", None, png.clone()).await;
    assert_ne!(again["content_uri"], uploaded["content_uri"]);
    assert_eq!(objects(&h).len(), 2, "{:?}", objects(&h));
    h = h.restart().await;
    let resp = h.raw_get(&format!("/_matrix/client/v1/media/download/{path}"), Some(&bob.access_token)).await;
    assert_eq!(resp.bytes().await.unwrap().to_vec(), png);

    let (status, config) = h.get("/_matrix/client/v1/media/config", Some(&alice.access_token)).await;
    assert_eq!((status, &config["m.upload.size"]), (StatusCode::OK, &json!(100 * 1024 * 1024)));
}

async fn reserved_uploads_complete_once(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let (status, created) = h.post("/_matrix/media/v1/create", Some(&alice.access_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert!(created["unused_expires_at"].as_i64().unwrap() > 0);
    let path = mxc_path(&created["content_uri"]);

    let resp = h.raw_get(&format!("/_matrix/client/v1/media/download/{path}"), Some(&bob.access_token)).await;
    assert_error(&decode(resp).await, StatusCode::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED");
    let put = |token: &str, body: &'static [u8]| {
        h.http
            .put(h.url(&format!("/_matrix/media/v3/upload/{path}?filename=notes.txt")))
            .bearer_auth(token.to_owned())
            .header("Content-Type", "text/plain")
            .body(body)
            .send()
    };
    assert_error(&decode(put(&bob.access_token, b"bob's").await.unwrap()).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let (status, body) = decode(put(&alice.access_token, b"alice's notes").await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let again = decode(put(&alice.access_token, b"other").await.unwrap()).await;
    assert_error(&again, StatusCode::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA");
    let resp = h.raw_get(&format!("/_matrix/client/v1/media/download/{path}"), Some(&bob.access_token)).await;
    assert_eq!(resp.headers()["content-disposition"], "inline; filename*=utf-8''notes.txt");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"alice's notes");
}

async fn uploads_are_limited_while_streaming(backend: TestBackend) {
    let h = Harness::start_with(backend, |config| {
        config.media.max_upload_size = 1000;
        config.media.legacy_unauthenticated = false;
    })
    .await;
    let alice = h.register("alice", "pw").await;
    let (status, config) = h.get("/_matrix/media/v3/config", Some(&alice.access_token)).await;
    assert_eq!((status, &config["m.upload.size"]), (StatusCode::OK, &json!(1000)));
    assert_eq!(h.upload(&alice.access_token, "application/octet-stream", None, vec![7; 1000]).await.0, StatusCode::OK);
    // Declared too large: refused before reading.
    let response = h.upload(&alice.access_token, "application/octet-stream", None, vec![7; 1001]).await;
    assert_error(&response, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
    // Chunked, with no length declared: refused while streaming, nothing left behind.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..5).map(|_| Ok(vec![1; 300])).collect();
    let resp = h
        .http
        .post(h.url("/_matrix/media/v3/upload"))
        .bearer_auth(&alice.access_token)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_error(&decode(resp).await, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
    assert_eq!(objects(&h).len(), 1);
    let tmp = h.server.config.data_dir.join("media").join("tmp");
    assert!(std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0) == 0, "no partial upload stays");
    // The legacy unauthenticated path is off here.
    let resp = h.raw_get(&format!("/_matrix/media/v3/download/{}/anything", h.server_name()), None).await;
    assert_error(&decode(resp).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
}
