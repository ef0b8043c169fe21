//! The `myelin` binary against a real Myelin homeserver: several users, each with their own
//! home folder (profiles, local store, secrets), talking through encrypted rooms.

use std::path::{Path, PathBuf};
use std::time::Duration;

use myelin_homeserver::test_support::{TestBackend, TestServer};
use serde_json::Value;

const PASSWORD: &str = "correct horse battery staple";

/// One person at one terminal: a home folder, a secret store, a profile.
struct Person {
    home: tempfile::TempDir,
    user_id: String,
    keyring: &'static str,
}

impl Person {
    /// Registers `name` with its secrets in `keyring` (`file` or `keyutils`).
    async fn register(server: &TestServer, name: &str, keyring: &'static str) -> Person {
        let home = tempfile::tempdir().unwrap();
        let mut person = Person { home, user_id: String::new(), keyring };
        let out = person.ok(&["register", &server.base_url, name]).await;
        person.user_id = out["user_id"].as_str().unwrap().to_owned();
        assert!(out["secret_store"].as_str().unwrap().contains(if keyring == "file" { "file" } else { "keyutils" }));
        person
    }

    /// A second login of the same account, in another home folder (another device).
    async fn login_again(&self, server: &TestServer) -> Person {
        let home = tempfile::tempdir().unwrap();
        let person = Person { home, user_id: self.user_id.clone(), keyring: self.keyring };
        let out = person.ok(&["login", &server.base_url, &self.user_id, "--device-name", "second"]).await;
        assert_eq!(out["user_id"], self.user_id.as_str());
        person
    }

    /// The binary with this person's home, secret store and `--json`.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_myelin"));
        command
            .args(args)
            .arg("--json")
            .env("MYELIN_HOME", self.home.path())
            .env("MYELIN_KEYRING", self.keyring)
            .env("MYELIN_PASSPHRASE", "local store passphrase")
            .env_remove("MYELIN_PROFILE")
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut command = self.command(args);
        command
            .env("MYELIN_PASSWORD", PASSWORD)
            .stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("start myelin");
        if let Some(input) = stdin {
            use tokio::io::AsyncWriteExt;
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("myelin finished in time")
            .unwrap()
    }

    /// Starts a long-running command (`listen --follow`) whose JSON lines the test reads.
    fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        self.command(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start myelin")
    }

    /// An access token of another login of this account, for what the CLI has no command for.
    async fn raw_token(&self, server: &TestServer) -> String {
        let login: Value = reqwest::Client::new()
            .post(format!("{}/_matrix/client/v3/login", server.base_url))
            .json(&serde_json::json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": self.user_id },
                "password": PASSWORD,
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        login["access_token"].as_str().unwrap().to_owned()
    }

    /// Runs a command that must succeed and returns its JSON output.
    async fn ok(&self, args: &[&str]) -> Value {
        self.ok_with_stdin(args, None).await
    }

    async fn ok_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Value {
        let out = self.run(args, stdin).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "myelin {args:?} failed: {stderr}");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
            panic!("myelin {args:?} printed no JSON ({err}): {}", String::from_utf8_lossy(&out.stdout))
        })
    }

    /// Runs a command that must fail; returns its one-line error.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args, None).await;
        assert!(!out.status.success(), "myelin {args:?} should have failed");
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        assert!(stderr.starts_with("myelin: "), "{stderr}");
        stderr
    }

    /// The bodies of a room's recent messages, as this person's client decrypts them.
    async fn history(&self, room: &str) -> Vec<Value> {
        self.ok(&["history", room, "-n", "50"]).await.as_array().unwrap().clone()
    }
}

fn bodies(messages: &[Value]) -> Vec<String> {
    messages.iter().filter_map(|m| m["content"]["body"].as_str()).map(str::to_owned).collect()
}

fn message<'a>(messages: &'a [Value], body: &str) -> &'a Value {
    messages
        .iter()
        .find(|m| m["content"]["body"] == body)
        .unwrap_or_else(|| panic!("no message {body:?} in {messages:#?}"))
}

/// Every file under `dir`, as bytes.
fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_chat_end_to_end_encrypted() {
    let mut server = TestServer::start(TestBackend::Sqlite).await;
    let alice = Person::register(&server, "alice", "keyutils").await;
    let bob = Person::register(&server, "bob", "file").await;

    // An encrypted room; bob is invited and joins.
    let created = alice.ok(&["rooms", "create", "Lab", "--invite", &bob.user_id]).await;
    assert_eq!(created["encrypted"], true);
    let room = created["room_id"].as_str().unwrap().to_owned();
    bob.ok(&["join", &room]).await;

    // Both ways.
    alice.ok(&["send", &room, "hello bob"]).await;
    bob.ok_with_stdin(&["send", &room], Some("hi alice, from stdin\n")).await;
    let seen_by_bob = bob.history(&room).await;
    assert_eq!(bodies(&seen_by_bob), ["hello bob", "hi alice, from stdin"]);
    let hello = message(&seen_by_bob, "hello bob");
    assert_eq!(hello["encrypted"], true);
    assert_eq!(hello["sender"], alice.user_id.as_str());
    assert!(hello["device_id"].is_string(), "the sending device is known: {hello}");
    assert_eq!(bodies(&alice.history(&room).await), ["hello bob", "hi alice, from stdin"]);

    // `listen` prints what arrived since the last listen, decrypted, then nothing new.
    let listened = bob.run(&["listen"], None).await;
    assert!(listened.status.success());
    let lines: Vec<Value> =
        String::from_utf8_lossy(&listened.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().any(|m| m["content"]["body"] == "hello bob"), "{lines:#?}");
    assert!(lines.iter().all(|m| m["error"].is_null()), "{lines:#?}");
    let again = bob.run(&["listen"], None).await;
    assert!(String::from_utf8_lossy(&again.stdout).trim().is_empty());

    // A late joiner gets keys for what is sent after joining, not before.
    let carol = Person::register(&server, "carol", "file").await;
    alice.ok(&["invite", &room, &carol.user_id]).await;
    carol.ok(&["join", &room]).await;
    alice.ok(&["send", &room, "welcome carol"]).await;
    let seen_by_carol = carol.history(&room).await;
    assert!(bodies(&seen_by_carol).contains(&"welcome carol".to_owned()), "{seen_by_carol:#?}");
    let undecryptable: Vec<&Value> = seen_by_carol.iter().filter(|m| m["error"].is_string()).collect();
    assert!(!undecryptable.is_empty(), "messages from before carol joined stay unreadable to her");
    assert!(undecryptable.iter().all(|m| m["waiting_for_key"] == true), "{undecryptable:#?}");
    assert_eq!(bodies(&bob.history(&room).await).last().unwrap(), "welcome carol");

    // A direct message creates an encrypted direct room once and reuses it.
    let dm = bob.ok(&["dm", &alice.user_id, "just between us"]).await;
    let dm_again = bob.ok(&["dm", &alice.user_id, "still between us"]).await;
    assert_eq!(dm["room_id"], dm_again["room_id"]);
    let dm_room = dm["room_id"].as_str().unwrap().to_owned();
    alice.ok(&["join", &dm_room]).await;
    let dm_seen = alice.history(&dm_room).await;
    assert_eq!(bodies(&dm_seen), ["just between us", "still between us"]);
    assert!(dm_seen.iter().filter(|m| m["content"]["body"].is_string()).all(|m| m["encrypted"] == true));
    assert!(carol.fails(&["history", &dm_room]).await.contains("M_FORBIDDEN"));

    // An encrypted file: identical bytes after the round trip.
    let file_bytes: Vec<u8> = (0..700_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let marker = b"PLAINTEXT-FILE-MARKER-0123456789";
    let mut file_bytes = [marker.as_slice(), &file_bytes].concat();
    file_bytes.extend_from_slice(marker);
    let source = alice.home.path().join("report.bin");
    std::fs::write(&source, &file_bytes).unwrap();
    let sent = alice.ok(&["send-file", &room, source.to_str().unwrap()]).await;
    assert_eq!(sent["encrypted"], true);
    let event_id = sent["event_id"].as_str().unwrap();
    let target = bob.home.path().join("downloaded.bin");
    let got = bob.ok(&["download", event_id, "-o", target.to_str().unwrap()]).await;
    assert_eq!(got["encrypted"], true);
    assert_eq!(std::fs::read(&target).unwrap(), file_bytes);

    // A device deleted mid-conversation gets no further keys: the room key rotates.
    let bob_phone = bob.login_again(&server).await;
    let phone_device = bob_phone.ok(&["whoami"]).await["device_id"].as_str().unwrap().to_owned();
    alice.ok(&["send", &room, "to both of bob's devices"]).await;
    let on_phone = bob_phone.history(&room).await;
    let before = message(&on_phone, "to both of bob's devices");
    bob.ok(&["devices", "delete", &phone_device]).await;
    assert!(bob_phone.fails(&["whoami"]).await.contains("M_UNKNOWN_TOKEN"));
    alice.ok(&["send", &room, "after the phone was deleted"]).await;
    let seen = bob.history(&room).await;
    let after = message(&seen, "after the phone was deleted");
    assert_ne!(before["session_id"], after["session_id"], "the room key rotated when a device went away");
    assert_eq!(message(&seen, "to both of bob's devices")["session_id"], before["session_id"]);

    // Neither the server's database nor its media store holds a plaintext message or file.
    let dump = server.database_dump().await;
    for secret in ["hello bob", "hi alice, from stdin", "welcome carol", "just between us", "after the phone"] {
        assert!(!dump.contains(secret), "{secret:?} is in the server's database");
    }
    assert!(dump.contains("m.megolm.v1.aes-sha2"), "the dump is the real database");
    for (path, bytes) in all_files(&server.config.data_dir) {
        assert!(!contains(&bytes, marker), "{} holds the file's plaintext", path.display());
        assert!(!contains(&bytes, b"hello bob"), "{} holds a message's plaintext", path.display());
    }
    // Nor do the clients' local stores.
    for person in [&alice, &bob, &carol] {
        for (path, bytes) in all_files(person.home.path()) {
            if path.ends_with("report.bin") || path.ends_with("downloaded.bin") {
                continue;
            }
            assert!(!contains(&bytes, b"hello bob"), "{} holds a message's plaintext", path.display());
            assert!(!contains(&bytes, PASSWORD.as_bytes()), "{} holds the password", path.display());
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_profiles_and_errors() {
    let mut server = TestServer::start(TestBackend::Sqlite).await;
    let dave = Person::register(&server, "dave", "file").await;
    let me = dave.ok(&["whoami"]).await;
    assert_eq!(me["user_id"], dave.user_id.as_str());
    assert!(me["secret_store"].as_str().unwrap().contains("passphrase-encrypted file"));

    // A second profile side by side, chosen with --profile or --user.
    let out = dave.ok(&["--profile", "work", "register", &server.base_url, "dave-work"]).await;
    let work_user = out["user_id"].as_str().unwrap().to_owned();
    let accounts = dave.ok(&["accounts"]).await;
    assert_eq!(accounts.as_array().unwrap().len(), 2);
    assert_eq!(dave.ok(&["--profile", "work", "whoami"]).await["user_id"], work_user.as_str());
    assert_eq!(dave.ok(&["--user", &work_user, "whoami"]).await["user_id"], work_user.as_str());
    assert_eq!(dave.ok(&["whoami"]).await["user_id"], dave.user_id.as_str(), "`default` wins");

    // Profile, rooms, directory.
    dave.ok(&["profile", "set", "--name", "Dave D."]).await;
    assert_eq!(dave.ok(&["profile", "get"]).await["displayname"], "Dave D.");
    let lobby = dave.ok(&["rooms", "create", "Lobby", "--public", "--alias", "lobby", "--unencrypted"]).await;
    let lobby_id = lobby["room_id"].as_str().unwrap().to_owned();
    let alias = format!("#lobby:{}", server.config.server_name);
    dave.ok(&["--profile", "work", "join", &alias]).await;
    let directory = dave.ok(&["--profile", "work", "directory", "lob"]).await;
    assert_eq!(directory[0]["room_id"], lobby_id.as_str());
    assert_eq!(directory[0]["members"], 2);
    let rooms = dave.ok(&["rooms", "list"]).await;
    assert_eq!(rooms[0]["name"], "Lobby");
    assert_eq!(rooms[0]["members"], 2);
    assert_eq!(rooms[0]["encrypted"], false);
    dave.ok(&["rooms", "topic", "Lobby", "Say hi"]).await;
    assert_eq!(dave.ok(&["rooms", "topic", &lobby_id]).await["topic"], "Say hi");
    dave.ok(&["send", "Lobby", "plain hello"]).await;
    let seen = dave.ok(&["--profile", "work", "history", &alias]).await;
    assert_eq!(message(seen.as_array().unwrap(), "plain hello")["encrypted"], false);
    dave.ok(&["kick", &lobby_id, &work_user, "--reason", "testing"]).await;
    let members = dave.ok(&["members", &lobby_id]).await;
    assert!(
        members.as_array().unwrap().iter().any(|m| m["user_id"] == work_user.as_str() && m["membership"] == "leave")
    );
    dave.ok(&["ban", &lobby_id, &work_user]).await;
    assert!(dave.fails(&["--profile", "work", "join", &lobby_id]).await.contains("M_FORBIDDEN"));
    dave.ok(&["unban", &lobby_id, &work_user]).await;
    dave.ok(&["--profile", "work", "join", &lobby_id]).await;

    // `who` lists users sharing a room who are online (both profiles synced just now).
    let who = dave.ok(&["who"]).await;
    assert!(who.as_array().unwrap().iter().any(|p| p["user_id"] == work_user.as_str()), "{who:#}");

    // Devices.
    let devices = dave.ok(&["devices", "list"]).await;
    assert_eq!(devices.as_array().unwrap().len(), 1);
    assert_eq!(devices[0]["current"], true);
    let device_id = devices[0]["device_id"].as_str().unwrap().to_owned();
    dave.ok(&["devices", "rename", &device_id, "laptop"]).await;
    assert_eq!(dave.ok(&["devices", "list"]).await[0]["display_name"], "laptop");

    // Cross-signing: once dave publishes keys, others see his device signed by him; replacing
    // the keys needs the password (given through MYELIN_PASSWORD).
    let before = dave.ok(&["--profile", "work", "devices", "list", &dave.user_id]).await;
    assert_eq!(before["devices"][0]["cross_signed"], false);
    assert!(before["identity"].is_null());
    let published = dave.ok(&["keys", "cross-signing"]).await;
    assert_eq!(published["signed_device"], device_id.as_str());
    let after = dave.ok(&["--profile", "work", "devices", "list", &dave.user_id]).await;
    assert_eq!(after["devices"][0]["cross_signed"], true, "{after:#}");
    assert_eq!(after["devices"][0]["verified"], false, "signed by an owner nobody verified");
    assert_eq!(after["identity"]["master_key"], published["master_key"], "pinned when first seen");
    assert!(after["identity"]["changed_from"].is_null());
    let replaced = dave.ok(&["keys", "cross-signing"]).await;
    assert_ne!(replaced["master_key"], published["master_key"]);
    // The other profile notices that the identity it pinned was replaced.
    let changed = dave.run(&["--profile", "work", "devices", "list", &dave.user_id], None).await;
    assert!(String::from_utf8_lossy(&changed.stderr).contains("identity (master key) changed"));
    let changed: Value = serde_json::from_slice(&changed.stdout).unwrap();
    assert_eq!(changed["identity"]["master_key"], replaced["master_key"]);
    assert_eq!(changed["identity"]["changed_from"], published["master_key"]);

    // Errors: one line, non-zero exit.
    assert!(dave.fails(&["send", "!nosuchroom:nowhere", "x"]).await.contains("M_"));
    assert!(dave.fails(&["--profile", "nobody", "whoami"]).await.contains("no account is logged in under profile"));
    assert!(dave.fails(&["register", &server.base_url, "dave"]).await.contains("logged in as"));
    assert!(dave.fails(&["invite", &lobby_id, "not-a-user"]).await.contains("not a user ID"));

    // Logout removes the profile and its secrets; the token is dead.
    dave.ok(&["--profile", "work", "logout"]).await;
    assert_eq!(dave.ok(&["accounts"]).await.as_array().unwrap().len(), 1);
    assert!(!dave.home.path().join("profiles/work").exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_keys_export_and_import_into_a_new_device() {
    let mut server = TestServer::start(TestBackend::Sqlite).await;
    let erin = Person::register(&server, "erin", "file").await;
    let frank = Person::register(&server, "frank", "file").await;
    let room =
        erin.ok(&["rooms", "create", "Keys", "--invite", &frank.user_id]).await["room_id"].as_str().unwrap().to_owned();
    frank.ok(&["join", &room]).await;
    erin.ok(&["send", &room, "before the new device"]).await;
    assert_eq!(bodies(&frank.history(&room).await), ["before the new device"]);

    // Frank's new device cannot read old messages until he imports his exported keys.
    let export = frank.home.path().join("keys.txt");
    let out = frank.ok(&["keys", "export", export.to_str().unwrap(), "--passphrase", "export pass"]).await;
    assert!(out["exported"].as_u64().unwrap() >= 1);
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(text.starts_with("-----BEGIN MEGOLM SESSION DATA-----"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&export).unwrap().permissions().mode() & 0o777, 0o600);
    let tablet = frank.login_again(&server).await;
    let unreadable = tablet.history(&room).await;
    let encrypted: Vec<&Value> = unreadable.iter().filter(|m| m["encrypted"] == true).collect();
    assert!(!encrypted.is_empty() && encrypted.iter().all(|m| m["error"].is_string()), "{unreadable:#?}");
    let wrong = tablet.fails(&["keys", "import", export.to_str().unwrap(), "--passphrase", "nope"]).await;
    assert!(wrong.contains("passphrase"), "{wrong}");
    let imported = tablet.ok(&["keys", "import", export.to_str().unwrap(), "--passphrase", "export pass"]).await;
    assert!(imported["imported"].as_u64().unwrap() >= 1);
    assert_eq!(bodies(&tablet.history(&room).await), ["before the new device"]);

    // `chat`: typed lines are sent to the room, slash commands work, /quit ends it.
    let chat = tablet.run(&["chat", &room], Some("typed in chat\n/list\n/nonsense\n/quit\n")).await;
    let printed = String::from_utf8_lossy(&chat.stdout);
    assert!(chat.status.success(), "{}", String::from_utf8_lossy(&chat.stderr));
    assert!(printed.contains("Keys"), "/list printed the room: {printed}");
    assert!(printed.contains("unknown command /nonsense"), "{printed}");
    assert_eq!(bodies(&erin.history(&room).await).last().unwrap(), "typed in chat");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_verify_each_other_with_emoji() {
    let mut server = TestServer::start(TestBackend::Sqlite).await;
    let gina = Person::register(&server, "gina", "file").await;
    let hank = Person::register(&server, "hank", "file").await;
    for person in [&gina, &hank] {
        person.ok(&["keys", "cross-signing"]).await;
    }
    // Both sides run at once: hank answers, gina asks.
    let (answered, asked) = tokio::join!(hank.run(&["verify", "--incoming", "--yes"], None), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        gina.run(&["verify", &hank.user_id, "--yes"], None).await
    });
    for out in [&answered, &asked] {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let answered: Value = serde_json::from_slice(&answered.stdout).unwrap();
    let asked: Value = serde_json::from_slice(&asked.stdout).unwrap();
    assert_eq!(answered["emoji"], asked["emoji"], "both screens show the same emoji");
    assert_eq!(answered["decimals"], asked["decimals"]);
    assert_eq!(asked["emoji"].as_array().unwrap().len(), 7);
    assert_eq!(asked["user_id"], hank.user_id.as_str());
    assert_eq!(answered["user_id"], gina.user_id.as_str());
    // Each vouched for its device key and its master key.
    for side in [&answered, &asked] {
        assert_eq!(side["verified_keys"].as_array().unwrap().len(), 2, "{side:#}");
    }
    let seen = gina.ok(&["devices", "list", &hank.user_id]).await;
    assert_eq!(seen["identity"]["verified"], true, "{seen:#}");
    assert_eq!(seen["devices"][0]["verified"], true);
    // hank's new identity is not the one gina verified: she is told, and must verify again.
    let new_master = hank.ok(&["keys", "cross-signing"]).await["master_key"].clone();
    let seen = gina.ok(&["devices", "list", &hank.user_id]).await;
    assert_eq!(seen["identity"]["master_key"], new_master);
    assert_eq!(seen["identity"]["verified"], false);
    assert!(seen["identity"]["changed_from"].is_string(), "{seen:#}");
    server.stop().await;
}

/// Sets a room's `m.room.encryption` content, as a room admin on another client would.
async fn set_encryption(server: &TestServer, token: &str, room: &str, content: Value) {
    let response = reqwest::Client::new()
        .put(format!("{}/_matrix/client/v3/rooms/{room}/state/m.room.encryption/", server.base_url))
        .bearer_auth(token)
        .json(&content)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_keys_rotate_as_the_room_says() {
    let mut server = TestServer::start(TestBackend::Sqlite).await;
    let ivan = Person::register(&server, "ivan", "file").await;
    let judy = Person::register(&server, "judy", "file").await;
    let room = ivan.ok(&["rooms", "create", "Rotating", "--invite", &judy.user_id]).await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    judy.ok(&["join", &room]).await;
    let token = ivan.raw_token(&server).await;
    let megolm = "m.megolm.v1.aes-sha2";

    // A new session every two messages.
    set_encryption(&server, &token, &room, serde_json::json!({ "algorithm": megolm, "rotation_period_msgs": 2 })).await;
    for n in 1..=5 {
        ivan.ok(&["send", &room, &format!("counted {n}")]).await;
    }
    let seen = judy.history(&room).await;
    let session = |body: &str| message(&seen, body)["session_id"].as_str().unwrap().to_owned();
    assert_eq!(session("counted 1"), session("counted 2"));
    assert_ne!(session("counted 2"), session("counted 3"));
    assert_eq!(session("counted 3"), session("counted 4"));
    assert_ne!(session("counted 4"), session("counted 5"));
    assert_ne!(session("counted 1"), session("counted 5"));

    // A new session once the period is over.
    let period = serde_json::json!({ "algorithm": megolm, "rotation_period_ms": 2000, "rotation_period_msgs": 100 });
    set_encryption(&server, &token, &room, period).await;
    ivan.ok(&["send", &room, "timed 1"]).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ivan.ok(&["send", &room, "timed 2"]).await;
    let seen = judy.history(&room).await;
    let session = |body: &str| message(&seen, body)["session_id"].as_str().unwrap().to_owned();
    assert_ne!(session("timed 1"), session("timed 2"));
    assert!(seen.iter().all(|m| m["error"].is_null()), "judy reads every message: {seen:#?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_late_keys_and_missed_events() {
    use tokio::io::AsyncBufReadExt;

    let mut server = TestServer::start(TestBackend::Sqlite).await;
    let kate = Person::register(&server, "kate", "file").await;
    let liam = Person::register(&server, "liam", "file").await;
    let room = kate.ok(&["rooms", "create", "Late"]).await["room_id"].as_str().unwrap().to_owned();
    assert!(liam.run(&["listen"], None).await.status.success());

    // Sent before liam was invited: its key went to nobody but kate.
    kate.ok(&["send", &room, "before liam"]).await;
    kate.ok(&["invite", &room, &liam.user_id]).await;
    let mut follow = liam.spawn(&["listen", "--follow"]);
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    liam.ok(&["join", &room]).await;
    let mut next_with = async |body_or_waiting: &dyn Fn(&Value) -> bool| loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("listen printed in time")
            .unwrap()
            .expect("listen still runs");
        let message: Value = serde_json::from_str(&line).unwrap();
        if body_or_waiting(&message) {
            return message;
        }
    };
    let waiting = next_with(&|m| m["waiting_for_key"] == true).await;
    assert_eq!(waiting["sender"], kate.user_id.as_str());

    // The key comes by file, imported by another process: the running listen prints the message.
    let keys = kate.home.path().join("keys.txt");
    kate.ok(&["keys", "export", keys.to_str().unwrap(), "--passphrase", "p4ss"]).await;
    liam.ok(&["keys", "import", keys.to_str().unwrap(), "--passphrase", "p4ss"]).await;
    let decrypted = next_with(&|m| m["content"]["body"].is_string()).await;
    assert_eq!(decrypted["content"]["body"], "before liam");
    assert_eq!(decrypted["event_id"], waiting["event_id"]);
    follow.kill().await.unwrap();

    // More messages than one sync's timeline holds, while liam is away: listen shows them all.
    let typed: String = (1..=70).map(|n| format!("busy {n}\n")).collect();
    let chatted = kate.run(&["chat", &room], Some(&typed)).await;
    assert!(chatted.status.success(), "{}", String::from_utf8_lossy(&chatted.stderr));
    let listened = liam.run(&["listen"], None).await;
    assert!(listened.status.success(), "{}", String::from_utf8_lossy(&listened.stderr));
    let printed: Vec<Value> =
        String::from_utf8_lossy(&listened.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let expected: Vec<String> = (1..=70).map(|n| format!("busy {n}")).collect();
    assert_eq!(bodies(&printed), expected);
    assert!(printed.iter().all(|m| m["type"] != "org.myelin.gap"), "nothing is missing");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_borrowed_ciphertexts_are_rejected() {
    let mut server = TestServer::start(TestBackend::Sqlite).await;
    let mia = Person::register(&server, "mia", "file").await;
    let ned = Person::register(&server, "ned", "file").await;
    let room =
        mia.ok(&["rooms", "create", "Ledger", "--invite", &ned.user_id]).await["room_id"].as_str().unwrap().to_owned();
    ned.ok(&["join", &room]).await;
    let event_id = mia.ok(&["send", &room, "pay ned 5"]).await["event_id"].as_str().unwrap().to_owned();

    // The same ciphertext sent again, once by mia's account (a replay) and once by ned's (a
    // message passed off as his with mia's key), straight through the API.
    let http = reqwest::Client::new();
    let (mia_token, ned_token) = (mia.raw_token(&server).await, ned.raw_token(&server).await);
    let original: Value = http
        .get(format!("{}/_matrix/client/v3/rooms/{room}/event/{event_id}", server.base_url))
        .bearer_auth(&ned_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (token, txn) in [(&mia_token, "replay"), (&ned_token, "borrowed")] {
        let response = http
            .put(format!("{}/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/{txn}", server.base_url))
            .bearer_auth(token)
            .json(&original["content"])
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
    let seen = ned.history(&room).await;
    let encrypted: Vec<&Value> =
        seen.iter().filter(|m| m["type"] == "m.room.encrypted" || m["encrypted"] == true).collect();
    assert_eq!(bodies(&seen), ["pay ned 5"], "only the original decrypts: {seen:#?}");
    let errors: Vec<&str> = encrypted.iter().filter_map(|m| m["error"].as_str()).collect();
    assert_eq!(errors.len(), 2, "{encrypted:#?}");
    assert!(errors.iter().any(|e| e.contains("replay")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("another user")), "{errors:?}");
    assert!(encrypted.iter().all(|m| m["waiting_for_key"] != true), "rejected, not waiting: {encrypted:#?}");
    server.stop().await;
}

/// Polls `person`'s decrypted history until `body` shows up readable (a minute at most):
/// across servers, messages and their keys arrive through federation, a moment later.
async fn wait_for_message(person: &Person, room: &str, body: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let history = person.history(room).await;
        if let Some(found) = history.iter().find(|m| m["content"]["body"] == body) {
            return found.clone();
        }
        assert!(std::time::Instant::now() < deadline, "{body:?} never became readable: {history:#?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Users of two federated servers: the invite, the join, Megolm keys over federated to-device
/// messages, device keys and one-time keys from the other server, and an encrypted file
/// fetched from the other server's media repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_two_servers_chat_end_to_end_encrypted() {
    let ca = myelin_federation_tests::TestCa::new();
    let a = myelin_federation_tests::federated_server(&ca, TestBackend::Sqlite).await;
    let b = myelin_federation_tests::federated_server(&ca, TestBackend::Postgres).await;
    let alice = Person::register(&a, "alice", "file").await;
    let bob = Person::register(&b, "bob", "file").await;

    let created = alice.ok(&["rooms", "create", "Across", "--invite", &bob.user_id]).await;
    assert_eq!(created["encrypted"], true);
    let room = created["room_id"].as_str().unwrap().to_owned();
    bob.ok(&["join", &room]).await;

    alice.ok(&["send", &room, "hello from A"]).await;
    let got = wait_for_message(&bob, &room, "hello from A").await;
    assert_eq!((&got["encrypted"], &got["sender"]), (&Value::Bool(true), &Value::String(alice.user_id.clone())));
    bob.ok(&["send", &room, "hello from B"]).await;
    let got = wait_for_message(&alice, &room, "hello from B").await;
    assert_eq!(got["encrypted"], true);

    let file_bytes: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let source = alice.home.path().join("across.bin");
    std::fs::write(&source, &file_bytes).unwrap();
    let sent = alice.ok(&["send-file", &room, source.to_str().unwrap()]).await;
    assert_eq!(sent["encrypted"], true);
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    wait_for_message(&bob, &room, "across.bin").await;
    let target = bob.home.path().join("fetched.bin");
    let got = bob.ok(&["download", &event_id, "-o", target.to_str().unwrap()]).await;
    assert_eq!(got["encrypted"], true);
    assert_eq!(std::fs::read(&target).unwrap(), file_bytes);

    // Neither server's database holds a plaintext message.
    for server in [&a, &b] {
        let dump = server.database_dump().await;
        assert!(!dump.contains("hello from A") && !dump.contains("hello from B"));
        assert!(dump.contains("m.megolm.v1.aes-sha2"), "the dump is the real database");
    }
}
