//! Media of another server, fetched over federation through one's own server, kept there.

use myelin_federation_tests::{TestCa, User, federated_server};
use myelin_homeserver::test_support::TestBackend;
use serde_json::Value;

/// A 1×1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4, 0x89, 0x00, 0x00, 0x00, 0x0D, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];

async fn upload(user: &User, name: &str, bytes: Vec<u8>, content_type: &str) -> String {
    let (status, _, body) = user
        .raw(reqwest::Method::POST, &format!("/_matrix/media/v3/upload?filename={name}"), Some((bytes, content_type)))
        .await;
    assert_eq!(status, 200);
    let uri: Value = serde_json::from_slice(&body).unwrap();
    uri["content_uri"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_media_is_fetched_once_and_kept() {
    let ca = TestCa::new();
    let mut a = federated_server(&ca, TestBackend::Sqlite).await;
    let mut b = federated_server(&ca, TestBackend::Postgres).await;
    let alice = User::register(&a, "alice").await;
    let bob = User::register(&b, "bob").await;

    let file: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let file_mxc = upload(&alice, "report.bin", file.clone(), "application/octet-stream").await;
    let image_mxc = upload(&alice, "dot.png", PNG.to_vec(), "image/png").await;
    assert!(file_mxc.starts_with(&a.config.server_name));

    // Bob, on B, downloads alice's file: B fetches it from A.
    let (status, content_type, bytes) =
        bob.raw(reqwest::Method::GET, &format!("/_matrix/client/v1/media/download/{file_mxc}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(content_type.as_deref(), Some("application/octet-stream"));
    assert_eq!(bytes, file, "identical bytes");
    let (status, _, bytes) =
        bob.raw(reqwest::Method::GET, &format!("/_matrix/client/v1/media/download/{image_mxc}"), None).await;
    assert_eq!((status, bytes.as_slice()), (200, PNG));
    let (status, content_type, _) = bob
        .raw(reqwest::Method::GET, &format!("/_matrix/client/v1/media/thumbnail/{image_mxc}?width=32&height=32"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(content_type.as_deref(), Some("image/png"));

    // Unknown media on A: 404 through B.
    let missing = format!("{}/nosuchmediaid", a.config.server_name);
    let (status, _, body) =
        bob.raw(reqwest::Method::GET, &format!("/_matrix/client/v1/media/download/{missing}"), None).await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));

    // With A gone, B still serves its copy.
    a.stop().await;
    let (status, _, bytes) =
        bob.raw(reqwest::Method::GET, &format!("/_matrix/client/v1/media/download/{file_mxc}"), None).await;
    assert_eq!((status, bytes == file), (200, true));
    b.stop().await;
}
