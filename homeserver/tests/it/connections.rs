//! Connections are bounded: a cap on open connections, a deadline for a request's head, for a
//! kept-alive connection's silence and for a body's silence — while long-polls, slow but steady
//! uploads and `Expect: 100-continue` go through. Raw sockets, because HTTP clients hide exactly
//! what these tests need to control.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Long enough for any answer this machine gives to a loopback request, short enough that a
/// test waiting it out stays quick.
const PATIENCE: Duration = Duration::from_secs(10);

async fn connect(h: &Harness) -> TcpStream {
    TcpStream::connect(h.base_url.trim_start_matches("http://")).await.unwrap()
}

/// Reads until the server closes the connection; `None` if it has not within `PATIENCE`.
async fn read_to_close(stream: &mut TcpStream) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    closed.ok().map(|()| String::from_utf8_lossy(&seen).into_owned())
}

/// Reads one response (head and `Content-Length` body).
async fn read_response(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await.expect("a response").unwrap();
        assert!(n > 0, "closed before a full response: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .map_or(0, |v| v.parse::<usize>().unwrap());
            if seen.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

const VERSIONS: &[u8] = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: test\r\n\r\n";

#[tokio::test]
async fn a_head_sent_too_slowly_is_cut_off_while_others_are_served() {
    let h = Harness::start_with(TestBackend::Sqlite, |c| c.limits.head_timeout_ms = 1_000).await;
    let mut slow = connect(&h).await;
    slow.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: test\r\n").await.unwrap();
    // A header line every 100 ms: never idle, never done. Cut off after a second, well before
    // the 100 lines are out.
    let mut lines_sent = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
            break;
        }
        lines_sent += 1;
        let mut probe = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await {
            break;
        }
        // Meanwhile everyone else is served.
        if lines_sent == 5 {
            assert_eq!(h.get("/_matrix/client/versions", None).await.0, StatusCode::OK);
        }
    }
    assert!(lines_sent < 60, "the trickled head was not cut off ({lines_sent} lines taken)");
    assert_eq!(read_to_close(&mut slow).await.as_deref(), Some(""), "no answer to a head never finished");
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed() {
    let h = Harness::start_with(TestBackend::Sqlite, |c| {
        c.limits.head_timeout_ms = 500;
        c.limits.idle_timeout_ms = 500;
    })
    .await;
    // Connected, never a byte.
    let mut silent = connect(&h).await;
    assert_eq!(read_to_close(&mut silent).await.as_deref(), Some(""));
    // One request answered, then quiet on a kept-alive connection.
    let mut idle = connect(&h).await;
    idle.write_all(VERSIONS).await.unwrap();
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"));
    idle.write_all(VERSIONS).await.unwrap();
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"), "kept alive between requests");
    assert_eq!(read_to_close(&mut idle).await.as_deref(), Some(""), "closed once idle");
}

#[tokio::test]
async fn open_connections_are_capped() {
    let h = Harness::start_with(TestBackend::Sqlite, |c| c.limits.max_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&h).await);
    }
    // The kernel completes the handshake; the server does not take the connection on.
    let waiting = tokio::spawn({
        let url = h.url("/_matrix/client/versions");
        async move { reqwest::get(url).await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a fourth connection was served while three were open");
    drop(held.pop());
    let status = tokio::time::timeout(PATIENCE, waiting).await.expect("served once a place is free");
    assert_eq!(status.unwrap().unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn a_body_trickled_too_slowly_gets_408() {
    let h = Harness::start_with(TestBackend::Sqlite, |c| c.limits.body_timeout_ms = 500).await;
    let alice = h.register("alice", "pw").await;
    let json = "POST /_matrix/client/v3/login HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n{\"type\":"
        .to_owned();
    let upload = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 100000\r\n\r\n{}",
        alice.access_token,
        "x".repeat(1000),
    );
    for request in [json, upload] {
        let mut slow = connect(&h).await;
        slow.write_all(request.as_bytes()).await.unwrap();
        let answer = read_to_close(&mut slow).await.expect("an answer, then the connection closed");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("M_UNKNOWN"), "{answer}");
    }
}

/// The deadlines are for silence, not for work: a long-poll, a slow but steady upload sent after
/// `100 Continue`, and a second request on the same connection all outlast them.
#[tokio::test]
async fn long_polls_and_steady_uploads_outlast_the_deadlines() {
    let h = Harness::start_with(TestBackend::Sqlite, |c| {
        c.limits.head_timeout_ms = 300;
        c.limits.idle_timeout_ms = 300;
        c.limits.body_timeout_ms = 1_000;
    })
    .await;
    let alice = h.register("alice", "pw").await;
    let (status, first) = h.get("/_matrix/client/v3/sync", Some(&alice.access_token)).await;
    assert_eq!(status, StatusCode::OK);
    let since = first["next_batch"].as_str().unwrap();
    let poll = format!("/_matrix/client/v3/sync?since={since}&timeout=1500");
    let (status, _) = h.get(&poll, Some(&alice.access_token)).await;
    assert_eq!(status, StatusCode::OK, "a 1.5 s long-poll with 300 ms deadlines");

    let mut upload = connect(&h).await;
    let chunks = 8;
    let head = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        alice.access_token,
        chunks * 1000,
    );
    upload.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(PATIENCE, upload.read(&mut buf)).await.expect("100 Continue").unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 100"), "{}", String::from_utf8_lossy(&buf[..n]));
    for _ in 0..chunks {
        // 2 s in all: longer than the head and idle deadlines, each gap shorter than the body's.
        tokio::time::sleep(Duration::from_millis(250)).await;
        upload.write_all(&[b'x'; 1000]).await.unwrap();
    }
    let answer = read_response(&mut upload).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("mxc://"), "{answer}");
    upload.write_all(VERSIONS).await.unwrap();
    assert!(read_response(&mut upload).await.starts_with("HTTP/1.1 200"), "the connection is still good");
}

#[tokio::test]
async fn an_oversized_head_is_refused_and_the_server_stays_up() {
    let h = Harness::start(TestBackend::Sqlite).await;
    let mut big = connect(&h).await;
    let head = format!("GET /_matrix/client/versions HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    // The server may stop reading (and reset) before all of it is written.
    let _ = big.write_all(head.as_bytes()).await;
    let answer = read_to_close(&mut big).await.unwrap_or_default();
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(h.get("/_matrix/client/versions", None).await.0, StatusCode::OK);
}
