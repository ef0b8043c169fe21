//! The authorization rules as the server applies them to an event another server sent
//! (`rooms::timeline::writer::incoming::place`): ruma-state-res's state-independent rules
//! against its auth events, the state-dependent rules against the state its auth events make
//! up, then against the state before it. Random sequences of membership, power level, join rule
//! and message events from random senders, each citing the room's current state or an older
//! one (stale auth events, the classic way to sneak a removed member back in): nothing panics,
//! and nobody the room's state does not have as a member gets anything past the rules but a
//! change of their own membership the rules allow (a join the join rules or an invite allow, a
//! knock where knocking is allowed, leaving an invite or a knock).

use std::collections::{BTreeMap, HashMap};

use myelin_homeserver::rooms::pdu::Pdu;
use myelin_homeserver::test_support::auth_events_from;
use proptest::prelude::*;
use ruma_common::room_version_rules::RoomVersionRules;
use ruma_common::{EventId, OwnedEventId, RoomVersionId};
use ruma_events::{StateEventType, TimelineEventType};
use serde_json::json;

use super::{ORIGIN, create_event, event};

const USERS: [&str; 4] = ["alice", "bob", "carol", "mallory"];

fn user(index: usize) -> String {
    format!("@{}:{ORIGIN}", USERS[index % USERS.len()])
}

/// State as `(type, state_key) → event ID`.
type State = BTreeMap<(String, String), OwnedEventId>;

/// What a server asks to add to the room.
#[derive(Clone, Debug)]
enum Action {
    Member { sender: usize, target: usize, membership: &'static str },
    Power { sender: usize, users: Vec<(usize, i64)>, defaults: [i64; 5] },
    JoinRule { sender: usize, rule: &'static str },
    Message { sender: usize },
}

fn action() -> impl Strategy<Value = Action> {
    let who = || 0..USERS.len();
    let level = || prop_oneof![Just(0i64), Just(50), Just(100), -10i64..110];
    let membership = || proptest::sample::select(vec!["join", "leave", "invite", "ban", "knock"]);
    let defaults = [level(), level(), level(), level(), level()];
    prop_oneof![
        3 => (who(), who(), membership())
            .prop_map(|(sender, target, membership)| Action::Member { sender, target, membership }),
        3 => (who(), membership())
            .prop_map(|(sender, membership)| Action::Member { sender, target: sender, membership }),
        2 => (who(), proptest::collection::vec((who(), level()), 0..4), defaults)
            .prop_map(|(sender, users, defaults)| Action::Power { sender, users, defaults }),
        1 => (who(), proptest::sample::select(vec!["public", "invite", "knock"]))
            .prop_map(|(sender, rule)| Action::JoinRule { sender, rule }),
        4 => who().prop_map(|sender| Action::Message { sender }),
    ]
}

/// A room as the receiving server holds it.
struct Room {
    rules: RoomVersionRules,
    create: Pdu,
    events: HashMap<OwnedEventId, Pdu>,
    state: State,
    /// The state after each accepted event, oldest first: what stale auth events cite.
    history: Vec<State>,
    last: OwnedEventId,
    depth: i64,
}

impl Room {
    fn new(version: &RoomVersionId) -> Self {
        let rules = version.rules().expect("a known version");
        let create = create_event(version, &rules);
        let mut state = State::new();
        state.insert(("m.room.create".into(), String::new()), create.event_id.clone());
        let mut room = Room {
            rules,
            events: HashMap::from([(create.event_id.clone(), create.clone())]),
            last: create.event_id.clone(),
            create,
            history: vec![state.clone()],
            state,
            depth: 1,
        };
        // Alice created the room: she joins, and opens it to anyone. (From v12 a creator's
        // power is not in the power levels.)
        let alice = if room.rules.authorization.explicitly_privilege_room_creators { vec![] } else { vec![(0, 100)] };
        for action in [
            Action::Member { sender: 0, target: 0, membership: "join" },
            Action::Power { sender: 0, users: alice, defaults: [0, 50, 50, 50, 0] },
            Action::JoinRule { sender: 0, rule: "public" },
        ] {
            let outcome = room.receive(&action, None).expect("builds");
            assert!(outcome.is_ok(), "{action:?}: {outcome:?}");
        }
        room
    }

    fn membership(&self, state: &State, user: &str) -> String {
        state
            .get(&("m.room.member".into(), user.to_owned()))
            .and_then(|id| self.events[id].content_str("membership"))
            .unwrap_or_else(|| "leave".into())
    }

    /// Builds the event for `action` (auth events from `stale`, an index into the history, or
    /// the current state) and runs the server's checks; an accepted event becomes part of the
    /// room. `None` when the event cannot even be built.
    fn receive(&mut self, action: &Action, stale: Option<usize>) -> Option<Result<Pdu, String>> {
        let (sender, kind, state_key, content) = match action {
            Action::Member { sender, target, membership } => {
                (user(*sender), TimelineEventType::RoomMember, Some(user(*target)), json!({ "membership": membership }))
            }
            Action::Power { sender, users, defaults: [events, state, ban, kick, invite] } => {
                let users: BTreeMap<String, i64> = users.iter().map(|(u, level)| (user(*u), *level)).collect();
                let content = json!({
                    "users": users, "users_default": 0, "events_default": events, "state_default": state,
                    "ban": ban, "kick": kick, "invite": invite, "redact": 50,
                });
                (user(*sender), TimelineEventType::RoomPowerLevels, Some(String::new()), content)
            }
            Action::JoinRule { sender, rule } => {
                (user(*sender), TimelineEventType::RoomJoinRules, Some(String::new()), json!({ "join_rule": rule }))
            }
            Action::Message { sender } => {
                (user(*sender), TimelineEventType::RoomMessage, None, json!({ "msgtype": "m.text", "body": "hi" }))
            }
        };
        let cited = stale.map_or(&self.state, |i| &self.history[i % self.history.len()]);
        let rules = &self.rules.authorization;
        let auth_events = auth_events_from(cited, &kind, &sender, state_key.as_deref(), &content, rules);
        self.depth += 1;
        let pdu = event(
            &self.rules,
            &self.create,
            &sender,
            kind,
            state_key.as_deref(),
            content,
            vec![self.last.clone()],
            auth_events,
            self.depth,
        )
        .ok()?;
        let verdict = self.check(&pdu);
        if verdict.is_ok() {
            self.events.insert(pdu.event_id.clone(), pdu.clone());
            if let Some(key) = &pdu.state_key {
                self.state.insert((pdu.kind.to_string(), key.clone()), pdu.event_id.clone());
            }
            self.history.push(self.state.clone());
            self.last = pdu.event_id.clone();
        }
        Some(verdict.map(|()| pdu))
    }

    /// The checks of `place`, in its order.
    fn check(&self, pdu: &Pdu) -> Result<(), String> {
        let rules = &self.rules.authorization;
        // Every auth event must be at hand.
        let auth: Vec<&Pdu> = pdu.auth_events.iter().filter_map(|id| self.events.get(id)).collect();
        if auth.len() != pdu.auth_events.len() {
            return Err("missing auth events".into());
        }
        // 1. The event against its own auth events.
        ruma_state_res::check_state_independent_auth_rules(rules, pdu, |id: &EventId| self.events.get(id))?;
        let mut auth_state: State = auth
            .iter()
            .filter_map(|a| Some(((a.kind.to_string(), a.state_key.clone()?), a.event_id.clone())))
            .collect();
        if rules.room_create_event_id_as_room_id {
            auth_state.insert(("m.room.create".into(), String::new()), self.create.event_id.clone());
        }
        ruma_state_res::check_state_dependent_auth_rules(rules, pdu, self.fetch(&auth_state))?;
        // 2. Against the state before it (the room is linear here: the current state).
        ruma_state_res::check_state_dependent_auth_rules(rules, pdu, self.fetch(&self.state))
    }

    fn fetch<'a>(&'a self, state: &'a State) -> impl Fn(&StateEventType, &str) -> Option<&'a Pdu> + 'a {
        move |kind, key| state.get(&(kind.to_string(), key.to_owned())).and_then(|id| self.events.get(id))
    }
}

proptest! {
    #![proptest_config(super::config(256))]

    /// Random events from random senders, citing current or stale state: nothing panics; an
    /// accepted event's sender is a joined member before it, unless it changes their own
    /// membership as the join rules allow (never out of a ban).
    #[test]
    fn only_members_get_events_past_the_rules(
        version in proptest::sample::select(vec![RoomVersionId::V11, RoomVersionId::V12]),
        actions in proptest::collection::vec((action(), proptest::option::weighted(0.3, any::<usize>())), 1..32),
    ) {
        let mut room = Room::new(&version);
        for (action, stale) in &actions {
            let before = room.state.clone();
            let Some(Ok(pdu)) = room.receive(action, *stale) else { continue };
            let sender = pdu.sender.to_string();
            let was = room.membership(&before, &sender);
            let own = (pdu.kind == TimelineEventType::RoomMember && pdu.state_key.as_deref() == Some(sender.as_str()))
                .then(|| pdu.content_str("membership"))
                .flatten();
            let rule = before
                .get(&("m.room.join_rules".into(), String::new()))
                .and_then(|id| room.events[id].content_str("join_rule"))
                .unwrap_or_default();
            match own.as_deref() {
                Some("join") => prop_assert!(
                    was == "join" || was == "invite" || (rule == "public" && was != "ban"),
                    "{} joined from {} under {}", sender, was, rule
                ),
                Some("leave") => {
                    prop_assert!(["join", "invite", "knock"].contains(&was.as_str()), "{} left from {}", sender, was)
                }
                Some("knock") => prop_assert!(
                    rule == "knock" && !["ban", "join"].contains(&was.as_str()),
                    "{} knocked from {} under {}", sender, was, rule
                ),
                _ => prop_assert_eq!(was.as_str(), "join", "{:?} accepted from a {} sender", action, was),
            }
        }
    }
}

/// The scenario the stale citations aim at, spelled out: a member who was banned still holds
/// their old join event; a message citing it passes its auth events but not the room's state.
#[test]
fn a_banned_member_citing_their_old_join_is_refused() {
    let mut room = Room::new(&RoomVersionId::V12);
    let bob_joined = room.receive(&Action::Member { sender: 1, target: 1, membership: "join" }, None);
    assert!(matches!(bob_joined, Some(Ok(_))));
    let with_bob = room.history.len() - 1;
    let ban = room.receive(&Action::Member { sender: 0, target: 1, membership: "ban" }, None);
    assert!(matches!(ban, Some(Ok(_))), "{ban:?}");
    let message = room.receive(&Action::Message { sender: 1 }, Some(with_bob)).expect("builds");
    assert!(message.is_err(), "a banned member's message was accepted");
}
