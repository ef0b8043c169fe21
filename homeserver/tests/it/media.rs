//! The media repository: uploads, reserved uploads, downloads and their headers, ranges,
//! thumbnails, limits, quotas, deletion, encrypted attachments, and the S3 store.

use myelin_homeserver::backend_tests;

use crate::support::*;

backend_tests!(
    upload_and_download_with_safe_headers,
    reserved_uploads_complete_once,
    uploads_are_limited_while_streaming,
    ranges_and_waiting_for_an_upload,
    thumbnails_of_real_and_hostile_images,
    quotas_and_admin_deletion,
    encrypted_attachments_round_trip,
);

impl Harness {
    /// Uploads bytes with a content type (and a file name); returns status and JSON.
    pub(crate) async fn upload(
        &self,
        token: &str,
        content_type: &str,
        name: Option<&str>,
        bytes: Vec<u8>,
    ) -> (StatusCode, Value) {
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
        self.get_with(path, token, &[]).await
    }

    /// A raw GET with extra headers.
    async fn get_with(&self, path: &str, token: Option<&str>, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.get(self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send().await.unwrap()
    }

    /// Uploads `chunks` as a stream, with no length declared.
    async fn upload_chunked(&self, token: &str, chunks: Vec<Vec<u8>>) -> (StatusCode, Value) {
        let chunks = chunks.into_iter().map(Ok::<_, std::io::Error>).collect::<Vec<_>>();
        let resp = self
            .http
            .post(self.url("/_matrix/media/v3/upload"))
            .bearer_auth(token)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
            .send()
            .await
            .unwrap();
        decode(resp).await
    }

    /// Uploads `bytes`; panics unless it succeeds; returns the `server/media` path.
    async fn upload_ok(&self, token: &str, content_type: &str, bytes: Vec<u8>) -> String {
        let (status, uploaded) = self.upload(token, content_type, None, bytes).await;
        assert_eq!(status, StatusCode::OK, "{uploaded}");
        mxc_path(&uploaded["content_uri"])
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
    let resp = h.raw_get(&format!("/_matrix/media/v3/download/{path}/kitten.png"), None).await;
    assert_eq!(resp.headers()["content-disposition"], "inline; filename*=utf-8''kitten.png");
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

    let not_yet = format!("/_matrix/client/v1/media/download/{path}?timeout_ms=100");
    assert_error(
        &decode(h.raw_get(&not_yet, Some(&bob.access_token)).await).await,
        StatusCode::GATEWAY_TIMEOUT,
        "M_NOT_YET_UPLOADED",
    );
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
    let resp = h.upload_chunked(&alice.access_token, (0..5).map(|_| vec![1; 300]).collect()).await;
    assert_error(&resp, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
    assert_eq!(objects(&h).len(), 1);
    let tmp = h.server.config.data_dir.join("media").join("tmp");
    assert!(std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0) == 0, "no partial upload stays");
    // The legacy unauthenticated path is off here.
    let resp = h.raw_get(&format!("/_matrix/media/v3/download/{}/anything", h.server_name()), None).await;
    assert_error(&decode(resp).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
}

async fn ranges_and_waiting_for_an_upload(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let path = h.upload_ok(&alice.access_token, "video/mp4", bytes.clone()).await;
    let url = format!("/_matrix/client/v1/media/download/{path}");
    let token = Some(alice.access_token.as_str());

    let whole = h.raw_get(&url, token).await;
    assert_eq!((whole.status(), &whole.headers()["accept-ranges"]), (StatusCode::OK, &"bytes".parse().unwrap()));
    for (range, expected, content_range) in [
        ("bytes=100-199", 100..200, "bytes 100-199/10000"),
        ("bytes=9990-", 9990..10_000, "bytes 9990-9999/10000"),
        ("bytes=-10", 9990..10_000, "bytes 9990-9999/10000"),
    ] {
        let resp = h.get_with(&url, token, &[("Range", range)]).await;
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(resp.headers()["content-range"], content_range);
        assert_eq!(resp.headers()["content-length"], expected.len().to_string().as_str());
        assert_eq!(resp.bytes().await.unwrap().as_ref(), &bytes[expected]);
    }
    // If-Range: the range only while the client's copy is of the same bytes.
    let etag = whole.headers()["etag"].to_str().unwrap().to_owned();
    let resp = h.get_with(&url, token, &[("Range", "bytes=0-9"), ("If-Range", &etag)]).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    let resp = h.get_with(&url, token, &[("Range", "bytes=0-9"), ("If-Range", "\"other\"")]).await;
    assert_eq!((resp.status(), resp.bytes().await.unwrap().len()), (StatusCode::OK, 10_000));
    let resp = h.get_with(&url, token, &[("Range", "bytes=10000-")]).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(resp.headers()["content-range"], "bytes */10000");

    // A download of a reserved ID waits for its upload.
    let (_, created) = h.post("/_matrix/media/v1/create", token, json!({})).await;
    let reserved = mxc_path(&created["content_uri"]);
    let resp = h.raw_get(&format!("/_matrix/client/v1/media/download/{reserved}?timeout_ms=0"), token).await;
    assert_error(&decode(resp).await, StatusCode::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED");
    let started = std::time::Instant::now();
    let waiting_url = format!("/_matrix/client/v1/media/download/{reserved}?timeout_ms=30000");
    let waiting = h.raw_get(&waiting_url, token);
    let upload = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let resp = h
            .http
            .put(h.url(&format!("/_matrix/media/v3/upload/{reserved}")))
            .bearer_auth(&alice.access_token)
            .header("Content-Type", "text/plain")
            .body("worth the wait")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    };
    let (resp, ()) = tokio::join!(waiting, upload);
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"worth the wait");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "woken by the upload, not the timeout");
}

fn encode(image: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A gradient photo-like image.
fn picture(width: u32, height: u32) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, ((x + y) % 256) as u8])
    }))
}

async fn thumbnails_of_real_and_hostile_images(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let token = Some(alice.access_token.as_str());
    let thumb = |path: &str, query: &str| format!("/_matrix/client/v1/media/thumbnail/{path}?{query}");
    let dimensions = |bytes: &[u8]| {
        let image = image::load_from_memory(bytes).unwrap();
        (image.width(), image.height())
    };

    let jpeg =
        h.upload_ok(&alice.access_token, "image/jpeg", encode(picture(1200, 900), image::ImageFormat::Jpeg)).await;
    let resp = h.raw_get(&thumb(&jpeg, "width=300&height=200&method=scale"), token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "image/jpeg");
    assert_eq!(resp.headers()["content-disposition"], "inline; filename=\"thumbnail.jpeg\"");
    assert_eq!(dimensions(&resp.bytes().await.unwrap()), (320, 240));
    let resp = h.raw_get(&thumb(&jpeg, "width=64&height=64&method=crop"), token).await;
    let first = resp.bytes().await.unwrap();
    assert_eq!(dimensions(&first), (96, 96));
    // Made once, then served from the store.
    let cached = h.server.config.data_dir.join("media/thumbnails");
    let made: Vec<_> =
        std::fs::read_dir(&cached).unwrap().flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap()).collect();
    assert_eq!(made.len(), 3, "two thumbnails and the image's header: {made:?}");
    let again = h.raw_get(&thumb(&jpeg, "width=90&height=90&method=crop"), token).await.bytes().await.unwrap();
    assert_eq!(again, first);

    // PNG (with transparency), GIF and WebP become PNG thumbnails; the legacy path works too.
    let rgba =
        image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(500, 500, |x, _| image::Rgba([0, 0, 0, x as u8])));
    for (format, source) in [
        (image::ImageFormat::Png, rgba),
        (image::ImageFormat::Gif, picture(400, 300)),
        (image::ImageFormat::WebP, picture(400, 300)),
    ] {
        let path = h.upload_ok(&alice.access_token, format.to_mime_type(), encode(source, format)).await;
        let resp = h.raw_get(&format!("/_matrix/media/v3/thumbnail/{path}?width=32&height=32&method=crop"), None).await;
        assert_eq!(resp.status(), StatusCode::OK, "{format:?}");
        assert_eq!(resp.headers()["content-type"], "image/png", "{format:?}");
        assert_eq!(dimensions(&resp.bytes().await.unwrap()), (32, 32), "{format:?}");
    }

    // Smaller than asked: the original, never upscaled. Larger than any size made: the original.
    let small = encode(picture(20, 10), image::ImageFormat::Png);
    let path = h.upload_ok(&alice.access_token, "application/octet-stream", small.clone()).await;
    let resp = h.raw_get(&thumb(&path, "width=32&height=32"), token).await;
    assert_eq!(resp.headers()["content-type"], "image/png", "the type the bytes show");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &small[..]);
    let resp = h.raw_get(&thumb(&jpeg, "width=2000&height=2000"), token).await;
    assert_eq!(dimensions(&resp.bytes().await.unwrap()), (1200, 900));

    // A GIF whose header claims 65535×65535 pixels (16 GiB decoded): refused unread.
    let mut bomb = encode(picture(1, 1), image::ImageFormat::Gif);
    bomb[6..10].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    let path = h.upload_ok(&alice.access_token, "image/gif", bomb).await;
    for _ in 0..2 {
        // The second answer comes from the cached failure.
        let resp = h.raw_get(&thumb(&path, "width=32&height=32"), token).await;
        assert_error(&decode(resp).await, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
    }
    // Truncated, and not an image at all; nonsense sizes; no token.
    let whole = encode(picture(300, 300), image::ImageFormat::Png);
    let truncated = h.upload_ok(&alice.access_token, "image/png", whole[..whole.len() / 2].to_vec()).await;
    let svg = h.upload_ok(&alice.access_token, "image/svg+xml", b"<svg onload='alert(1)'/>".to_vec()).await;
    let empty = h.upload_ok(&alice.access_token, "image/png", Vec::new()).await;
    for (path, query, token, status, errcode) in [
        (&truncated, "width=32&height=32", token, StatusCode::BAD_REQUEST, "M_UNKNOWN"),
        (&truncated, "width=96&height=96&method=crop", token, StatusCode::BAD_REQUEST, "M_UNKNOWN"),
        (&svg, "width=32&height=32", token, StatusCode::BAD_REQUEST, "M_UNKNOWN"),
        (&empty, "width=2000&height=2000", token, StatusCode::BAD_REQUEST, "M_UNKNOWN"),
        (&jpeg, "width=0&height=32", token, StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
        (&jpeg, "width=32&height=32&method=zoom", token, StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
        (&jpeg, "width=32&height=32", None, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN"),
    ] {
        assert_error(&decode(h.raw_get(&thumb(path, query), token).await).await, status, errcode);
    }
    // The server is still fine.
    assert_eq!(h.raw_get(&thumb(&jpeg, "width=32&height=32"), token).await.status(), StatusCode::OK);
}

async fn quotas_and_admin_deletion(backend: TestBackend) {
    let h = Harness::start_with(backend, |config| {
        config.media.max_user_storage = Some(100_000);
        config.admins = vec![format!("@root:{}", config.server_name)];
    })
    .await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let root = h.register("root", "pw").await;
    let octets = "application/octet-stream";
    let shared = encode(picture(200, 200), image::ImageFormat::Png);
    assert!(shared.len() < 100_000, "{}", shared.len());

    // Alice's quota: what fits is taken; what does not is refused whole, declared or streamed.
    let path_a = h.upload_ok(&alice.access_token, "image/png", shared.clone()).await;
    let left = 100_000 - shared.len();
    let response = h.upload(&alice.access_token, octets, None, vec![1; left + 1]).await;
    assert_error(&response, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let resp = h.upload_chunked(&alice.access_token, vec![vec![2; left], vec![2; 10]]).await;
    assert_error(&resp, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    h.upload_ok(&alice.access_token, octets, vec![3; left]).await;
    assert_error(&h.upload(&alice.access_token, octets, None, vec![4]).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    // Bob has his own quota; the same bytes are stored once.
    let path_b = h.upload_ok(&bob.access_token, "image/png", shared.clone()).await;
    assert_eq!(objects(&h).len(), 2, "{:?}", objects(&h));
    let thumb = |path: &str| format!("/_matrix/client/v1/media/thumbnail/{path}?width=32&height=32&method=crop");
    assert_eq!(h.raw_get(&thumb(&path_a), Some(&bob.access_token)).await.status(), StatusCode::OK);

    // Only admins delete; the bytes stay while another upload uses them.
    let delete = |path: &str, token: &str| {
        h.http.delete(h.url(&format!("/_myelin/admin/v1/media/{path}"))).bearer_auth(token.to_owned()).send()
    };
    assert_error(
        &decode(delete(&path_a, &alice.access_token).await.unwrap()).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let (status, deleted) = decode(delete(&path_a, &root.access_token).await.unwrap()).await;
    assert_eq!(
        (status, &deleted),
        (StatusCode::OK, &json!({"deleted_media": [path_a.split('/').nth(1).unwrap()], "total": 1}))
    );
    let resp = h.raw_get(&format!("/_matrix/client/v1/media/download/{path_a}"), Some(&bob.access_token)).await;
    assert_error(&decode(resp).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let resp = h.raw_get(&format!("/_matrix/client/v1/media/download/{path_b}"), Some(&bob.access_token)).await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &shared[..]);
    // The last one takes the bytes and the thumbnails with it, and frees the quota.
    let (status, _) = decode(delete(&path_b, &root.access_token).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(objects(&h).len(), 1, "{:?}", objects(&h));
    let thumbnails = h.server.config.data_dir.join("media/thumbnails");
    let left_over: usize =
        std::fs::read_dir(&thumbnails).unwrap().map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count()).sum();
    assert_eq!(left_over, 0);
    let (status, deleted) = decode(delete(&path_b, &root.access_token).await.unwrap()).await;
    assert_eq!((status, deleted["total"].as_i64()), (StatusCode::NOT_FOUND, None));
    h.upload_ok(&bob.access_token, octets, vec![5; 100_000]).await;
}

/// Encrypts `plaintext` as the spec's encrypted attachments do (AES-256-CTR, SHA-256 of the
/// ciphertext); returns the ciphertext and the `file` object without its `url`.
fn encrypt_attachment(plaintext: &[u8]) -> (Vec<u8>, Value) {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use sha2::Digest;
    let key: [u8; 32] = rand::random();
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&rand::random::<[u8; 8]>());
    let ciphertext = aes_256_ctr(&key, &iv, plaintext);
    let file = json!({
        "v": "v2",
        "key": {"kty": "oct", "key_ops": ["encrypt", "decrypt"], "alg": "A256CTR", "k": URL_SAFE_NO_PAD.encode(key), "ext": true},
        "iv": STANDARD_NO_PAD.encode(iv),
        "hashes": {"sha256": STANDARD_NO_PAD.encode(sha2::Sha256::digest(&ciphertext))},
    });
    (ciphertext, file)
}

fn decrypt_attachment(ciphertext: &[u8], file: &Value) -> Vec<u8> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use sha2::Digest;
    let hash = STANDARD_NO_PAD.decode(file["hashes"]["sha256"].as_str().unwrap()).unwrap();
    assert_eq!(sha2::Sha256::digest(ciphertext).as_slice(), &hash[..], "the ciphertext arrived intact");
    let key = URL_SAFE_NO_PAD.decode(file["key"]["k"].as_str().unwrap()).unwrap();
    let iv = STANDARD_NO_PAD.decode(file["iv"].as_str().unwrap()).unwrap();
    aes_256_ctr(&key, &iv, ciphertext)
}

/// AES-256-CTR with a 128-bit big-endian counter block, the attachment cipher: its own inverse.
fn aes_256_ctr(key: &[u8], iv: &[u8], data: &[u8]) -> Vec<u8> {
    use aes::cipher::{KeyIvInit, StreamCipher};
    let mut out = data.to_vec();
    ctr::Ctr128BE::<aes::Aes256>::new_from_slices(key, iv).unwrap().apply_keystream(&mut out);
    out
}

async fn encrypted_attachments_round_trip(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let alice = h.register("alice", "pw").await;
    let bob = h.register("bob", "pw").await;
    let room = h.create_room(&alice, json!({"invite": [bob.user_id]})).await;
    assert_eq!(h.membership(&bob, &room, "join", None).await.0, StatusCode::OK);

    let plaintext: Vec<u8> = b"the plans, in full: ".iter().copied().cycle().take(300_000).collect();
    let (ciphertext, mut file) = encrypt_attachment(&plaintext);
    let path = h.upload_ok(&alice.access_token, "application/octet-stream", ciphertext).await;
    file["url"] = json!(format!("mxc://{path}"));
    let content = json!({"msgtype": "m.file", "body": "plans.txt", "info": {"size": plaintext.len()}, "file": file});
    let (status, sent) = h
        .put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/att1"), Some(&alice.access_token), content)
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");

    let sync = h.sync(&bob, None, 0, None).await;
    let events = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    let event = events.iter().find(|e| e["content"]["msgtype"] == "m.file").expect("the file message");
    let file = &event["content"]["file"];
    let path = file["url"].as_str().unwrap().strip_prefix("mxc://").unwrap();
    let resp = h.raw_get(&format!("/_matrix/client/v1/media/download/{path}"), Some(&bob.access_token)).await;
    let received = resp.bytes().await.unwrap();
    assert_eq!(decrypt_attachment(&received, file), plaintext);

    // The server holds ciphertext only.
    let needle = &plaintext[..40];
    assert!(!h.server.database_dump().await.as_bytes().windows(needle.len()).any(|w| w == needle));
    let stored = std::fs::read(h.server.config.data_dir.join("media/sha256").join(objects(&h)[0].clone())).unwrap();
    assert!(!stored.windows(needle.len()).any(|w| w == needle), "plaintext in the media store");
}

/// The S3 server of `MYELIN_TEST_S3_*` (endpoint, bucket, access key, secret key), as
/// object_store options.
fn s3_options() -> (String, std::collections::BTreeMap<String, String>) {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let options = [
        ("aws_endpoint", var("MYELIN_TEST_S3_ENDPOINT", "")),
        ("aws_access_key_id", var("MYELIN_TEST_S3_ACCESS_KEY", "myelin")),
        ("aws_secret_access_key", var("MYELIN_TEST_S3_SECRET_KEY", "myelin-secret")),
        ("aws_region", "us-east-1".to_owned()),
        ("aws_allow_http", "true".to_owned()),
        ("aws_virtual_hosted_style_request", "false".to_owned()),
    ];
    let options = options.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    (var("MYELIN_TEST_S3_BUCKET", "myelin-test"), options)
}

/// The keys under `prefix` in the test bucket.
async fn s3_keys(prefix: &str) -> Vec<String> {
    use futures_util::TryStreamExt;
    use object_store::ObjectStore;
    let (bucket, options) = s3_options();
    let mut builder = object_store::aws::AmazonS3Builder::new().with_bucket_name(bucket);
    for (key, value) in options {
        builder = builder.with_config(key.parse().unwrap(), value);
    }
    let store = builder.build().unwrap();
    let listed: Vec<_> = store.list(Some(&object_store::path::Path::from(prefix))).try_collect().await.unwrap();
    let mut keys: Vec<String> =
        listed.into_iter().map(|m| m.location.as_ref().strip_prefix(prefix).unwrap().to_owned()).collect();
    keys.sort();
    keys
}

/// Uploads, downloads, ranges, thumbnails, limits and deletion on an S3-compatible server.
#[tokio::test]
#[cfg_attr(not(myelin_s3_tests), ignore = "set MYELIN_TEST_S3_ENDPOINT (and _BUCKET, _ACCESS_KEY, _SECRET_KEY) to run")]
async fn s3_store() {
    let prefix = format!("run-{}", uuid::Uuid::new_v4().simple());
    let h = Harness::start_with(TestBackend::Sqlite, |config| {
        let (bucket, options) = s3_options();
        config.media.store = Some(format!("s3://{bucket}/{prefix}"));
        config.media.store_options = options;
        config.media.max_upload_size = 2 * 1024 * 1024;
        config.admins = vec![format!("@root:{}", config.server_name)];
    })
    .await;
    let alice = h.register("alice", "pw").await;
    let root = h.register("root", "pw").await;
    let token = Some(alice.access_token.as_str());
    let photo = encode(picture(1000, 800), image::ImageFormat::Jpeg);
    let path = h.upload_ok(&alice.access_token, "image/jpeg", photo.clone()).await;
    let again = h.upload_ok(&alice.access_token, "image/jpeg", photo.clone()).await;

    let resp = h.raw_get(&format!("/_matrix/client/v1/media/download/{again}"), token).await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &photo[..]);
    let resp =
        h.get_with(&format!("/_matrix/client/v1/media/download/{path}"), token, &[("Range", "bytes=10-19")]).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &photo[10..20]);
    let resp =
        h.raw_get(&format!("/_matrix/client/v1/media/thumbnail/{path}?width=96&height=96&method=crop"), token).await;
    assert_eq!((resp.status(), &resp.headers()["content-type"]), (StatusCode::OK, &"image/jpeg".parse().unwrap()));

    // A reserved upload, and an upload refused while streaming, leaving nothing behind.
    let (_, created) = h.post("/_matrix/media/v1/create", token, json!({})).await;
    let reserved = mxc_path(&created["content_uri"]);
    let resp = h
        .http
        .put(h.url(&format!("/_matrix/media/v3/upload/{reserved}")))
        .bearer_auth(&alice.access_token)
        .body(vec![9u8; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = h.upload_chunked(&alice.access_token, (0..3).map(|_| vec![1; 1024 * 1024]).collect()).await;
    assert_error(&resp, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
    let keys = s3_keys(&prefix).await;
    assert_eq!(keys.iter().filter(|k| k.starts_with("/sha256/")).count(), 2, "{keys:?}");
    assert_eq!(keys.iter().filter(|k| k.starts_with("/thumbnails/")).count(), 2, "{keys:?}");
    assert!(!keys.iter().any(|k| k.starts_with("/tmp/")), "{keys:?}");

    // Deleting both items of the photo removes its bytes and thumbnail from the bucket.
    for item in [&path, &again] {
        let resp = h
            .http
            .delete(h.url(&format!("/_myelin/admin/v1/media/{item}")))
            .bearer_auth(&root.access_token)
            .send()
            .await;
        assert_eq!(resp.unwrap().status(), StatusCode::OK);
    }
    let keys = s3_keys(&prefix).await;
    assert_eq!(keys.len(), 1, "only the reserved upload's bytes: {keys:?}");
}
