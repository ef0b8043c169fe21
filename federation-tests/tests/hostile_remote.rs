//! A hostile server in a room, played by the test: a TLS listener that serves its signing key
//! and answers `get_missing_events`, `/state`, `/event` and `event_auth` with whatever the test
//! sets, and that sends transactions signed with its key to a real server.
//!
//! - `prev_events` that point at events nobody has, at the event being received, or at each
//!   other through the events served as "missing": the real server's gap filling must stay
//!   bounded (one `get_missing_events`, a few `/state` fetches), refuse the event, and keep
//!   serving. (With event IDs that are reference hashes, a real cycle cannot be built; what a
//!   remote can do is *claim* IDs, and serve events that claim each other.)
//! - Random membership, power level, join rule and message events from the remote's users (and
//!   events claiming a user of the real server as sender), citing the room's current state or a
//!   stale one: the real server never lets a non-member's message in, and its view of the
//!   room stays the one the accepted events make up.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use myelin_federation_tests::{TestCa, User, encode, federated_server, federation_url, https_client};
use myelin_homeserver::crypto::SigningKey;
use myelin_homeserver::federation::authorization::XMatrix;
use myelin_homeserver::rooms::pdu::{Pdu, PduTemplate, Placement};
use myelin_homeserver::test_support::{TestBackend, TestServer, auth_events_from};
use poem::listener::{Acceptor, Listener, RustlsCertificate, RustlsConfig, TcpListener};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use ruma_common::room_version_rules::RoomVersionRules;
use ruma_common::{CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, UserId};
use ruma_events::TimelineEventType;
use serde_json::{Value, json};

/// The fake remote server.
struct Remote {
    name: String,
    key: SigningKey,
    /// Answers by path prefix (after `/_matrix/federation/v1`); `/send/` is always `{}`.
    answers: Mutex<Vec<(String, Value)>>,
    /// The requests it got: method and path.
    requests: Mutex<Vec<String>>,
    _dir: tempfile::TempDir,
}

impl Remote {
    /// Starts a remote with a certificate from `ca` on a loopback port, `localhost:<port>`.
    async fn start(ca: &TestCa) -> Arc<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let (cert, key) = ca.leaf(&format!("remote-{}", uuid::Uuid::new_v4().simple()));
        let tls = RustlsConfig::new().fallback(
            RustlsCertificate::new().cert(std::fs::read(cert).expect("cert")).key(std::fs::read(key).expect("key")),
        );
        let acceptor = TcpListener::bind("127.0.0.1:0").rustls(tls).into_acceptor().await.expect("TLS listener");
        let port = acceptor.local_addr()[0].as_socket_addr().expect("a socket").port();
        let dir = tempfile::tempdir().expect("temporary directory");
        let signing = SigningKey::load_or_generate(&dir.path().join("signing.key")).expect("a signing key");
        let remote = Arc::new(Remote {
            name: format!("localhost:{port}"),
            key: signing,
            answers: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            _dir: dir,
        });
        let serving = remote.clone();
        let endpoint = poem::endpoint::make(move |mut req: poem::Request| {
            let remote = serving.clone();
            async move {
                let body = req.take_body().into_bytes().await.unwrap_or_default();
                remote.answer_request(&req, &body)
            }
        });
        tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(endpoint));
        remote
    }

    fn answer_request(&self, req: &poem::Request, body: &[u8]) -> poem::Response {
        let path = req.uri().path_and_query().map_or("", |p| p.as_str()).to_owned();
        self.requests.lock().expect("requests").push(format!("{} {path}", req.method()));
        let body = if path == "/_matrix/key/v2/server" {
            myelin_homeserver::federation::keys::own_key_document(&self.name, &self.key, &BTreeMap::new()).ok()
        } else if path.starts_with("/_matrix/federation/v1/send/") {
            Some(json!({ "pdus": {} }))
        } else if path.starts_with("/_matrix/federation/v2/invite/") {
            // Countersigned, with an `event_id` field added, as older servers send it.
            let invite: Value = serde_json::from_slice(body).expect("an invite");
            let mut event: ruma_common::CanonicalJsonObject =
                serde_json::from_value(invite["event"].clone()).expect("an event");
            let rules = RoomVersionRules::V12;
            ruma_signatures::hash_and_sign_event(&self.name, self.key.ruma_key_pair(), &mut event, &rules.redaction)
                .expect("signed");
            event.insert("event_id".to_owned(), CanonicalJsonValue::String(claimed_id('I').to_string()));
            Some(json!({ "event": event }))
        } else {
            let path = path.trim_start_matches("/_matrix/federation/v1");
            let answers = self.answers.lock().expect("answers");
            answers.iter().find(|(prefix, _)| path.starts_with(prefix.as_str())).map(|(_, answer)| answer.clone())
        };
        match body {
            Some(body) => poem::Response::builder().content_type("application/json").body(body.to_string()),
            None => poem::Response::builder()
                .status(poem::http::StatusCode::NOT_FOUND)
                .content_type("application/json")
                .body(json!({ "errcode": "M_NOT_FOUND", "error": "not here" }).to_string()),
        }
    }

    fn answer(&self, prefix: &str, answer: Value) {
        self.answers.lock().expect("answers").push((prefix.to_owned(), answer));
    }

    /// How many requests it got whose path contains `part`.
    fn requests(&self, part: &str) -> usize {
        self.requests.lock().expect("requests").iter().filter(|r| r.contains(part)).count()
    }

    fn user(&self, name: &str) -> String {
        format!("@{name}:{}", self.name)
    }

    /// An event signed by this server (whatever its sender).
    fn event(
        &self,
        room: &Room,
        sender: &str,
        kind: TimelineEventType,
        state_key: Option<&str>,
        content: Value,
        prev_events: Vec<OwnedEventId>,
        auth_events: Vec<OwnedEventId>,
        depth: i64,
    ) -> Pdu {
        let rules = RoomVersionRules::V12;
        let placement = Placement { room_id: Some(&room.id), rules: &rules, prev_events, auth_events, depth };
        let template = PduTemplate { kind, state_key: state_key.map(str::to_owned), content };
        let sender = UserId::parse(sender).expect("user ID");
        template.build(&sender, placement, MilliSecondsSinceUnixEpoch::now(), &self.key).expect("an event")
    }

    /// Sends `pdus` to `server` in one transaction; its answer per event.
    async fn send(&self, server: &TestServer, https: &reqwest::Client, pdus: &[&Pdu]) -> Value {
        let path = format!("/_matrix/federation/v1/send/{}", uuid::Uuid::new_v4().simple());
        let body = json!({
            "origin": self.name,
            "origin_server_ts": 1,
            "pdus": pdus.iter().map(|p| serde_json::to_value(&p.json).expect("JSON")).collect::<Vec<_>>(),
        });
        let (status, answer) = self.call(server, https, "PUT", &path, Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        answer["pdus"].clone()
    }

    /// A signed request to `server`'s federation API: status and JSON answer.
    async fn call(
        &self,
        server: &TestServer,
        https: &reqwest::Client,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let content = body.as_ref().map(|b| CanonicalJsonValue::try_from(b.clone()).expect("canonical JSON"));
        let header = XMatrix::sign(&self.key, &self.name, &server.config.server_name, method, path, content.as_ref())
            .expect("signed");
        let mut request = https
            .request(method.parse().expect("method"), format!("{}{path}", federation_url(server)))
            .header("Authorization", header.to_header());
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.expect("an answer");
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap_or(Value::Null))
    }
}

/// State as `(type, state_key) → event ID`.
type State = BTreeMap<(String, String), OwnedEventId>;

/// A room of the real server as the remote knows it: what the real server accepted.
struct Room {
    id: ruma_common::OwnedRoomId,
    state: State,
    contents: HashMap<OwnedEventId, Value>,
    /// The state after each accepted event: what stale citations pick from.
    history: Vec<State>,
    last: OwnedEventId,
    depth: i64,
}

impl Room {
    /// `room_id` as `alice` (a member) sees it.
    async fn read(alice: &User, room_id: &str) -> Self {
        let events = alice.get(&format!("/rooms/{}/state", encode(room_id))).await;
        let mut state = State::new();
        let mut contents = HashMap::new();
        for event in events.as_array().expect("state events") {
            let id = EventId::parse(event["event_id"].as_str().expect("event ID")).expect("event ID");
            let key = (
                event["type"].as_str().unwrap_or_default().to_owned(),
                event["state_key"].as_str().unwrap_or_default().to_owned(),
            );
            contents.insert(id.clone(), event["content"].clone());
            state.insert(key, id);
        }
        let latest = alice.get(&format!("/rooms/{}/messages?dir=b&limit=1", encode(room_id))).await;
        let last = EventId::parse(latest["chunk"][0]["event_id"].as_str().expect("an event")).expect("event ID");
        Room {
            id: RoomId::parse(room_id).expect("room ID"),
            history: vec![state.clone()],
            state,
            contents,
            last,
            depth: 100,
        }
    }

    fn id_of(&self, kind: &str, key: &str) -> Option<OwnedEventId> {
        self.state.get(&(kind.to_owned(), key.to_owned())).cloned()
    }

    fn membership(&self, state: &State, user: &str) -> String {
        state
            .get(&("m.room.member".to_owned(), user.to_owned()))
            .and_then(|id| self.contents.get(id)?["membership"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "leave".to_owned())
    }

    /// Records an event the real server accepted.
    fn accepted(&mut self, pdu: &Pdu) {
        if let Some(key) = &pdu.state_key {
            self.state.insert((pdu.kind.to_string(), key.clone()), pdu.event_id.clone());
            self.contents.insert(pdu.event_id.clone(), pdu.content_value());
        }
        self.history.push(self.state.clone());
        self.last = pdu.event_id.clone();
    }
}

/// A server, a public room of `@alice` on it, and a remote whose `@mallory` joined it.
async fn setup(ca: &TestCa) -> (TestServer, User, Arc<Remote>, Room, reqwest::Client) {
    let a = federated_server(ca, TestBackend::Sqlite).await;
    let alice = User::register(&a, "alice").await;
    let created = alice.post("/createRoom", json!({ "preset": "public_chat" })).await;
    let room_id = created["room_id"].as_str().expect("room ID").to_owned();
    let remote = Remote::start(ca).await;
    let https = https_client(ca);
    let mut room = Room::read(&alice, &room_id).await;
    let mallory = remote.user("mallory");
    let content = json!({ "membership": "join" });
    let kind = TimelineEventType::RoomMember;
    let auth =
        auth_events_from(&room.state, &kind, &mallory, Some(&mallory), &content, &RoomVersionRules::V12.authorization);
    room.depth += 1;
    let join = remote.event(&room, &mallory, kind, Some(&mallory), content, vec![room.last.clone()], auth, room.depth);
    let answer = remote.send(&a, &https, &[&join]).await;
    assert_eq!(answer[join.event_id.as_str()], json!({}), "the remote's join: {answer}");
    room.accepted(&join);
    (a, alice, remote, room, https)
}

/// An event ID nobody has (valid in form).
fn claimed_id(tag: char) -> OwnedEventId {
    EventId::parse(format!("${}", tag.to_string().repeat(43))).expect("event ID")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prev_events_pointing_nowhere_or_at_each_other_are_bounded_and_refused() {
    let ca = TestCa::new();
    let (a, alice, remote, mut room, https) = setup(&ca).await;
    let mallory = remote.user("mallory");
    let (x, y) = (claimed_id('X'), claimed_id('Y'));
    let power = room.id_of("m.room.power_levels", "").expect("power levels");
    let joined = room.id_of("m.room.member", &mallory).expect("mallory's join");
    let auth = vec![power, joined.clone()];
    let mut message = |body: &str, prev: Vec<OwnedEventId>| {
        room.depth += 1;
        let content = json!({ "msgtype": "m.text", "body": body });
        remote.event(&room, &mallory, TimelineEventType::RoomMessage, None, content, prev, auth.clone(), room.depth)
    };
    // The event to receive follows X, which nobody has. As "the events between", the remote
    // serves events that follow the received event itself, X, another ID nobody has, and each
    // other, in a loop of claims: M → X ⇢ {P → M, Q → X, R1 → Y, R2 → R1 + X, R3 → R2 + M}.
    let m = message("follows nothing that exists", vec![x.clone()]);
    let p = message("claims to be before M, follows M", vec![m.event_id.clone()]);
    let q = message("follows X", vec![x.clone()]);
    let r1 = message("follows Y", vec![y.clone()]);
    let r2 = message("follows R1 and X", vec![r1.event_id.clone(), x.clone()]);
    let r3 = message("follows R2 and M", vec![r2.event_id.clone(), m.event_id.clone()]);
    let value = |pdu: &Pdu| serde_json::to_value(&pdu.json).expect("JSON");
    let loop_of_claims: Vec<Value> = [&p, &q, &r1, &r2, &r3, &m].iter().map(|e| value(e)).collect();
    remote.answer("/get_missing_events/", json!({ "events": vec![loop_of_claims; 20].concat() }));
    remote.answer("/state/", json!({ "pdus": [value(&p), value(&r3)], "auth_chain": [value(&m), value(&q)] }));
    remote.answer("/event_auth/", json!({ "auth_chain": [value(&m)] }));
    // Asked for X, it serves P: not X.
    remote.answer("/event/", json!({ "origin": remote.name, "origin_server_ts": 1, "pdus": [value(&p)] }));

    let answer = tokio::time::timeout(Duration::from_secs(60), remote.send(&a, &https, &[&m]))
        .await
        .expect("the transaction is answered in bounded time");
    assert!(answer[m.event_id.as_str()]["error"].is_string(), "{answer}");
    assert_eq!(remote.requests("/get_missing_events/"), 1);
    // The state at X is asked for once; asked for X itself, the remote does not give it.
    assert_eq!(remote.requests("/state/"), 1, "{:?}", remote.requests);
    assert_eq!(remote.requests("/event/"), 1, "{:?}", remote.requests);

    // Twenty prev events that exist only at the remote: at most five have their state fetched,
    // so the event is refused, after a bounded number of requests.
    let hidden: Vec<Pdu> = (0..20).map(|i| message(&format!("hidden {i}"), vec![joined.clone()])).collect();
    let wide = message("follows twenty hidden events", hidden.iter().map(|h| h.event_id.clone()).collect());
    {
        let mut answers = remote.answers.lock().expect("answers");
        answers.clear();
        answers.push(("/get_missing_events/".to_owned(), json!({ "events": [] })));
        answers.push(("/state/".to_owned(), json!({ "pdus": [], "auth_chain": [] })));
        for hidden in &hidden {
            let path = format!("/event/{}", encode(hidden.event_id.as_str()));
            answers.push((path, json!({ "origin": remote.name, "origin_server_ts": 1, "pdus": [value(hidden)] })));
        }
    }
    remote.requests.lock().expect("requests").clear();
    let answer = tokio::time::timeout(Duration::from_secs(60), remote.send(&a, &https, &[&wide]))
        .await
        .expect("the transaction is answered in bounded time");
    assert!(answer[wide.event_id.as_str()]["error"].is_string(), "{answer}");
    assert_eq!(remote.requests("/get_missing_events/"), 1);
    assert_eq!(remote.requests("/state/"), 5, "{:?}", remote.requests);
    assert_eq!(remote.requests("/event/"), 5, "{:?}", remote.requests);

    // The server still serves, and takes a well-formed event of the remote's, answering under
    // its real ID even when it comes with another in an `event_id` field (room versions 3+
    // derive the ID; a field is only a claim).
    let mut good = message("a good one", vec![joined.clone()]);
    good.json.insert("event_id".to_owned(), CanonicalJsonValue::String(x.to_string()));
    let answer = remote.send(&a, &https, &[&good]).await;
    assert_eq!(answer, json!({ good.event_id.as_str(): {} }));
    alice
        .put(
            &format!("/rooms/{}/send/m.room.message/t1", encode(room.id.as_str())),
            json!({ "msgtype": "m.text", "body": "still here" }),
        )
        .await;
    let timeline = alice.get(&format!("/rooms/{}/messages?dir=b&limit=50", encode(room.id.as_str()))).await;
    let bodies: Vec<&str> =
        timeline["chunk"].as_array().expect("chunk").iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, vec!["still here", "a good one"]);
}

/// A room's state names many servers; the events of one we have no key for yet, checked
/// together, make one fetch of its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_events_of_an_unknown_server_make_one_key_fetch() {
    let ca = TestCa::new();
    let (a, _alice, remote, mut room, https) = setup(&ca).await;
    let other = Remote::start(&ca).await;
    let joins: Vec<Value> = (0..40)
        .map(|i| {
            let user = other.user(&format!("u{i}"));
            let content = json!({ "membership": "join" });
            let kind = TimelineEventType::RoomMember;
            let join =
                other.event(&room, &user, kind, Some(&user), content, vec![room.last.clone()], vec![], room.depth);
            serde_json::to_value(&join.json).expect("JSON")
        })
        .collect();
    // The state before an event of mallory's that follows one nobody has: those 40 joins.
    remote.answer("/get_missing_events/", json!({ "events": [] }));
    remote.answer("/state/", json!({ "pdus": joins, "auth_chain": [] }));
    let mallory = remote.user("mallory");
    let auth = vec![
        room.id_of("m.room.power_levels", "").expect("power levels"),
        room.id_of("m.room.member", &mallory).expect("mallory's join"),
    ];
    room.depth += 1;
    let content = json!({ "msgtype": "m.text", "body": "after the unknown" });
    let kind = TimelineEventType::RoomMessage;
    let message = remote.event(&room, &mallory, kind, None, content, vec![claimed_id('Z')], auth, room.depth);
    remote.send(&a, &https, &[&message]).await;
    assert_eq!(remote.requests("/state/"), 1, "{:?}", remote.requests);
    assert_eq!(other.requests("/_matrix/key/v2/server"), 1, "{:?}", other.requests);
}

/// An invite countersigned by the invitee's server comes back with an `event_id` field: the ID
/// is the hash, the field only a claim, and the invite goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_answer_claiming_an_event_id_is_taken_by_its_hash() {
    let ca = TestCa::new();
    let (_a, alice, remote, room, _https) = setup(&ca).await;
    let bob = remote.user("bob");
    let (status, answer) = alice
        .call(
            reqwest::Method::POST,
            &format!("/rooms/{}/invite", encode(room.id.as_str())),
            Some(json!({ "user_id": bob })),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(remote.requests("/v2/invite/"), 1);
    let member = alice.get(&format!("/rooms/{}/state/m.room.member/{}", encode(room.id.as_str()), encode(&bob))).await;
    assert_eq!(member["membership"], "invite", "{member}");
}

/// Asking for the events before thousands of claimed events costs the same as before a few:
/// a walk back starts from the first 100 named events and ignores the rest — here, the one real
/// event, named last. (Named first, it is walked from.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walks_back_from_thousands_of_events_are_bounded() {
    let ca = TestCa::new();
    let (a, _alice, remote, room, https) = setup(&ca).await;
    let room_id = encode(room.id.as_str());
    let claimed = |count: usize| (0..count).map(|i| format!("${i:043}")).collect::<Vec<_>>();
    let real = room.last.to_string();
    let path = format!("/_matrix/federation/v1/get_missing_events/{room_id}");
    for (latest, found) in [([claimed(50_000), vec![real.clone()]].concat(), false), (vec![real.clone()], true)] {
        let body = json!({ "latest_events": latest, "earliest_events": [], "limit": 10 });
        let (status, answer) = remote.call(&a, &https, "POST", &path, Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["events"].as_array().is_some_and(|e| !e.is_empty()), found, "{answer}");
    }
    // Backfill names its events in the query: 250 fill what an HTTP/2 request head may carry.
    for (from, found) in [([claimed(250), vec![real.clone()]].concat(), false), (vec![real.clone()], true)] {
        let query: String = from.iter().map(|id| format!("&v={}", encode(id))).collect();
        let path = format!("/_matrix/federation/v1/backfill/{room_id}?limit=10{query}");
        let (status, answer) = remote.call(&a, &https, "GET", &path, None).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["pdus"].as_array().is_some_and(|e| !e.is_empty()), found, "{answer}");
    }
}

/// What a remote user asks to add to the room.
#[derive(Clone, Debug)]
enum Action {
    Member { sender: usize, target: usize, membership: &'static str },
    Power { sender: usize, levels: Vec<(usize, i64)> },
    JoinRule { sender: usize, rule: &'static str },
    Message { sender: usize },
}

/// The remote's users, and (last) a user of the real server the remote claims to speak for.
const USERS: [&str; 4] = ["mallory", "eve", "trudy", "alice"];

fn action() -> impl Strategy<Value = Action> {
    let who = 0..USERS.len();
    let membership = || proptest::sample::select(vec!["join", "leave", "invite", "ban", "knock"]);
    prop_oneof![
        3 => (who.clone(), who.clone(), membership())
            .prop_map(|(sender, target, membership)| Action::Member { sender, target, membership }),
        3 => (who.clone(), membership())
            .prop_map(|(sender, membership)| Action::Member { sender, target: sender, membership }),
        1 => (who.clone(), proptest::collection::vec((who.clone(), prop_oneof![Just(0i64), Just(50), Just(100)]), 0..3))
            .prop_map(|(sender, levels)| Action::Power { sender, levels }),
        1 => (who.clone(), proptest::sample::select(vec!["public", "invite"]))
            .prop_map(|(sender, rule)| Action::JoinRule { sender, rule }),
        4 => who.prop_map(|sender| Action::Message { sender }),
    ]
}

/// One sequence: a new room where mallory has power 100 and eve 50, the remote's users join,
/// then the actions, each citing the current state or an older one.
async fn run_sequence(
    a: &TestServer,
    alice: &User,
    remote: &Remote,
    https: &reqwest::Client,
    actions: &[(Action, Option<usize>)],
) -> Result<(), TestCaseError> {
    let user = |i: usize| if i == 3 { alice.user_id.clone() } else { remote.user(USERS[i]) };
    let created = alice.post("/createRoom", json!({ "preset": "public_chat" })).await;
    let room_id = created["room_id"].as_str().expect("room ID").to_owned();
    let levels_path = format!("/rooms/{}/state/m.room.power_levels/", encode(&room_id));
    let mut levels = alice.get(&levels_path).await;
    levels["users"][user(0)] = json!(100);
    levels["users"][user(1)] = json!(50);
    alice.put(&levels_path, levels.clone()).await;
    let mut room = Room::read(alice, &room_id).await;
    let joins = (0..3).map(|i| (Action::Member { sender: i, target: i, membership: "join" }, None));
    for (i, (action, stale)) in joins.chain(actions.iter().cloned()).enumerate() {
        let cited = stale.map_or(room.state.clone(), |i| room.history[i % room.history.len()].clone());
        let action = &action;
        let before = room.state.clone();
        let (sender, kind, state_key, content) = match action {
            Action::Member { sender, target, membership } => {
                (*sender, TimelineEventType::RoomMember, Some(user(*target)), json!({ "membership": membership }))
            }
            Action::Power { sender, levels } => {
                let mut content = room.contents[&room.id_of("m.room.power_levels", "").expect("levels")].clone();
                for (u, level) in levels {
                    content["users"][user(*u)] = json!(level);
                }
                (*sender, TimelineEventType::RoomPowerLevels, Some(String::new()), content)
            }
            Action::JoinRule { sender, rule } => {
                (*sender, TimelineEventType::RoomJoinRules, Some(String::new()), json!({ "join_rule": rule }))
            }
            Action::Message { sender } => {
                (*sender, TimelineEventType::RoomMessage, None, json!({ "msgtype": "m.text", "body": "hi" }))
            }
        };
        let sender = user(sender);
        let auth = auth_events_from(
            &cited,
            &kind,
            &sender,
            state_key.as_deref(),
            &content,
            &RoomVersionRules::V12.authorization,
        );
        room.depth += 1;
        let prev = vec![room.last.clone()];
        let pdu = remote.event(&room, &sender, kind, state_key.as_deref(), content, prev, auth, room.depth);
        let answer = remote.send(a, https, &[&pdu]).await;
        let verdict = &answer[pdu.event_id.as_str()];
        let accepted = *verdict == json!({});
        prop_assert!(accepted || verdict["error"].is_string(), "{}", answer);
        prop_assert!(accepted || i >= 3, "the remote's users join: {}", answer);
        if !accepted {
            continue;
        }
        prop_assert_ne!(&sender, &alice.user_id, "an event claiming a user of the real server");
        let was = room.membership(&before, &sender);
        let own = (pdu.kind == TimelineEventType::RoomMember && pdu.state_key.as_deref() == Some(sender.as_str()))
            .then(|| pdu.content_str("membership"))
            .flatten();
        let rule = room
            .id_of("m.room.join_rules", "")
            .and_then(|id| room.contents[&id]["join_rule"].as_str().map(str::to_owned));
        match own.as_deref() {
            Some("join") => prop_assert!(
                was == "join" || was == "invite" || (rule.as_deref() == Some("public") && was != "ban"),
                "{} joined from {} under {:?}",
                sender,
                was,
                rule
            ),
            Some("leave") => {
                prop_assert!(["join", "invite", "knock"].contains(&was.as_str()), "{} left from {}", sender, was)
            }
            _ => prop_assert_eq!(was.as_str(), "join", "{:?} accepted from a {} sender", action, was),
        }
        room.accepted(&pdu);
    }
    // The real server's view is the one the accepted events make up.
    let state = alice.get(&format!("/rooms/{}/state", encode(&room_id))).await;
    for i in 0..3 {
        let seen = state
            .as_array()
            .expect("state")
            .iter()
            .find(|e| e["type"] == "m.room.member" && e["state_key"] == user(i).as_str())
            .and_then(|e| e["content"]["membership"].as_str())
            .unwrap_or("leave")
            .to_owned();
        prop_assert_eq!(seen, room.membership(&room.state, &user(i)), "{}", user(i));
    }
    Ok(())
}

#[test]
fn events_from_a_hostile_server_follow_the_authorization_rules() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let ca = TestCa::new();
    let (a, alice, remote, _, https) = runtime.block_on(setup(&ca));
    // Each case is a new room and a dozen transactions: a few cases, a fixed seed.
    let mut config = Config { cases: 8, failure_persistence: None, ..Config::default() };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0x6d79_656c_696e);
    }
    let mut runner = TestRunner::new(config);
    let strategy = proptest::collection::vec((action(), proptest::option::weighted(0.3, any::<usize>())), 4..20);
    let result = runner.run(&strategy, |actions| runtime.block_on(run_sequence(&a, &alice, &remote, &https, &actions)));
    if let Err(err) = result {
        panic!("{err}");
    }
}
