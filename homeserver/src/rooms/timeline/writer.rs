//! The writer task: group commit of appends, and a cache of each room's current state.
//!
//! Appends queue on a channel. The task takes everything waiting (up to [`MAX_BATCH`]) into one
//! room write transaction, builds and authorizes each event on top of the previous one, and
//! commits once; only then does any sender hear back, so an acknowledged event is durable.
//! While one group commits, the next one gathers, which is what lets many concurrent senders
//! share a disk flush.
//!
//! The cache keeps, per room, the current state as event IDs and the parsed state events the
//! authorization rules have looked at, keyed by the room's current state group. A state group
//! never changes once written, and the room's group is re-read under the write lock for every
//! append, so a stale entry (another process appended a state event) is noticed and reloaded.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use ruma_common::room_version_rules::RoomVersionRules;
use ruma_common::{EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, RoomVersionId};
use ruma_events::{StateEventType, TimelineEventType};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::{Appended, Incoming, OwnedTarget, OwnedTxn, Request};
use crate::crypto::SigningKey;
use crate::rooms::RoomError;
use crate::rooms::pdu::{Pdu, Placement};
use crate::rooms::power::PowerLevels;
use crate::rooms::version;
use crate::storage::{self, NewEvent, RoomWrite, StateIds, Storage, TxnKey, now_ms};

/// The most appends committed together. Bounds how long one transaction holds the write lock.
const MAX_BATCH: usize = 64;
/// Appends waiting beyond this make their senders wait to enqueue.
const QUEUE: usize = 1024;
/// The most prev events an event may have (the spec's PDU format).
const MAX_PREV_EVENTS: usize = 20;
/// The largest depth canonical JSON can hold (2^53 - 1).
const MAX_DEPTH: i64 = (1 << 53) - 1;
/// Rooms whose state is cached; past this the cache starts over.
const MAX_CACHED_ROOMS: usize = 4096;

/// The handle through which requests append events.
#[derive(Debug)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Result<Appended, RoomError>>,
}

/// What a job asks of the writer.
enum Work {
    /// An event by a local user.
    Local(Request),
    /// Something another server sent.
    Incoming(Incoming),
}

impl Work {
    fn txn(&self) -> Option<&OwnedTxn> {
        match self {
            Self::Local(request) => request.txn.as_ref(),
            Self::Incoming(_) => None,
        }
    }
}

impl Writer {
    /// Starts the writer task. It ends when the last handle is dropped.
    pub fn start(
        storage: Storage,
        key: Arc<SigningKey>,
        notifier: Arc<watch::Sender<i64>>,
        outbox_ready: Arc<Notify>,
        server_name: String,
    ) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let task = Task { storage, key, notifier, outbox_ready, server_name, rooms: HashMap::new() };
        tokio::spawn(task.run(queue));
        Self { jobs }
    }

    pub(super) async fn append(&self, request: Request) -> Result<Appended, RoomError> {
        self.submit(Work::Local(request)).await
    }

    pub(super) async fn receive(&self, incoming: Incoming) -> Result<Appended, RoomError> {
        self.submit(Work::Incoming(incoming)).await
    }

    async fn submit(&self, work: Work) -> Result<Appended, RoomError> {
        let stopped = || RoomError::Storage(storage::Error::Aborted("the event writer stopped".into()));
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { work, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// A room's current state as the writer knows it.
struct RoomCache {
    /// The state group the entry describes.
    group: i64,
    /// The room's redaction count when it was read: a redaction (here or in another process)
    /// rewrites a state event without moving the group.
    redactions: i64,
    /// The current state.
    state: StateIds,
    /// Current state events parsed so far, by event ID.
    events: HashMap<String, Pdu>,
}

impl RoomCache {
    async fn load(write: &mut RoomWrite, room_id: &str, head: &Head) -> Result<Self, RoomError> {
        let state = write.current_state_ids(room_id).await?;
        Ok(Self { group: head.group, redactions: head.redactions, state, events: HashMap::new() })
    }

    fn get(&self, kind: &str, state_key: &str) -> Option<&Pdu> {
        self.events.get(self.state.get(&(kind.to_owned(), state_key.to_owned()))?)
    }

    /// Parses the listed events that are not parsed yet.
    async fn ensure(&mut self, write: &mut RoomWrite, ids: &[&str]) -> Result<(), RoomError> {
        let missing: Vec<&str> = ids.iter().copied().filter(|id| !self.events.contains_key(*id)).collect();
        for stored in write.events(&missing).await? {
            let pdu = Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json)?;
            self.events.insert(stored.event_id, pdu);
        }
        Ok(())
    }

    /// Moves the entry past an appended state event.
    fn advance(&mut self, pdu: &Pdu, group: i64) {
        let Some(state_key) = &pdu.state_key else { return };
        let replaced = self.state.insert((pdu.kind.to_string(), state_key.clone()), pdu.event_id.to_string());
        if let Some(replaced) = replaced {
            self.events.remove(&replaced);
        }
        self.events.insert(pdu.event_id.to_string(), pdu.clone());
        self.group = group;
    }
}

/// What `prepare` decided for one request.
enum Step {
    /// The transaction ID was used before: this is the event it produced.
    Replay(Pdu),
    /// A new, authorized event to store.
    Write(Prepared),
}

struct Prepared {
    pdu: Pdu,
    /// The room's state group the event was built on.
    group: i64,
    /// For a create event: the room to register.
    new_room: Option<(RoomVersionId, bool)>,
    /// For a redaction: the target and its redacted JSON.
    redaction: Option<(OwnedEventId, String)>,
    /// Extremities the event does not follow (beyond the 20 prev events it may have).
    leftover: Vec<(String, i64)>,
}

/// A room as the appends of the current group left it: read once per group, not per event.
struct Head {
    version: String,
    group: i64,
    redactions: i64,
    extremities: Vec<(String, i64)>,
    /// Appended to: its extremities must be written before the commit.
    moved: bool,
    /// The servers with joined members, once read for the current state.
    servers: Option<Vec<String>>,
}

impl Head {
    /// The room as stored, read under the lock.
    fn stored(room: storage::Room, extremities: Vec<(String, i64)>) -> Self {
        Self {
            version: room.version,
            group: room.current_group,
            redactions: room.redactions,
            extremities,
            moved: false,
            servers: None,
        }
    }
}

type Heads = HashMap<OwnedRoomId, Head>;

struct Task {
    storage: Storage,
    key: Arc<SigningKey>,
    notifier: Arc<watch::Sender<i64>>,
    outbox_ready: Arc<Notify>,
    server_name: String,
    rooms: HashMap<OwnedRoomId, RoomCache>,
}

type Reply = oneshot::Sender<Result<Appended, RoomError>>;

impl Task {
    async fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.write_batch(&mut batch).await;
        }
    }

    async fn write_batch(&mut self, batch: &mut Vec<Job>) {
        let started = std::time::Instant::now();
        let size = batch.len();
        let mut write = match self.storage.begin_room_write().await {
            Ok(write) => write,
            Err(err) => return fail(batch.drain(..).map(|job| (job.reply, Ok(None))), &err),
        };
        // Transaction IDs seen before this group: one query for the group.
        let keys: Vec<(usize, TxnKey<'_>)> =
            batch.iter().enumerate().filter_map(|(i, job)| job.work.txn().map(|txn| (i, txn.key()))).collect();
        let mut earlier: Vec<Option<String>> = vec![None; batch.len()];
        match write.txn_events(&keys.iter().map(|(_, key)| *key).collect::<Vec<_>>()).await {
            Ok(found) => found.into_iter().for_each(|(i, event_id)| earlier[keys[i].0] = Some(event_id)),
            Err(err) => return fail(batch.drain(..).map(|job| (job.reply, Ok(None))), &err),
        }
        drop(keys);
        let mut outcomes: Vec<(Reply, Result<Option<Appended>, RoomError>)> = Vec::with_capacity(batch.len());
        let mut heads = Heads::new();
        // Transactions appended in this group, for a retry that arrives in the same group.
        let mut in_group: HashMap<OwnedTxn, Pdu> = HashMap::new();
        let mut jobs = batch.drain(..).zip(earlier);
        let mut queued = false;
        while let Some((Job { work, reply }, earlier)) = jobs.next() {
            let request = match work {
                Work::Local(request) => request,
                Work::Incoming(incoming) => {
                    match incoming::accept(self, &mut write, &mut heads, incoming).await {
                        Ok(outcome) => {
                            queued |= outcome.as_ref().is_ok_and(|appended| appended.forwarded);
                            outcomes.push((reply, outcome.map(Some)));
                        }
                        Err(err) => {
                            drop(write);
                            self.rooms.clear();
                            outcomes.push((reply, Ok(None)));
                            outcomes.extend(jobs.map(|(job, _)| (job.reply, Ok(None))));
                            return fail(outcomes.into_iter(), &err);
                        }
                    }
                    continue;
                }
            };
            let replay = match &request.txn {
                Some(txn) => match (in_group.get(txn), earlier) {
                    (Some(pdu), _) => Some(Ok(pdu.clone())),
                    (None, Some(event_id)) => Some(stored_pdu(&mut write, &event_id).await),
                    (None, None) => None,
                },
                None => None,
            };
            let step = match replay {
                Some(pdu) => pdu.map(Step::Replay),
                None => self.prepare(&mut write, &mut heads, &request).await,
            };
            match step {
                Ok(Step::Replay(pdu)) => outcomes.push((reply, Ok(Some(Appended::new(pdu, true))))),
                Ok(Step::Write(prepared)) if request.dry_run => {
                    outcomes.push((reply, Ok(Some(Appended::new(prepared.pdu, false)))));
                }
                Ok(Step::Write(prepared)) => match self.apply(&mut write, &mut heads, prepared, &request).await {
                    Ok((pdu, forwarded)) => {
                        if let Some(txn) = &request.txn {
                            in_group.insert(txn.clone(), pdu.clone());
                        }
                        queued |= forwarded;
                        outcomes.push((reply, Ok(Some(Appended::new(pdu, false)))));
                    }
                    Err(err) => {
                        // The transaction may hold part of this event: none of the group commits.
                        drop(write);
                        self.rooms.clear();
                        outcomes.push((reply, Ok(None)));
                        outcomes.extend(jobs.map(|(job, _)| (job.reply, Ok(None))));
                        return fail(outcomes.into_iter(), &err);
                    }
                },
                Err(err) => {
                    // Refused before writing anything; the others go on. The entry may hold
                    // what a failed read left half-loaded.
                    if let OwnedTarget::Room(room_id) = &request.target {
                        self.rooms.remove(room_id);
                    }
                    outcomes.push((reply, Err(err)));
                }
            }
        }
        drop(jobs);
        if let Err(err) = write_extremities(&mut write, &heads).await {
            drop(write);
            self.rooms.clear();
            return fail(outcomes.into_iter(), &err);
        }
        let prepared = started.elapsed();
        match write.commit().await {
            Ok(position) => {
                tracing::debug!(size, ?prepared, elapsed = ?started.elapsed(), "appended a group of events");
                crate::state::notify(&self.notifier, position);
                if queued {
                    self.outbox_ready.notify_one();
                }
                for (reply, outcome) in outcomes {
                    let _ = reply.send(outcome.map(|appended| appended.expect("every success carries its event")));
                }
            }
            Err(err) => {
                self.rooms.clear();
                fail(outcomes.into_iter(), &err);
            }
        }
    }

    /// Reads what the event builds on, builds and signs it, and runs the authorization rules.
    /// Writes nothing. (Repeated transactions were answered before.)
    async fn prepare(
        &mut self,
        write: &mut RoomWrite,
        heads: &mut Heads,
        request: &Request,
    ) -> Result<Step, RoomError> {
        let now = MilliSecondsSinceUnixEpoch::now();
        let template = request.template.clone();
        let room_id = match &request.target {
            OwnedTarget::NewRoom { version, room_id, published } => {
                let rules = rules(version)?;
                let placement = Placement {
                    room_id: room_id.as_deref(),
                    rules: &rules,
                    prev_events: vec![],
                    auth_events: vec![],
                    depth: 1,
                };
                let mut pdu = template.clone().build(&request.sender, placement.clone(), now, &self.key)?;
                // From room version 12 the room ID is the create event's hash: the same user
                // creating two rooms alike in one millisecond would get one ID twice, and the
                // second insert would abort the whole batch. The timestamp is ours to move on.
                let mut ts = u64::from(now.get());
                while room_id.is_none() && write.room_head(pdu.room_id.as_str()).await?.is_some() {
                    ts += 1;
                    let later = MilliSecondsSinceUnixEpoch(js_int::UInt::try_from(ts).unwrap_or(now.get()));
                    pdu = template.clone().build(&request.sender, placement.clone(), later, &self.key)?;
                }
                let new_room = Some((version.clone(), *published));
                return Ok(Step::Write(Prepared { pdu, group: 0, new_room, redaction: None, leftover: Vec::new() }));
            }
            OwnedTarget::Room(room_id) => room_id,
        };
        let head = match heads.entry(room_id.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let (room, extremities) = write.room_head(room_id.as_str()).await?.ok_or(RoomError::NotFound)?;
                let head = Head::stored(room, extremities);
                entry.insert(head)
            }
        };
        let version = RoomVersionId::try_from(head.version.as_str())
            .map_err(|_| RoomError::UnsupportedVersion(head.version.clone()))?;
        let rules = rules(&version)?;
        if self.rooms.get(room_id).is_none_or(|cache| (cache.group, cache.redactions) != (head.group, head.redactions))
        {
            if self.rooms.len() >= MAX_CACHED_ROOMS {
                self.rooms.clear();
            }
            let cache = RoomCache::load(write, room_id.as_str(), head).await?;
            self.rooms.insert(room_id.clone(), cache);
        }
        let cache = self.rooms.get_mut(room_id).expect("inserted above");

        let content =
            serde_json::value::to_raw_value(&template.content).map_err(|e| RoomError::InvalidEvent(e.to_string()))?;
        let auth_types = ruma_state_res::auth_types_for_event(
            &template.kind,
            &request.sender,
            template.state_key.as_deref(),
            &content,
            &rules.authorization,
        )
        .map_err(RoomError::InvalidEvent)?;
        let auth_events = auth_types
            .iter()
            .filter_map(|(kind, key)| cache.state.get(&(kind.to_string(), key.clone())))
            .map(|id| EventId::parse(id).map_err(|e| RoomError::Corrupt(e.to_string())))
            .collect::<Result<Vec<OwnedEventId>, _>>()?;
        // The spec's limits: at most 20 prev events (the deepest; the rest stay extremities)
        // and a depth that fits canonical JSON, whatever depths other servers sent.
        let mut extremities = head.extremities.clone();
        extremities.sort_by_key(|(_, depth)| std::cmp::Reverse(*depth));
        let leftover = extremities.split_off(extremities.len().min(MAX_PREV_EVENTS));
        let depth = (extremities.iter().map(|(_, depth)| *depth).max().unwrap_or(0) + 1).min(MAX_DEPTH);
        let prev_events = extremities
            .iter()
            .map(|(id, _)| EventId::parse(id).map_err(|e| RoomError::Corrupt(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let placement = Placement { room_id: Some(room_id), rules: &rules, prev_events, auth_events, depth };
        let pdu = template.build(&request.sender, placement, now, &self.key)?;
        authorize(write, cache, &pdu, &rules).await?;
        let redaction = match pdu.kind {
            TimelineEventType::RoomRedaction => Some(redaction(write, cache, &pdu, &rules).await?),
            _ => None,
        };
        Ok(Step::Write(Prepared { pdu, group: head.group, new_room: None, redaction, leftover }))
    }

    /// Stores a prepared event and moves the room's cache entry past it.
    async fn apply(
        &mut self,
        write: &mut RoomWrite,
        heads: &mut Heads,
        prepared: Prepared,
        request: &Request,
    ) -> storage::Result<(Pdu, bool)> {
        let Prepared { pdu, group, new_room, redaction, leftover } = prepared;
        if let Some((version, published)) = &new_room {
            write.create_room(pdu.room_id.as_str(), version.as_str(), *published, now_ms()).await?;
        }
        if let Some((target, json)) = &redaction {
            write.redact(target.as_str(), json, pdu.event_id.as_str()).await?;
        }
        let membership = (pdu.kind == TimelineEventType::RoomMember).then(|| pdu.content_str("membership")).flatten();
        let kind = pdu.kind.to_string();
        let json = pdu.json_string();
        let event = NewEvent {
            event_id: pdu.event_id.as_str(),
            room_id: pdu.room_id.as_str(),
            event_type: &kind,
            state_key: pdu.state_key.as_deref(),
            sender: pdu.sender.as_str(),
            origin_server_ts: i64::from(pdu.origin_server_ts.get()),
            depth: pdu.depth,
            membership: membership.as_deref(),
            json: &json,
        };
        let txn = request.txn.as_ref().map(|txn| txn.key());
        let (_, new_group) = write.append(event, group, txn, now_ms()).await?;
        let mut extremities = leftover;
        extremities.push((pdu.event_id.to_string(), pdu.depth));
        match &new_room {
            Some((version, _)) => {
                let head = Head {
                    version: version.to_string(),
                    group: new_group,
                    redactions: 0,
                    extremities,
                    moved: true,
                    servers: None,
                };
                heads.insert(pdu.room_id.clone(), head);
            }
            None => {
                // The event follows all the room's extremities (but the leftover): it replaces them.
                let head = heads.get_mut(&pdu.room_id).expect("prepare read the room");
                (head.group, head.extremities, head.moved) = (new_group, extremities, true);
                head.redactions += i64::from(redaction.is_some());
            }
        }
        let forwarded = incoming::forward(write, heads, &self.server_name, &pdu, None).await?;

        if redaction.is_some() {
            // The target may be a state event the cache holds unredacted.
            self.rooms.remove(&pdu.room_id);
        } else if new_room.is_some() {
            let mut cache = RoomCache { group: 0, redactions: 0, state: StateIds::new(), events: HashMap::new() };
            cache.advance(&pdu, new_group);
            self.rooms.insert(pdu.room_id.clone(), cache);
        } else if let Some(cache) = self.rooms.get_mut(&pdu.room_id)
            && cache.group == group
        {
            cache.advance(&pdu, new_group);
        }
        Ok((pdu, forwarded))
    }
}

mod incoming;

/// Answers every request of a failed group: those that had succeeded so far (`Ok`) get the
/// group's failure, refusals keep their own error.
fn fail(outcomes: impl Iterator<Item = (Reply, Result<Option<Appended>, RoomError>)>, err: &storage::Error) {
    tracing::error!(error = %err, "appending events failed");
    for (reply, outcome) in outcomes {
        let answer = match outcome {
            Err(refused) => Err(refused),
            Ok(_) => Err(RoomError::Storage(storage::Error::Aborted(err.to_string()))),
        };
        let _ = reply.send(answer);
    }
}

/// The event a transaction produced earlier.
async fn stored_pdu(write: &mut RoomWrite, event_id: &str) -> Result<Pdu, RoomError> {
    let stored = write.events(&[event_id]).await?.pop().ok_or(RoomError::NotFound)?;
    Ok(Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json)?)
}

/// Writes the extremities of the rooms the group appended to.
async fn write_extremities(write: &mut RoomWrite, heads: &Heads) -> storage::Result<()> {
    for (room_id, head) in heads.iter().filter(|(_, head)| head.moved) {
        let ids: Vec<&str> = head.extremities.iter().map(|(id, _)| id.as_str()).collect();
        write.set_extremities(room_id.as_str(), &ids).await?;
    }
    Ok(())
}

fn rules(version: &RoomVersionId) -> Result<RoomVersionRules, RoomError> {
    version::rules(version).ok_or_else(|| RoomError::UnsupportedVersion(version.to_string()))
}

/// Runs the room version's authorization rules on a new event against the current state.
async fn authorize(
    write: &mut RoomWrite,
    cache: &mut RoomCache,
    pdu: &Pdu,
    rules: &RoomVersionRules,
) -> Result<(), RoomError> {
    // Everything the rules may look at: the event's auth events, and from the current state the
    // create, power levels and join rules events, third-party invites, and the member events of
    // the sender, the target and a restricted join's authorising user — not every member.
    let content = match pdu.kind {
        TimelineEventType::RoomMember => pdu.content_value(),
        _ => serde_json::Value::Null,
    };
    let members: Vec<&str> =
        [Some(pdu.sender.as_str()), pdu.state_key.as_deref(), content["join_authorised_via_users_server"].as_str()]
            .into_iter()
            .flatten()
            .collect();
    let mut wanted: Vec<String> = pdu.auth_events.iter().map(ToString::to_string).collect();
    for kind in ["m.room.create", "m.room.power_levels", "m.room.join_rules"] {
        wanted.extend(cache.state.get(&(kind.to_owned(), String::new())).cloned());
    }
    for member in members {
        wanted.extend(cache.state.get(&("m.room.member".to_owned(), member.to_owned())).cloned());
    }
    wanted.extend(
        cache.state.iter().filter(|((kind, _), _)| kind == "m.room.third_party_invite").map(|(_, id)| id.clone()),
    );
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    cache.ensure(write, &wanted).await?;

    let fetch_event = |id: &EventId| cache.events.get(id.as_str());
    ruma_state_res::check_state_independent_auth_rules(&rules.authorization, pdu, fetch_event)
        .map_err(RoomError::Forbidden)?;
    let fetch_state = |kind: &StateEventType, key: &str| cache.get(&kind.to_string(), key);
    ruma_state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, fetch_state)
        .map_err(RoomError::Forbidden)?;
    Ok(())
}

/// Checks an authorized redaction: its sender must be the target's sender, or be at the room's
/// `redact` power level. Returns the target and its redacted JSON.
async fn redaction(
    write: &mut RoomWrite,
    cache: &RoomCache,
    redaction: &Pdu,
    rules: &RoomVersionRules,
) -> Result<(OwnedEventId, String), RoomError> {
    let Some(target_id) = &redaction.redacts else {
        return Err(RoomError::InvalidEvent("a redaction needs `redacts`".into()));
    };
    let Some(stored) = write.events(&[target_id.as_str()]).await?.pop() else {
        return Err(RoomError::NotFound);
    };
    let target = Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json)?;
    if target.room_id != redaction.room_id {
        return Err(RoomError::NotFound);
    }
    if target.sender != redaction.sender {
        // `authorize` parsed both: they are among every event's auth events.
        let create = cache.get("m.room.create", "").ok_or(RoomError::NotFound)?;
        let levels = PowerLevels::from_events(create, cache.get("m.room.power_levels", ""), rules);
        if levels.user_level(&redaction.sender) < levels.redact {
            return Err(RoomError::Forbidden("insufficient power level to redact other users' events".into()));
        }
    }
    Ok((target.event_id.clone(), target.redacted(rules)?.json_string()))
}
