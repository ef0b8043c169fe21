//! The `myelin-server` binary itself: configuration from the environment only (as the
//! container image runs it), start-up errors that name the key, graceful shutdown on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn server(data_dir: &std::path::Path, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_myelin-server"));
    cmd.env_clear()
        .env("MYELIN_SERVER_NAME", format!("localhost:{port}"))
        .env("MYELIN_LISTEN__CLIENT", format!("127.0.0.1:{port}"))
        .env("MYELIN_DATA_DIR", data_dir)
        .env("MYELIN_RATE_LIMITS__ENABLED", "false")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

async fn wait_until_up(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if http.get(format!("{base}/_matrix/client/versions")).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server did not come up at {base}");
}

#[tokio::test]
async fn env_configured_binary_serves_and_stops_cleanly_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    let child = server(data.path(), port).spawn().unwrap();
    wait_until_up(&http, &base).await;
    let body = json!({"username": "alice", "password": "pw", "auth": {"type": "m.login.dummy"}});
    let resp = http.post(format!("{base}/_matrix/client/v3/register")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // While it runs, the write-ahead log holds the latest writes.
    assert_private(&data.path().join("myelin.db-wal"));

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    assert!(output.status.success(), "exit status {:?}", output.status);
    let log = String::from_utf8_lossy(&output.stdout);
    let listening: Vec<_> = log.lines().filter(|l| l.contains("listening on")).collect();
    assert_eq!(listening.len(), 1, "one start-up line saying where it listens: {log}");
    assert!(listening[0].contains(&format!("127.0.0.1:{port}")) && listening[0].contains("data:"), "{log}");
    assert!(log.contains("myelin stopped"), "{log}");
    assert!(!log.contains("myl_"), "access tokens never reach the log: {log}");
    for file in ["myelin.db", "signing.key"] {
        assert_private(&data.path().join(file));
    }
    assert!(data.path().join("media").is_dir());

    // A second start finds the account.
    let mut child = server(data.path(), port).spawn().unwrap();
    wait_until_up(&http, &base).await;
    let login = json!({"type": "m.login.password", "user": "alice", "password": "pw"});
    let resp = http.post(format!("{base}/_matrix/client/v3/login")).json(&login).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The file exists and only its owner may read it (it holds password hashes, keys, messages).
#[track_caller]
fn assert_private(path: &std::path::Path) {
    let metadata = std::fs::metadata(path);
    assert!(metadata.is_ok(), "{} lives in the data directory", path.display());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is readable by its owner only, not {mode:o}", path.display());
    }
}

#[test]
fn unknown_keys_and_bad_values_fail_at_start_naming_the_key() {
    let data = tempfile::tempdir().unwrap();
    let output = server(data.path(), free_port()).env("MYELIN_RATE_LIMITS__ENABLD", "false").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("enabld"), "{stderr}");

    let output =
        server(data.path(), free_port()).env("MYELIN_DATABASE__URL", "mysql://me:hunter2@db/x").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("database.url") && !stderr.contains("hunter2"), "{stderr}");

    let output =
        server(data.path(), free_port()).arg("--config").arg(data.path().join("missing.toml")).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.toml"));
}

/// At the most verbose log level, neither access tokens nor what clients send (ciphertext,
/// to-device payloads, backed-up keys) reach the log.
#[tokio::test]
async fn secrets_and_message_content_stay_out_of_the_log_at_trace_level() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // The log goes to a file: at trace level it outgrows a pipe nobody reads until the end.
    let log_path = data.path().join("server.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = server(data.path(), port)
        .env("MYELIN_LOG", "trace")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    wait_until_up(&http, &base).await;

    let marker = "CONTENT-MARKER-7f3a";
    let body = json!({"username": "alice", "password": "pw-marker-pass", "auth": {"type": "m.login.dummy"}});
    let registered: Value =
        http.post(format!("{base}/_matrix/client/v3/register")).json(&body).send().await.unwrap().json().await.unwrap();
    let (token, user_id, device_id) = (
        registered["access_token"].as_str().unwrap().to_owned(),
        registered["user_id"].as_str().unwrap().to_owned(),
        registered["device_id"].as_str().unwrap().to_owned(),
    );
    let call = |method: reqwest::Method, path: &str, body: Value| {
        http.request(method, format!("{base}{path}")).bearer_auth(&token).json(&body).send()
    };
    let created: Value =
        call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", json!({})).await.unwrap().json().await.unwrap();
    let room = created["room_id"].as_str().unwrap();
    let encrypted = json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": marker, "session_id": "s", "sender_key": "k", "device_id": device_id});
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/t1");
    assert_eq!(call(reqwest::Method::PUT, &path, encrypted).await.unwrap().status(), StatusCode::OK);
    let to_device = json!({"messages": {user_id: {device_id: {"secret": marker}}}});
    let path = "/_matrix/client/v3/sendToDevice/m.room.encrypted/t2";
    assert_eq!(call(reqwest::Method::PUT, path, to_device).await.unwrap().status(), StatusCode::OK);
    let version = json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": marker}});
    assert_eq!(
        call(reqwest::Method::POST, "/_matrix/client/v3/room_keys/version", version).await.unwrap().status(),
        StatusCode::OK
    );
    let sync = call(reqwest::Method::GET, "/_matrix/client/v3/sync", json!({})).await.unwrap().text().await.unwrap();
    assert!(sync.contains(marker), "the client gets its data back");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let log = String::from_utf8_lossy(&std::fs::read(&log_path).unwrap()).into_owned();
    assert!(log.len() > 1000, "trace logging is on: {log}");
    for secret in [marker, "myl_", "pw-marker-pass"] {
        assert!(!log.contains(secret), "{secret} reached the log");
    }
}

/// The container image's start-up path, without a container engine: the binary with exactly
/// the Dockerfile's `ENV` (the data directory and port moved somewhere free), checked with the
/// image's own HEALTHCHECK command.
#[tokio::test]
async fn the_container_images_environment_starts_a_healthy_server() {
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Dockerfile")).unwrap();
    let instructions = dockerfile_instructions(&dockerfile);
    let instruction =
        |name: &'static str| instructions.iter().filter(move |(n, _)| n == name).map(|(_, args)| args.as_str());
    let image_env: Vec<(String, String)> = instruction("ENV")
        .flat_map(|args| args.split_whitespace())
        .map(|pair| pair.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).expect("KEY=value"))
        .collect();
    assert!(image_env.iter().any(|(k, v)| k == "MYELIN_DATA_DIR" && v == "/data"), "{image_env:?}");
    assert_eq!(instruction("EXPOSE").collect::<Vec<_>>(), ["8008 8448"]);
    assert!(instruction("USER").all(|user| !user.starts_with("0") && !user.starts_with("root")));
    assert!(instruction("USER").next().is_some(), "runs as a non-root user");
    let healthcheck = instruction("HEALTHCHECK").next().expect("a HEALTHCHECK");
    assert!(healthcheck.ends_with(r#"CMD ["myelin-server", "health"]"#), "{healthcheck}");

    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let image = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_myelin-server"));
        cmd.env_clear().args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (key, value) in &image_env {
            let value = match key.as_str() {
                "MYELIN_DATA_DIR" => data.path().display().to_string(),
                // The image's address (all interfaces), on a free port.
                "MYELIN_LISTEN__CLIENT" => value.replace(":8008", &format!(":{port}")),
                _ => value.clone(),
            };
            cmd.env(key, value);
        }
        cmd
    };
    let health = |label: &str| {
        let output = image(&["health"]).output().unwrap();
        (
            output.status.success(),
            format!("{label}: {}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
        )
    };
    let checked = image(&["check-config"]).output().unwrap();
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    let (healthy, said) = health("before start");
    assert!(!healthy, "no server yet, yet healthy: {said}");

    let mut child = image(&[]).spawn().unwrap();
    let http = reqwest::Client::new();
    wait_until_up(&http, &format!("http://127.0.0.1:{port}")).await;
    let (healthy, said) = health("running");
    assert!(healthy, "{said}");
    assert!(data.path().join("signing.key").exists() && data.path().join("myelin.db").exists());
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "stops cleanly on SIGTERM (docker stop): {status:?}");
}

/// The Dockerfile's instructions as (NAME, arguments), continuation lines joined, comments out.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim).filter(|line| !line.starts_with('#')) {
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                if let Some((name, args)) = current.trim().split_once(char::is_whitespace) {
                    instructions.push((name.to_ascii_uppercase(), args.trim().to_owned()));
                }
                current.clear();
            }
        }
    }
    instructions
}
