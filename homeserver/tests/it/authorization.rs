//! Who may do what in a room: every room-scoped client endpoint against every kind of user, as
//! one table of expected answers (the spec's, where it says). Then the access tokens that must
//! stop working (logout, logout/all, device deletion, password change) and the guest accounts
//! that cannot exist.

use futures_util::StreamExt;
use futures_util::future::join_all;
use myelin_homeserver::backend_tests;

use self::Expect::{Allowed, Refused, Sees, Synced};
use self::Op::*;
use crate::support::*;

backend_tests!(room_endpoints_follow_the_matrix, dead_tokens_open_nothing, guest_accounts_cannot_exist);

/// The users the matrix asks about, in the order of its columns. There is no guest column: this
/// server offers no guest accounts (`guest_accounts_cannot_exist`), so no guest token exists.
#[derive(Clone, Copy, Debug)]
enum Subject {
    /// Created the room: power level 100 (unlimited in room version 12).
    Creator,
    /// Joined, at the default power level 0.
    Member,
    /// Never had any membership in the room.
    Outsider,
    /// Invited after everyone else's departures, not joined.
    Invitee,
    /// Joined, then left.
    Leaver,
    /// Joined, then banned.
    Banned,
    /// Joined, left, then forgot the room: "a user will no longer be able to retrieve history"
    /// (`POST /forget`).
    Forgetter,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Creator => "creator",
            Subject::Member => "low-power member",
            Subject::Outsider => "outsider",
            Subject::Invitee => "invitee",
            Subject::Leaver => "leaver",
            Subject::Banned => "banned user",
            Subject::Forgetter => "forgetter",
        }
    }
}

const SUBJECTS: [Subject; 7] = [
    Subject::Creator,
    Subject::Member,
    Subject::Outsider,
    Subject::Invitee,
    Subject::Leaver,
    Subject::Banned,
    Subject::Forgetter,
];

/// What a cell expects.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// 200.
    Allowed,
    /// 200, and of the [`MARKERS`] exactly these appear in the response.
    Sees(&'static [&'static str]),
    /// This status and errcode.
    Refused(u16, &'static str),
    /// In an initial `/sync` (with `include_leave`), the room is in this section (`None`:
    /// nowhere) and shows exactly these markers.
    Synced(Option<&'static str>, &'static [&'static str]),
}

// Strings that mark what a response reveals of the room's history. The room's story, in order:
// created with NAME_BEFORE and everyone but the invitee invited; they join; the creator sends
// EARLY and the member MEMBER; the leaver and the forgetter leave, the banned user is banned,
// the forgetter forgets; the creator renames the room NAME_AFTER and sends LATE; the invitee
// (display name INVITEE) is invited.
const NAME_BEFORE: &str = "name-before";
const EARLY: &str = "early-message";
const MEMBER: &str = "member-message";
const NAME_AFTER: &str = "name-after";
const LATE: &str = "late-message";
const INVITEE: &str = "invitee-name";
const MARKERS: [&str; 6] = [NAME_BEFORE, EARLY, MEMBER, NAME_AFTER, LATE, INVITEE];

const OK: Expect = Allowed;
const FORBIDDEN: Expect = Refused(403, "M_FORBIDDEN");
const NOT_FOUND: Expect = Refused(404, "M_NOT_FOUND");
/// `POST /forget` while joined or invited: "400: The user has not left the room".
const NOT_LEFT: Expect = Refused(400, "M_UNKNOWN");
/// The whole history and current state (`shared` history visibility).
const ALL: Expect = Sees(&[NAME_BEFORE, EARLY, MEMBER, NAME_AFTER, LATE, INVITEE]);
/// "After a user has left a room, they may see any events which they were allowed to see before
/// they left the room, but no events received after they left" (history visibility); a ban
/// ends the view the same way.
const UNTIL_GONE: Expect = Sees(&[NAME_BEFORE, EARLY, MEMBER]);
const SYNC_JOINED: Expect = Synced(Some("join"), &[NAME_BEFORE, EARLY, MEMBER, NAME_AFTER, LATE, INVITEE]);
const SYNC_LEFT: Expect = Synced(Some("leave"), &[NAME_BEFORE, EARLY, MEMBER]);
/// The stripped state of the invite: the room's name and the invitee's own member event.
const SYNC_INVITED: Expect = Synced(Some("invite"), &[NAME_AFTER, INVITEE]);
const NOT_SYNCED: Expect = Synced(None, &[]);

/// The room-scoped client endpoints this server serves (each `#[oai(path)]` under
/// `api/client` that names a room, but for the user's own key backup `/room_keys/keys/{roomId}`),
/// plus `/sync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Messages,
    ContextEarly,
    ContextLate,
    EventEarly,
    EventLate,
    State,
    StateName,
    StateInviteeMember,
    Members,
    JoinedMembers,
    Aliases,
    GetDirectoryListing,
    Sync,
    Send,
    SetName,
    SetPowerLevels,
    KickByState,
    RedactCreators,
    RedactMembers,
    Invite,
    Kick,
    Ban,
    Unban,
    JoinById,
    JoinByAlias,
    Leave,
    Forget,
    TypingSelf,
    TypingCreator,
    Receipt,
    ReadMarkers,
    PutOwnRoomData,
    GetCreatorsRoomData,
    PutCreatorsRoomData,
    SetDirectoryListing,
}

/// The matrix. Reads follow the spec's history visibility rules for a `shared` room with
/// `join_rules: invite` (the `private_chat` preset); writes follow the authorization rules and
/// the room's power levels (`private_chat`: invite, kick, ban, redact and `m.room.name` need 50,
/// `m.room.power_levels` 100). Where the spec gives no status, the comment says what the
/// server's answer rests on.
#[rustfmt::skip]
const MATRIX: &[(Op, [Expect; 7])] = &[
    //                     creator       member        outsider    invitee       leaver           banned           forgetter
    (Messages,            [ALL,          ALL,          FORBIDDEN,  FORBIDDEN,    UNTIL_GONE,      UNTIL_GONE,      FORBIDDEN]),
    // /context and /event: "404: The event was not found or you do not have permission to read
    // this event" (/context lists no errors; it answers like /event).
    (ContextEarly,        [ALL,          ALL,          NOT_FOUND,  NOT_FOUND,    UNTIL_GONE,      UNTIL_GONE,      NOT_FOUND]),
    (ContextLate,         [ALL,          ALL,          NOT_FOUND,  NOT_FOUND,    NOT_FOUND,       NOT_FOUND,       NOT_FOUND]),
    (EventEarly,          [Sees(&[EARLY]), Sees(&[EARLY]), NOT_FOUND, NOT_FOUND, Sees(&[EARLY]), Sees(&[EARLY]), NOT_FOUND]),
    (EventLate,           [Sees(&[LATE]), Sees(&[LATE]), NOT_FOUND, NOT_FOUND,   NOT_FOUND,       NOT_FOUND,       NOT_FOUND]),
    // State: "403: You aren't a member of the room and weren't previously a member of the room";
    // "If the user has left the room then the state is taken from the state of the room when
    // they left" (so the invitee, invited later, is not in it: 404).
    (State,               [Sees(&[NAME_AFTER, INVITEE]), Sees(&[NAME_AFTER, INVITEE]), FORBIDDEN, FORBIDDEN,
                           Sees(&[NAME_BEFORE]), Sees(&[NAME_BEFORE]), FORBIDDEN]),
    (StateName,           [Sees(&[NAME_AFTER]), Sees(&[NAME_AFTER]), FORBIDDEN, FORBIDDEN,
                           Sees(&[NAME_BEFORE]), Sees(&[NAME_BEFORE]), FORBIDDEN]),
    (StateInviteeMember,  [Sees(&[INVITEE]), Sees(&[INVITEE]), FORBIDDEN, FORBIDDEN, NOT_FOUND, NOT_FOUND, FORBIDDEN]),
    (Members,             [Sees(&[INVITEE]), Sees(&[INVITEE]), FORBIDDEN, FORBIDDEN, Sees(&[]), Sees(&[]), FORBIDDEN]),
    // "The current user must be in the room for it to work."
    (JoinedMembers,       [OK,           OK,           FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    // "This endpoint can be called by users who are in the room (external users receive an
    // M_FORBIDDEN error response)."
    (Aliases,             [OK,           OK,           FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    // The directory listing is public: the endpoint takes no access token.
    (GetDirectoryListing, [OK,           OK,           OK,         OK,           OK,              OK,              OK]),
    // A forgotten room no longer appears in sync (and a left one only with include_leave).
    (Sync,                [SYNC_JOINED,  SYNC_JOINED,  NOT_SYNCED, SYNC_INVITED, SYNC_LEFT,       SYNC_LEFT,       NOT_SYNCED]),
    // Writes that become events: the authorization rules need the sender joined, at the level
    // the power levels ask. 403 M_FORBIDDEN, as /state documents it.
    (Send,                [OK,           OK,           FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    (SetName,             [OK,           FORBIDDEN,    FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    (SetPowerLevels,      [OK,           FORBIDDEN,    FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    (KickByState,         [OK,           FORBIDDEN,    FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    // "Any user with a power level greater than or equal to the m.room.redaction event power
    // level may send redactions for their own events [...] the redact power level [for] events
    // sent by other users."
    (RedactCreators,      [OK,           FORBIDDEN,    FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    (RedactMembers,       [OK,           OK,           FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    // "Only users currently in a particular room can invite"; the room's invite level is 50.
    (Invite,              [OK,           FORBIDDEN,    FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    (Kick,                [OK,           FORBIDDEN,    FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    (Ban,                 [OK,           FORBIDDEN,    FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    (Unban,               [OK,           FORBIDDEN,    FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    // "403: The room is invite-only and the user was not invited. The user has been banned."
    (JoinById,            [OK,           OK,           FORBIDDEN,  OK,           FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    (JoinByAlias,         [OK,           OK,           FORBIDDEN,  OK,           FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    // Leaving rejects an invite; someone not joined or invited has nothing to leave (the
    // authorization rules refuse the event; the spec lists no error).
    (Leave,               [OK,           OK,           FORBIDDEN,  OK,           FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    // The spec lists no answer for a room the user was never in: the server says 404.
    (Forget,              [NOT_LEFT,     NOT_LEFT,     NOT_FOUND,  NOT_LEFT,     OK,              OK,              OK]),
    // Typing notices and receipts: joined members only (the spec lists no error; the server
    // refuses with 403 as for any room write by a non-member).
    (TypingSelf,          [OK,           OK,           FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    (TypingCreator,       [OK,           FORBIDDEN,    FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    (Receipt,             [OK,           OK,           FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    (ReadMarkers,         [OK,           OK,           FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    // Room account data is the user's, not the room's: the spec refuses only another user's
    // ("403: The access token provided is not authorised to modify this user's account data").
    (PutOwnRoomData,      [OK,           OK,           OK,         OK,           OK,              OK,              OK]),
    (GetCreatorsRoomData, [OK,           FORBIDDEN,    FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    (PutCreatorsRoomData, [OK,           FORBIDDEN,    FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
    // "Servers MAY implement additional access control checks": here, power to change the
    // room's canonical alias (50).
    (SetDirectoryListing, [OK,           FORBIDDEN,    FORBIDDEN,  FORBIDDEN,    FORBIDDEN,       FORBIDDEN,       FORBIDDEN]),
];

/// Room-scoped endpoints of the spec this server does not serve yet. When one of them is served
/// this test fails: its rows then belong in [`MATRIX`].
const NOT_SERVED: &[(&str, &str)] = &[
    ("GET", "/relations/{early}"),
    ("POST", "/report"),
    ("POST", "/report/{early}"),
    ("GET", "/user/{creator}/rooms/{roomId}/tags"),
    ("PUT", "/user/{creator}/rooms/{roomId}/tags/u.work"),
    ("DELETE", "/user/{creator}/rooms/{roomId}/tags/u.work"),
];

impl Op {
    /// The row's name in failure messages.
    fn label(self) -> &'static str {
        match self {
            Messages => "GET /rooms/{roomId}/messages",
            ContextEarly => "GET /rooms/{roomId}/context/{early}",
            ContextLate => "GET /rooms/{roomId}/context/{late}",
            EventEarly => "GET /rooms/{roomId}/event/{early}",
            EventLate => "GET /rooms/{roomId}/event/{late}",
            State => "GET /rooms/{roomId}/state",
            StateName => "GET /rooms/{roomId}/state/m.room.name",
            StateInviteeMember => "GET /rooms/{roomId}/state/m.room.member/{invitee}",
            Members => "GET /rooms/{roomId}/members",
            JoinedMembers => "GET /rooms/{roomId}/joined_members",
            Aliases => "GET /rooms/{roomId}/aliases",
            GetDirectoryListing => "GET /directory/list/room/{roomId}",
            Sync => "GET /sync",
            Send => "PUT /rooms/{roomId}/send/m.room.message/{txnId}",
            SetName => "PUT /rooms/{roomId}/state/m.room.name",
            SetPowerLevels => "PUT /rooms/{roomId}/state/m.room.power_levels",
            KickByState => "PUT /rooms/{roomId}/state/m.room.member/{victim} (leave)",
            RedactCreators => "PUT /rooms/{roomId}/redact/{early}/{txnId}",
            RedactMembers => "PUT /rooms/{roomId}/redact/{member's message}/{txnId}",
            Invite => "POST /rooms/{roomId}/invite",
            Kick => "POST /rooms/{roomId}/kick",
            Ban => "POST /rooms/{roomId}/ban",
            Unban => "POST /rooms/{roomId}/unban",
            JoinById => "POST /rooms/{roomId}/join",
            JoinByAlias => "POST /join/{roomAlias}",
            Leave => "POST /rooms/{roomId}/leave",
            Forget => "POST /rooms/{roomId}/forget",
            TypingSelf => "PUT /rooms/{roomId}/typing/{self}",
            TypingCreator => "PUT /rooms/{roomId}/typing/{creator}",
            Receipt => "POST /rooms/{roomId}/receipt/m.read/{early}",
            ReadMarkers => "POST /rooms/{roomId}/read_markers",
            PutOwnRoomData => "PUT /user/{self}/rooms/{roomId}/account_data/{type}",
            GetCreatorsRoomData => "GET /user/{creator}/rooms/{roomId}/account_data/{type}",
            PutCreatorsRoomData => "PUT /user/{creator}/rooms/{roomId}/account_data/{type}",
            SetDirectoryListing => "PUT /directory/list/room/{roomId}",
        }
    }

    /// Whether a successful request changes the room in a way another cell could notice: such
    /// a cell gets a room of its own.
    fn changes_the_room(self) -> bool {
        matches!(
            self,
            SetName
                | SetPowerLevels
                | KickByState
                | RedactCreators
                | RedactMembers
                | Invite
                | Kick
                | Ban
                | Unban
                | JoinById
                | JoinByAlias
                | Leave
                | Forget
        )
    }

    /// Method, path and body of the request `who` makes.
    fn request(self, world: &World, room: &Room, who: &Account) -> (&'static str, String, Option<Value>) {
        let cast = &world.cast;
        let base = format!("/_matrix/client/v3/rooms/{}", room.id);
        let txn = uuid::Uuid::new_v4().simple();
        let target = |account: &Account| Some(json!({"user_id": account.user_id}));
        let room_data = |user: &Account| {
            format!("/_matrix/client/v3/user/{}/rooms/{}/account_data/{ROOM_DATA}", user.user_id, room.id)
        };
        let creator = cast.get(Subject::Creator);
        match self {
            Messages => ("GET", format!("{base}/messages?dir=b&limit=100"), None),
            ContextEarly => ("GET", format!("{base}/context/{}?limit=100", room.early), None),
            ContextLate => ("GET", format!("{base}/context/{}?limit=100", room.late), None),
            EventEarly => ("GET", format!("{base}/event/{}", room.early), None),
            EventLate => ("GET", format!("{base}/event/{}", room.late), None),
            State => ("GET", format!("{base}/state"), None),
            StateName => ("GET", format!("{base}/state/m.room.name"), None),
            StateInviteeMember => {
                ("GET", format!("{base}/state/m.room.member/{}", cast.get(Subject::Invitee).user_id), None)
            }
            Members => ("GET", format!("{base}/members"), None),
            JoinedMembers => ("GET", format!("{base}/joined_members"), None),
            Aliases => ("GET", format!("{base}/aliases"), None),
            GetDirectoryListing => ("GET", format!("/_matrix/client/v3/directory/list/room/{}", room.id), None),
            Sync => unreachable!("sync is judged by where the room appears"),
            Send => {
                ("PUT", format!("{base}/send/m.room.message/{txn}"), Some(json!({"msgtype": "m.text", "body": "hi"})))
            }
            SetName => ("PUT", format!("{base}/state/m.room.name"), Some(json!({"name": "renamed"}))),
            SetPowerLevels => {
                let mut levels = world.power_levels.clone();
                levels["users"][&cast.victim.user_id] = json!(50);
                ("PUT", format!("{base}/state/m.room.power_levels"), Some(levels))
            }
            KickByState => (
                "PUT",
                format!("{base}/state/m.room.member/{}", cast.victim.user_id),
                Some(json!({"membership": "leave"})),
            ),
            RedactCreators => ("PUT", format!("{base}/redact/{}/{txn}", room.early), Some(json!({}))),
            RedactMembers => ("PUT", format!("{base}/redact/{}/{txn}", room.member_message), Some(json!({}))),
            Invite => ("POST", format!("{base}/invite"), target(&cast.stranger)),
            Kick => ("POST", format!("{base}/kick"), target(&cast.victim)),
            Ban => ("POST", format!("{base}/ban"), target(&cast.victim)),
            Unban => ("POST", format!("{base}/unban"), target(cast.get(Subject::Banned))),
            JoinById => ("POST", format!("{base}/join"), Some(json!({}))),
            JoinByAlias => {
                ("POST", format!("/_matrix/client/v3/join/{}", room.alias.replace('#', "%23")), Some(json!({})))
            }
            Leave => ("POST", format!("{base}/leave"), Some(json!({}))),
            Forget => ("POST", format!("{base}/forget"), Some(json!({}))),
            TypingSelf => {
                ("PUT", format!("{base}/typing/{}", who.user_id), Some(json!({"typing": true, "timeout": 1000})))
            }
            TypingCreator => {
                ("PUT", format!("{base}/typing/{}", creator.user_id), Some(json!({"typing": true, "timeout": 1000})))
            }
            Receipt => ("POST", format!("{base}/receipt/m.read/{}", room.early), Some(json!({}))),
            ReadMarkers => (
                "POST",
                format!("{base}/read_markers"),
                Some(json!({"m.fully_read": room.early, "m.read": room.early})),
            ),
            PutOwnRoomData => ("PUT", room_data(who), Some(json!({"note": "mine"}))),
            GetCreatorsRoomData => ("GET", room_data(creator), None),
            PutCreatorsRoomData => ("PUT", room_data(creator), Some(json!({"note": "not yours"}))),
            SetDirectoryListing => (
                "PUT",
                format!("/_matrix/client/v3/directory/list/room/{}", room.id),
                Some(json!({"visibility": "public"})),
            ),
        }
    }
}

/// The type of the room account data the creator keeps in each room.
const ROOM_DATA: &str = "org.example.note";

/// The accounts: one per subject, plus a joined member to kick and ban and a stranger to invite.
struct Cast {
    subjects: Vec<Account>,
    victim: Account,
    stranger: Account,
}

impl Cast {
    fn get(&self, subject: Subject) -> &Account {
        &self.subjects[subject as usize]
    }
}

/// A room that has been through the story told above [`MARKERS`].
struct Room {
    id: String,
    alias: String,
    early: String,
    member_message: String,
    late: String,
}

/// Everything a cell needs.
struct World {
    cast: Cast,
    /// The room cells that change nothing share.
    shared: Room,
    /// The content of the rooms' power levels event (the same in every room of the cast).
    power_levels: Value,
}

/// Runs every cell of [`MATRIX`] and reports every cell that differs, named by row and column.
async fn room_endpoints_follow_the_matrix(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let names = ["creator", "member", "outsider", "invitee", "leaver", "banned", "forgetter", "victim", "stranger"];
    let mut accounts = join_all(names.map(|name| h.register(name, "pw"))).await;
    let (stranger, victim) = (accounts.pop().unwrap(), accounts.pop().unwrap());
    let cast = Cast { subjects: accounts, victim, stranger };
    let invitee = cast.get(Subject::Invitee);
    let path = format!("/_matrix/client/v3/profile/{}/displayname", invitee.user_id);
    expect_ok(h.put(&path, Some(&invitee.access_token), json!({"displayname": INVITEE})).await);

    let shared = story(&h, &cast).await;
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels", shared.id);
    let power_levels = expect_ok(h.get(&path, Some(&cast.get(Subject::Creator).access_token)).await);
    let world = World { cast, shared, power_levels };

    let cells: Vec<(Op, Subject, Expect)> = MATRIX
        .iter()
        .flat_map(|(op, expected)| SUBJECTS.iter().zip(expected).map(|(subject, expect)| (*op, *subject, *expect)))
        .collect();
    assert_eq!(cells.len(), MATRIX.len() * SUBJECTS.len());
    // A few cells at a time: each one that changes the room first plays the story in a room of
    // its own, and the server's writer commits concurrent appends together.
    let failures: Vec<String> = futures_util::stream::iter(&cells)
        .map(|&(op, subject, expect)| {
            let (h, world) = (&h, &world);
            async move {
                let own_room;
                let room = if op.changes_the_room() {
                    own_room = story(h, &world.cast).await;
                    &own_room
                } else {
                    &world.shared
                };
                let who = world.cast.get(subject);
                let response = match op {
                    Sync => sync_section(h, who, room).await,
                    _ => {
                        let (method, path, body) = op.request(world, room, who);
                        h.call(method, &path, Some(&who.access_token), body).await
                    }
                };
                judge(expect, &response).err().map(|why| format!("{} as the {}: {why}", op.label(), subject.name()))
            }
        })
        .buffer_unordered(6)
        .filter_map(|failure| async { failure })
        .collect()
        .await;
    assert!(failures.is_empty(), "{} of {} cells differ from the matrix:\n{}", failures.len(), cells.len(), {
        let mut sorted = failures.clone();
        sorted.sort();
        sorted.join("\n")
    });

    let creator = world.cast.get(Subject::Creator);
    for (method, suffix) in NOT_SERVED {
        let suffix = suffix
            .replace("{early}", &world.shared.early)
            .replace("{creator}", &creator.user_id)
            .replace("{roomId}", &world.shared.id);
        let path = match suffix.starts_with("/user/") {
            true => format!("/_matrix/client/v3{suffix}"),
            false => format!("/_matrix/client/v3/rooms/{}{suffix}", world.shared.id),
        };
        let response = h.call(method, &path, Some(&creator.access_token), Some(json!({}))).await;
        assert_eq!(response.1["errcode"], "M_UNRECOGNIZED", "{method} {path} is served now: add it to MATRIX");
    }
}

/// Plays the story told above [`MARKERS`] in a new room.
async fn story(h: &Harness, cast: &Cast) -> Room {
    let get = |subject| cast.get(subject);
    let (creator, member) = (get(Subject::Creator), get(Subject::Member));
    let joiners = [member, get(Subject::Leaver), get(Subject::Banned), get(Subject::Forgetter), &cast.victim];
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let alias_name = format!("authz-{nonce}");
    // The nonce keeps apart the create events of rooms made in the same millisecond: a version
    // 12 room ID is the create event's hash, and two equal ones collide (a 500 for the second).
    let body = json!({
        "preset": "private_chat", "name": NAME_BEFORE, "room_alias_name": alias_name,
        "creation_content": {"org.example.nonce": nonce},
        "invite": joiners.iter().map(|a| a.user_id.as_str()).collect::<Vec<_>>(),
    });
    let id = h.create_room(creator, body).await;
    for joined in join_all(joiners.map(|account| h.membership(account, &id, "join", None))).await {
        expect_ok(joined);
    }
    let (early, member_message) = tokio::join!(h.send_text(creator, &id, EARLY), h.send_text(member, &id, MEMBER));
    let (early, member_message) = (event_id(early), event_id(member_message));
    let banned = Some(get(Subject::Banned).user_id.as_str());
    let (left, forgetter_left, ban) = tokio::join!(
        h.membership(get(Subject::Leaver), &id, "leave", None),
        h.membership(get(Subject::Forgetter), &id, "leave", None),
        h.membership(creator, &id, "ban", banned),
    );
    for departed in [left, forgetter_left, ban] {
        expect_ok(departed);
    }
    let forgetter = Some(get(Subject::Forgetter).access_token.as_str());
    expect_ok(h.post(&format!("/_matrix/client/v3/rooms/{id}/forget"), forgetter, json!({})).await);
    let name_path = format!("/_matrix/client/v3/rooms/{id}/state/m.room.name");
    let rename = h.put(&name_path, Some(&creator.access_token), json!({"name": NAME_AFTER}));
    let (renamed, late) = tokio::join!(rename, h.send_text(creator, &id, LATE));
    expect_ok(renamed);
    let late = event_id(late);
    expect_ok(h.membership(creator, &id, "invite", Some(&get(Subject::Invitee).user_id)).await);
    let path = format!("/_matrix/client/v3/user/{}/rooms/{id}/account_data/{ROOM_DATA}", creator.user_id);
    expect_ok(h.put(&path, Some(&creator.access_token), json!({"note": "the creator's"})).await);
    Room { id, alias: format!("#{alias_name}:{}", h.server_name()), early, member_message, late }
}

/// Where the room is in `who`'s initial sync: `{"section": "join"|"invite"|"leave", "entry": …}`
/// or `{"section": null}`.
async fn sync_section(h: &Harness, who: &Account, room: &Room) -> (StatusCode, Value) {
    let filter = json!({"room": {"include_leave": true, "timeline": {"limit": 100}}}).to_string();
    let body = h.sync(who, None, 0, Some(&filter)).await;
    for section in ["join", "invite", "leave"] {
        if let Some(entry) = body["rooms"][section].get(&room.id) {
            return (StatusCode::OK, json!({"section": section, "entry": entry}));
        }
    }
    (StatusCode::OK, json!({"section": null}))
}

/// Whether a response is what the cell expects; if not, what differs.
fn judge(expect: Expect, (status, body): &(StatusCode, Value)) -> Result<(), String> {
    let got = || {
        let body = body.to_string();
        let shown: String = body.chars().take(300).collect();
        format!("got {status} {shown}{}", if shown.len() < body.len() { "…" } else { "" })
    };
    match expect {
        Allowed if *status == StatusCode::OK => Ok(()),
        Sees(markers) if *status == StatusCode::OK => {
            let seen = seen_markers(body);
            if seen == markers_in_order(markers) {
                Ok(())
            } else {
                Err(format!("expected 200 revealing {markers:?}, got 200 revealing {seen:?}"))
            }
        }
        Allowed | Sees(_) => Err(format!("expected 200, {}", got())),
        Refused(code, errcode) => {
            if status.as_u16() == code && body["errcode"] == errcode && body["error"].is_string() {
                Ok(())
            } else {
                Err(format!("expected {code} {errcode}, {}", got()))
            }
        }
        Synced(section, markers) => {
            let seen = seen_markers(&body["entry"]);
            if body["section"].as_str() == section && seen == markers_in_order(markers) {
                Ok(())
            } else {
                Err(format!(
                    "expected the room in {section:?} revealing {markers:?}, got it in {} revealing {seen:?}",
                    body["section"]
                ))
            }
        }
    }
}

fn markers_in_order(markers: &[&str]) -> Vec<&'static str> {
    MARKERS.into_iter().filter(|m| markers.contains(m)).collect()
}

/// The [`MARKERS`] among the message bodies, room names and display names in `value` (outside
/// `unsigned`, where a server may repeat earlier content).
fn seen_markers(value: &Value) -> Vec<&'static str> {
    fn collect(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map.iter().filter(|(key, _)| *key != "unsigned") {
                    if let ("body" | "name" | "displayname", Some(text)) = (key.as_str(), value.as_str()) {
                        found.push(text.to_owned());
                    }
                    collect(value, found);
                }
            }
            Value::Array(items) => items.iter().for_each(|item| collect(item, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    collect(value, &mut found);
    MARKERS.into_iter().filter(|m| found.iter().any(|f| f.as_str() == *m)).collect()
}

#[track_caller]
fn expect_ok(response: (StatusCode, Value)) -> Value {
    assert_eq!(response.0, StatusCode::OK, "{}", response.1);
    response.1
}

#[track_caller]
fn event_id(response: (StatusCode, Value)) -> String {
    expect_ok(response)["event_id"].as_str().unwrap().to_owned()
}

/// A token is dead after `POST /logout`, `POST /logout/all` (every token of the user), `DELETE
/// /devices/{deviceId}` and a password change with `logout_devices` (every other device's): a
/// dead token gets 401 `M_UNKNOWN_TOKEN` for whoami, a room read and a send alike.
async fn dead_tokens_open_nothing(backend: TestBackend) {
    let h = Harness::start(backend).await;
    let keeper = h.register("tess", "pw").await;
    let room = h.create_room(&keeper, json!({"preset": "private_chat"})).await;

    let logged_out = h.login("tess", "pw").await;
    assert_token(&h, &logged_out, &room, true).await;
    assert_eq!(
        expect_ok(h.post("/_matrix/client/v3/logout", Some(&logged_out.access_token), json!({})).await),
        json!({})
    );
    assert_token(&h, &logged_out, &room, false).await;
    assert_token(&h, &keeper, &room, true).await;

    let deleted = h.login("tess", "pw").await;
    let path = format!("/_matrix/client/v3/devices/{}", deleted.device_id);
    let (status, challenge) = h.call("DELETE", &path, Some(&keeper.access_token), Some(json!({}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let auth = json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "tess"},
        "password": "pw", "session": challenge["session"]}});
    expect_ok(h.call("DELETE", &path, Some(&keeper.access_token), Some(auth)).await);
    assert_token(&h, &deleted, &room, false).await;
    assert_token(&h, &keeper, &room, true).await;

    let others = [h.login("tess", "pw").await, h.login("tess", "pw").await];
    let path = "/_matrix/client/v3/account/password";
    let (status, challenge) = h.post(path, Some(&keeper.access_token), json!({"new_password": "pw2"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let change = json!({"new_password": "pw2", "logout_devices": true, "auth": {"type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "tess"}, "password": "pw", "session": challenge["session"]}});
    expect_ok(h.post(path, Some(&keeper.access_token), change).await);
    for other in &others {
        assert_token(&h, other, &room, false).await;
    }
    assert_token(&h, &keeper, &room, true).await;

    let later = [h.login("tess", "pw2").await, h.login("tess", "pw2").await];
    expect_ok(h.post("/_matrix/client/v3/logout/all", Some(&later[0].access_token), json!({})).await);
    for account in [&keeper, &later[0], &later[1]] {
        assert_token(&h, account, &room, false).await;
    }
}

/// Checks that `account`'s token works (`alive`) or gets 401 `M_UNKNOWN_TOKEN` for whoami, a
/// room read and a send.
async fn assert_token(h: &Harness, account: &Account, room: &str, alive: bool) {
    let token = Some(account.access_token.as_str());
    let responses = [
        ("whoami", h.whoami(&account.access_token).await),
        ("GET /messages", h.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), token).await),
        ("PUT /send", h.send_text(account, room, "still here?").await),
    ];
    for (what, response) in responses {
        if alive {
            assert_eq!(response.0, StatusCode::OK, "{what} with {}'s live token: {}", account.device_id, response.1);
        } else {
            let expected = Refused(401, "M_UNKNOWN_TOKEN");
            let judged = judge(expected, &response);
            assert!(judged.is_ok(), "{what} with {}'s dead token: {}", account.device_id, judged.unwrap_err());
        }
    }
}

/// The server offers no guest accounts, so the matrix has no guest column: `POST
/// /register?kind=guest` gets 403 ("The homeserver does not permit registering the account.
/// This response can be used to identify that a particular `kind` of account is not allowed")
/// with `M_GUEST_ACCESS_FORBIDDEN`, whatever the body (a guest registration ignores it).
async fn guest_accounts_cannot_exist(backend: TestBackend) {
    let h = Harness::start(backend).await;
    for body in [json!({}), json!({"username": "guest", "password": "pw", "auth": {"type": "m.login.dummy"}})] {
        let response = h.post("/_matrix/client/v3/register?kind=guest", None, body).await;
        assert_error(&response, StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN");
        assert!(response.1.get("access_token").is_none(), "{}", response.1);
    }
    let (_, available) = h.get("/_matrix/client/v3/register/available?username=guest", None).await;
    assert_eq!(available["available"], true, "no account was made: {available}");
}
