//! Events from other servers, placed by the writer task under the room write lock: the
//! authorization checks the spec asks of a received PDU (against its auth events, against the
//! state before it, and against the current state for soft failure), state resolution where the
//! room's DAG forks, and the queueing of our events for the other servers in the room.
//!
//! State resolution and the authorization rules are ruma-state-res's; this module feeds them.

use std::collections::{HashMap, HashSet};

use ruma_common::room_version_rules::RoomVersionRules;
use ruma_common::{EventId, OwnedEventId, OwnedRoomId, RoomVersionId};
use ruma_events::{StateEventType, TimelineEventType};

use super::{Head, Heads, Task, rules};
use crate::rooms::RoomError;
use crate::rooms::pdu::Pdu;
use crate::rooms::power::PowerLevels;
use crate::rooms::timeline::{Appended, Incoming};
use crate::storage::{self, NewEvent, Outgoing, RoomWrite, StateIds, now_ms};

type Outcome = storage::Result<Result<Appended, RoomError>>;

/// Events parsed under the lock, by ID.
type Loaded = HashMap<OwnedEventId, Pdu>;

pub(super) async fn accept(task: &mut Task, write: &mut RoomWrite, heads: &mut Heads, incoming: Incoming) -> Outcome {
    match incoming {
        Incoming::Event { pdu, forward, outliers, prev_states } => {
            store_outliers(write, &outliers).await?;
            event(task, write, heads, pdu, forward, &prev_states).await
        }
        Incoming::Joined { version, join, state, auth_chain } => {
            joined(task, write, heads, version, join, state, auth_chain).await
        }
        Incoming::Membership { version, pdu, stripped } => {
            membership(task, write, heads, &version, pdu, stripped.as_deref()).await
        }
    }
}

/// Queues `pdu` for the servers in its room (and, for a member event, the target's server),
/// except ours and `except`. Returns whether anything was queued.
pub(super) async fn forward(
    write: &mut RoomWrite,
    heads: &mut Heads,
    server_name: &str,
    pdu: &Pdu,
    except: Option<&str>,
) -> storage::Result<bool> {
    let Some(head) = heads.get_mut(&pdu.room_id) else { return Ok(false) };
    if pdu.kind == TimelineEventType::RoomMember {
        head.servers = None;
    }
    let servers = match &head.servers {
        Some(servers) => servers.clone(),
        None => {
            let servers = write.resident_servers(pdu.room_id.as_str()).await?;
            head.servers = Some(servers.clone());
            servers
        }
    };
    let mut destinations: Vec<&str> = servers.iter().map(String::as_str).collect();
    if pdu.kind == TimelineEventType::RoomMember
        && let Some(target) = pdu.state_key.as_deref()
    {
        destinations.push(crate::federation::e2ee::server_of(target));
    }
    destinations.sort_unstable();
    destinations.dedup();
    let json = pdu.json_string();
    let items: Vec<Outgoing> = destinations
        .into_iter()
        .filter(|d| *d != server_name && Some(*d) != except && !d.is_empty())
        .map(|destination| Outgoing { destination: destination.to_owned(), kind: "pdu", json: json.clone() })
        .collect();
    write.enqueue(&items, now_ms()).await?;
    Ok(!items.is_empty())
}

fn appended(pdu: Pdu, replayed: bool, soft_failed: bool, forwarded: bool) -> Appended {
    Appended { pdu, replayed, soft_failed, forwarded }
}

fn new_event<'a>(pdu: &'a Pdu, kind: &'a str, json: &'a str, membership: Option<&'a str>) -> NewEvent<'a> {
    NewEvent {
        event_id: pdu.event_id.as_str(),
        room_id: pdu.room_id.as_str(),
        event_type: kind,
        state_key: pdu.state_key.as_deref(),
        sender: pdu.sender.as_str(),
        origin_server_ts: i64::from(pdu.origin_server_ts.get()),
        depth: pdu.depth,
        membership,
        json,
    }
}

fn membership_of(pdu: &Pdu) -> Option<String> {
    (pdu.kind == TimelineEventType::RoomMember).then(|| pdu.content_str("membership")).flatten()
}

/// Stores events without placing them, unless known.
async fn store_outliers(write: &mut RoomWrite, outliers: &[Pdu]) -> storage::Result<()> {
    let ids: Vec<&str> = outliers.iter().map(|p| p.event_id.as_str()).collect();
    let known: HashSet<String> = write.events(&ids).await?.into_iter().map(|e| e.event_id).collect();
    let mut stored = HashSet::new();
    for pdu in outliers {
        if known.contains(pdu.event_id.as_str()) || !stored.insert(pdu.event_id.clone()) {
            continue;
        }
        let (kind, json, membership) = (pdu.kind.to_string(), pdu.json_string(), membership_of(pdu));
        write.insert_event(new_event(pdu, &kind, &json, membership.as_deref()), 0, None, true).await?;
    }
    Ok(())
}

/// The room's head for this group, read under the lock once.
async fn head<'h>(
    write: &mut RoomWrite,
    heads: &'h mut Heads,
    room_id: &OwnedRoomId,
) -> storage::Result<Option<&'h mut Head>> {
    if !heads.contains_key(room_id) {
        let Some((room, extremities)) = write.room_head(room_id.as_str()).await? else { return Ok(None) };
        let head = Head::stored(room, extremities);
        heads.insert(room_id.clone(), head);
    }
    Ok(heads.get_mut(room_id))
}

/// Parses the listed events that are stored and not loaded yet.
async fn load(write: &mut RoomWrite, loaded: &mut Loaded, ids: &[&str]) -> Result<(), RoomError> {
    let missing: Vec<&str> =
        ids.iter().copied().filter(|id| EventId::parse(*id).is_ok_and(|id| !loaded.contains_key(&id))).collect();
    for stored in write.events(&missing).await? {
        let pdu = Pdu::from_json(&stored.event_id, &stored.room_id, &stored.json)?;
        loaded.insert(pdu.event_id.clone(), pdu);
    }
    Ok(())
}

/// Runs the state-dependent authorization rules for `pdu` against `state`.
async fn allowed_by(
    write: &mut RoomWrite,
    loaded: &mut Loaded,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state: &StateIds,
) -> Result<Result<(), String>, RoomError> {
    let content = match pdu.kind {
        TimelineEventType::RoomMember => pdu.content_value(),
        _ => serde_json::Value::Null,
    };
    let mut wanted: Vec<&str> = Vec::new();
    for kind in ["m.room.create", "m.room.power_levels", "m.room.join_rules"] {
        wanted.extend(state.get(&(kind.to_owned(), String::new())).map(String::as_str));
    }
    for member in
        [Some(pdu.sender.as_str()), pdu.state_key.as_deref(), content["join_authorised_via_users_server"].as_str()]
            .into_iter()
            .flatten()
    {
        wanted.extend(state.get(&("m.room.member".to_owned(), member.to_owned())).map(String::as_str));
    }
    wanted.extend(state.iter().filter(|((kind, _), _)| kind == "m.room.third_party_invite").map(|(_, id)| id.as_str()));
    load(write, loaded, &wanted).await?;
    let fetch_state = |kind: &StateEventType, key: &str| {
        let id = state.get(&(kind.to_string(), key.to_owned()))?;
        loaded.get(&*EventId::parse(id).ok()?)
    };
    Ok(ruma_state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, fetch_state))
}

/// Loads the full auth chains of the given events (not including them).
async fn auth_chain(
    write: &mut RoomWrite,
    loaded: &mut Loaded,
    of: impl IntoIterator<Item = OwnedEventId>,
) -> Result<HashSet<OwnedEventId>, RoomError> {
    let mut chain = HashSet::new();
    let mut frontier: Vec<OwnedEventId> = of.into_iter().collect();
    while !frontier.is_empty() {
        let ids: Vec<&str> = frontier.iter().map(|id| id.as_str()).collect();
        load(write, loaded, &ids).await?;
        let mut next = Vec::new();
        for id in &frontier {
            let Some(pdu) = loaded.get(id) else { continue };
            for auth in &pdu.auth_events {
                if chain.insert(auth.clone()) {
                    next.push(auth.clone());
                }
            }
        }
        frontier = next;
    }
    Ok(chain)
}

/// State resolution (v2, with v12's conflicted state subgraph) of several room states.
async fn resolve(
    write: &mut RoomWrite,
    loaded: &mut Loaded,
    rules: &RoomVersionRules,
    states: &[StateIds],
) -> Result<StateIds, RoomError> {
    let corrupt = |e: &dyn std::fmt::Display| RoomError::Corrupt(e.to_string());
    let mut maps = Vec::with_capacity(states.len());
    let mut chains = Vec::with_capacity(states.len());
    for state in states {
        let mut map = ruma_state_res::StateMap::new();
        for ((kind, key), id) in state {
            map.insert(
                (StateEventType::from(kind.as_str()), key.clone()),
                EventId::parse(id).map_err(|e| corrupt(&e))?,
            );
        }
        let chain = auth_chain(write, loaded, map.values().cloned()).await?;
        chains.push(chain.into_iter().collect());
        maps.push(map);
    }
    // Every state event must be loaded for the algorithm.
    let all: Vec<String> = maps.iter().flat_map(|m| m.values().map(ToString::to_string)).collect();
    load(write, loaded, &all.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    let v2 = rules.state_res.v2_rules().ok_or_else(|| RoomError::UnsupportedVersion("state resolution v1".into()))?;
    let resolved = ruma_state_res::resolve(
        &rules.authorization,
        v2,
        maps.iter(),
        chains,
        |id| loaded.get(id).cloned(),
        |conflicted| Some(conflicted_subgraph(loaded, conflicted.values().flatten()).into_iter().collect()),
    )
    .map_err(|e| RoomError::Forbidden(format!("state resolution failed: {e}")))?;
    Ok(resolved.into_iter().map(|((kind, key), id)| ((kind.to_string(), key), id.to_string())).collect())
}

/// The conflicted state subgraph (room version 12): every event on an `auth_events` path from
/// one conflicted event to another, endpoints included.
fn conflicted_subgraph<'a>(
    loaded: &Loaded,
    conflicted: impl Iterator<Item = &'a OwnedEventId>,
) -> HashSet<OwnedEventId> {
    let conflicted: HashSet<&OwnedEventId> = conflicted.collect();
    // Events reachable from a conflicted event (its auth ancestry, itself included).
    let mut below: HashSet<&OwnedEventId> = HashSet::new();
    let mut stack: Vec<&OwnedEventId> = conflicted.iter().copied().collect();
    while let Some(id) = stack.pop() {
        if below.insert(id)
            && let Some(pdu) = loaded.get(id)
        {
            stack.extend(pdu.auth_events.iter());
        }
    }
    // Of those, the ones from which a conflicted event is reachable: a depth-first search with
    // an explicit stack (auth chains can be deeper than the thread's stack).
    let mut reaches: HashMap<&OwnedEventId, bool> = HashMap::new();
    for &start in &below {
        let mut stack: Vec<(&OwnedEventId, bool)> = vec![(start, false)];
        while let Some((id, expanded)) = stack.pop() {
            if reaches.contains_key(id) && !expanded {
                continue;
            }
            let parents = loaded.get(id).map(|pdu| pdu.auth_events.as_slice()).unwrap_or_default();
            if expanded {
                let found = conflicted.contains(id) || parents.iter().any(|p| reaches.get(p) == Some(&true));
                reaches.insert(id, found);
                continue;
            }
            // Mark it as being visited (a cycle in hostile data must not loop forever).
            reaches.insert(id, false);
            stack.push((id, true));
            stack.extend(parents.iter().filter(|p| !reaches.contains_key(*p)).map(|p| (p, false)));
        }
    }
    below.into_iter().filter(|id| reaches.get(id) == Some(&true)).cloned().collect()
}

/// An event of a room we take part in.
async fn event(
    task: &mut Task,
    write: &mut RoomWrite,
    heads: &mut Heads,
    pdu: Pdu,
    forward_it: bool,
    prev_states: &HashMap<OwnedEventId, StateIds>,
) -> Outcome {
    if !write.events(&[pdu.event_id.as_str()]).await?.is_empty() {
        return Ok(Ok(appended(pdu, true, false, false)));
    }
    let room_id = pdu.room_id.clone();
    let Some(head) = head(write, heads, &room_id).await? else { return Ok(Err(RoomError::NotFound)) };
    let (head_group, old_extremities) = (head.group, head.extremities.clone());
    let version = match RoomVersionId::try_from(head.version.as_str()) {
        Ok(version) => version,
        Err(_) => return Ok(Err(RoomError::UnsupportedVersion(head.version.clone()))),
    };
    let rules = match rules(&version) {
        Ok(rules) => rules,
        Err(err) => return Ok(Err(err)),
    };
    match place(task, write, heads, &rules, pdu, head_group, &old_extremities, forward_it, prev_states).await {
        Ok(result) => Ok(Ok(result)),
        Err(RoomError::Storage(err)) => Err(err),
        Err(refused) => Ok(Err(refused)),
    }
}

/// Checks and stores an event; refusals come back before anything is written.
#[allow(clippy::too_many_arguments)]
async fn place(
    task: &mut Task,
    write: &mut RoomWrite,
    heads: &mut Heads,
    rules: &RoomVersionRules,
    pdu: Pdu,
    head_group: i64,
    old_extremities: &[(String, i64)],
    forward_it: bool,
    prev_states: &HashMap<OwnedEventId, StateIds>,
) -> Result<Appended, RoomError> {
    let room_id = pdu.room_id.clone();
    let mut loaded = Loaded::new();

    // The state after each prev event: ours if it is in our timeline, else given.
    let prev_ids: Vec<&str> = pdu.prev_events.iter().map(|id| id.as_str()).collect();
    let prevs = write.events(&prev_ids).await?;
    let mut states = Vec::new();
    let mut prev_groups = Vec::new();
    let mut missing = Vec::new();
    for id in &pdu.prev_events {
        match prevs.iter().find(|e| e.event_id == id.as_str()) {
            Some(prev) if prev.room_id != room_id.as_str() => {
                return Err(RoomError::Forbidden(format!("prev event {id} is in another room")));
            }
            Some(prev) if prev.stream_ordering > 0 => {
                states.push(write.state_at_group(prev.state_group).await?);
                prev_groups.push(prev.state_group);
            }
            _ => match prev_states.get(id) {
                Some(state) => states.push(state.clone()),
                None => missing.push(id.clone()),
            },
        }
    }
    // Every auth event must be at hand (stored, possibly as an outlier).
    let mut auth_ids: Vec<&str> = pdu.auth_events.iter().map(|id| id.as_str()).collect();
    // From room version 12 the create event is implied by the room ID, not listed.
    let create_id = format!("${}", &room_id.as_str()[1..]);
    if rules.authorization.room_create_event_id_as_room_id {
        auth_ids.push(&create_id);
    }
    load(write, &mut loaded, &auth_ids).await?;
    missing.extend(pdu.auth_events.iter().filter(|id| !loaded.contains_key(*id)).cloned());
    if !missing.is_empty() {
        return Err(RoomError::MissingEvents(missing));
    }
    if pdu.auth_events.iter().any(|id| loaded[id].room_id != room_id) {
        return Err(RoomError::Forbidden("an auth event is in another room".into()));
    }

    // 1. The event against its own auth events.
    ruma_state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, |id| loaded.get(id))
        .map_err(|e| RoomError::Forbidden(format!("rejected: {e}")))?;
    let auth_state: StateIds = auth_ids
        .iter()
        .filter_map(|id| loaded.get(&*EventId::parse(*id).ok()?))
        .filter_map(|a| Some(((a.kind.to_string(), a.state_key.clone()?), a.event_id.to_string())))
        .collect();
    allowed_by(write, &mut loaded, rules, &pdu, &auth_state)
        .await?
        .map_err(|e| RoomError::Forbidden(format!("rejected by its auth events: {e}")))?;

    // 2. Against the state before it.
    let before = match states.len() {
        0 => return Err(RoomError::InvalidEvent("an event needs prev_events".into())),
        1 => states.pop().expect("one state"),
        _ => resolve(write, &mut loaded, rules, &states).await?,
    };
    allowed_by(write, &mut loaded, rules, &pdu, &before)
        .await?
        .map_err(|e| RoomError::Forbidden(format!("rejected by the state before it: {e}")))?;
    let mut after = before.clone();
    if let Some(key) = &pdu.state_key {
        after.insert((pdu.kind.to_string(), key.clone()), pdu.event_id.to_string());
    }

    // 3. Against the current state: an event that fails is kept but not shown (soft failure).
    let current = write.current_state_ids(room_id.as_str()).await?;
    let (kind, json, membership) = (pdu.kind.to_string(), pdu.json_string(), membership_of(&pdu));
    if current != before && allowed_by(write, &mut loaded, rules, &pdu, &current).await?.is_err() {
        tracing::info!(event_id = %pdu.event_id, "soft-failed an event from another server");
        write.insert_event(new_event(&pdu, &kind, &json, membership.as_deref()), 0, None, true).await?;
        return Ok(appended(pdu, false, true, false));
    }

    let redaction = match pdu.kind {
        TimelineEventType::RoomRedaction => redaction(write, &mut loaded, rules, &pdu, &before).await?,
        _ => None,
    };

    // The new extremities and current state, worked out before anything is written: a
    // failure from here on would leave the event stored but not placed.
    let builds_on_all = old_extremities.iter().all(|(id, _)| prev_ids.contains(&id.as_str()));
    let mut extremities: Vec<(String, i64)> =
        old_extremities.iter().filter(|(id, _)| !prev_ids.contains(&id.as_str())).cloned().collect();
    extremities.push((pdu.event_id.to_string(), pdu.depth));
    let resolved = if builds_on_all || after == current {
        None
    } else {
        // The event is not stored yet, and resolution must see it.
        loaded.insert(pdu.event_id.clone(), pdu.clone());
        Some(resolve(write, &mut loaded, rules, &[current.clone(), after.clone()]).await?).filter(|r| *r != current)
    };
    let new_current = if builds_on_all { &after } else { resolved.as_ref().unwrap_or(&current) };
    let current_ids: HashSet<&String> = current.values().collect();
    let changed: Vec<&str> = new_current
        .iter()
        .filter(|((kind, _), id)| kind == "m.room.member" && !current_ids.contains(id))
        .map(|(_, id)| id.as_str())
        .collect();
    load(write, &mut loaded, &changed).await?;
    let memberships: HashMap<String, String> = changed
        .iter()
        .filter_map(|id| {
            let member = loaded.get(&*EventId::parse(*id).ok()?)?;
            Some((id.to_string(), membership_of(member).unwrap_or_default()))
        })
        .chain(membership.clone().map(|m| (pdu.event_id.to_string(), m)))
        .collect();

    // Store it with the state before and after it, then move the room.
    let before_group = match (prev_groups.as_slice(), pdu.prev_events.len()) {
        ([group], 1) => *group,
        _ => write.snapshot_group(room_id.as_str(), &before).await?,
    };
    let after_group = match &pdu.state_key {
        Some(key) => write.group_with(room_id.as_str(), before_group, (&kind, key, pdu.event_id.as_str())).await?,
        None => before_group,
    };
    write
        .insert_event(new_event(&pdu, &kind, &json, membership.as_deref()), after_group, Some(before_group), false)
        .await?;
    if let Some((target, redacted)) = &redaction {
        write.redact(target, redacted, pdu.event_id.as_str()).await?;
    }
    let group = match &resolved {
        _ if builds_on_all => after_group,
        None => head_group,
        Some(resolved) => write.snapshot_group(room_id.as_str(), resolved).await?,
    };
    if group != head_group {
        write.replace_current_state(room_id.as_str(), new_current, group, &memberships).await?;
    }
    let head = heads.get_mut(&room_id).expect("read above");
    (head.group, head.extremities, head.moved) = (group, extremities, true);
    head.redactions += i64::from(redaction.is_some());
    task.rooms.remove(&room_id);

    let forwarded = if forward_it {
        let origin = crate::federation::e2ee::server_of(pdu.sender.as_str()).to_owned();
        forward(write, heads, &task.server_name, &pdu, Some(&origin)).await?
    } else {
        false
    };
    Ok(appended(pdu, false, false, forwarded))
}

/// A redaction from another server, if its target is here and it may be applied: the target
/// and its redacted JSON. (An event whose redaction may not be applied is still accepted.)
async fn redaction(
    write: &mut RoomWrite,
    loaded: &mut Loaded,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state: &StateIds,
) -> Result<Option<(String, String)>, RoomError> {
    let Some(target_id) = &pdu.redacts else { return Ok(None) };
    load(write, loaded, &[target_id.as_str()]).await?;
    let Some(target) = loaded.get(target_id).cloned() else { return Ok(None) };
    if target.room_id != pdu.room_id {
        return Ok(None);
    }
    let same_server = target.sender.server_name() == pdu.sender.server_name();
    if !same_server {
        let ids: Vec<&str> = ["m.room.create", "m.room.power_levels"]
            .iter()
            .filter_map(|kind| state.get(&((*kind).to_owned(), String::new())).map(String::as_str))
            .collect();
        load(write, loaded, &ids).await?;
        let get = |kind: &str| {
            state.get(&(kind.to_owned(), String::new())).and_then(|id| loaded.get(&*EventId::parse(id).ok()?))
        };
        let Some(create) = get("m.room.create") else { return Ok(None) };
        let levels = PowerLevels::from_events(create, get("m.room.power_levels"), rules);
        if levels.user_level(&pdu.sender) < levels.redact {
            return Ok(None);
        }
    }
    Ok(Some((target.event_id.to_string(), target.redacted(rules)?.json_string())))
}

/// A local user's join to a room of other servers.
async fn joined(
    task: &mut Task,
    write: &mut RoomWrite,
    heads: &mut Heads,
    version: RoomVersionId,
    join: Pdu,
    state: Vec<Pdu>,
    auth_chain: Vec<Pdu>,
) -> Outcome {
    if !write.events(&[join.event_id.as_str()]).await?.is_empty() {
        return Ok(Ok(appended(join, true, false, false)));
    }
    let room_id = join.room_id.clone();
    // Checked again under the lock: another local user may have joined meanwhile, and then the
    // room's state is ours to keep, not to replace.
    if write.resident_servers(room_id.as_str()).await?.contains(&task.server_name) {
        return Ok(Err(RoomError::Forbidden("this server is in the room already; join again".into())));
    }
    write.ensure_room(room_id.as_str(), version.as_str(), now_ms()).await?;
    store_outliers(write, &auth_chain).await?;
    store_outliers(write, &state).await?;
    let before: StateIds = state
        .iter()
        .filter_map(|p| Some(((p.kind.to_string(), p.state_key.clone()?), p.event_id.to_string())))
        .collect();
    let before_group = write.snapshot_group(room_id.as_str(), &before).await?;
    let (kind, json) = (join.kind.to_string(), join.json_string());
    let key = join.state_key.clone().unwrap_or_default();
    let after_group = write.group_with(room_id.as_str(), before_group, (&kind, &key, join.event_id.as_str())).await?;
    write.insert_event(new_event(&join, &kind, &json, Some("join")), after_group, Some(before_group), false).await?;
    let mut after = before;
    after.insert((kind, key.clone()), join.event_id.to_string());
    let memberships: HashMap<String, String> =
        state.iter().chain([&join]).filter_map(|p| Some((p.event_id.to_string(), membership_of(p)?))).collect();
    write.replace_current_state(room_id.as_str(), &after, after_group, &memberships).await?;
    write.set_invite_state(room_id.as_str(), &key, None).await?;
    let extremities = vec![(join.event_id.to_string(), join.depth)];
    // The room row may predate this join (we were in it before): the next group reads its count.
    let head = Head {
        version: version.to_string(),
        group: after_group,
        redactions: -1,
        extremities,
        moved: true,
        servers: None,
    };
    heads.insert(room_id.clone(), head);
    task.rooms.remove(&room_id);
    Ok(Ok(appended(join, false, false, false)))
}

/// An invite to, or a leave from, a room this server does not take part in.
async fn membership(
    task: &mut Task,
    write: &mut RoomWrite,
    heads: &mut Heads,
    version: &RoomVersionId,
    pdu: Pdu,
    stripped: Option<&str>,
) -> Outcome {
    if !write.events(&[pdu.event_id.as_str()]).await?.is_empty() {
        return Ok(Ok(appended(pdu, true, false, false)));
    }
    let Some(key) = pdu.state_key.clone() else {
        return Ok(Err(RoomError::InvalidEvent("a member event needs a state key".into())));
    };
    let room_id = pdu.room_id.clone();
    if write.resident_servers(room_id.as_str()).await?.contains(&task.server_name) {
        return Ok(Err(RoomError::Forbidden("this server is in the room: the change goes through it".into())));
    }
    write.ensure_room(room_id.as_str(), version.as_str(), now_ms()).await?;
    let Some(head) = head(write, heads, &room_id).await? else { return Ok(Err(RoomError::NotFound)) };
    let before_group = head.group;
    let (kind, json, membership) = (pdu.kind.to_string(), pdu.json_string(), membership_of(&pdu));
    let group = write.group_with(room_id.as_str(), before_group, (&kind, &key, pdu.event_id.as_str())).await?;
    write.insert_event(new_event(&pdu, &kind, &json, membership.as_deref()), group, Some(before_group), false).await?;
    write.set_current_entry(room_id.as_str(), (&kind, &key, pdu.event_id.as_str()), membership.as_deref()).await?;
    write.set_current_group(room_id.as_str(), group).await?;
    write.set_invite_state(room_id.as_str(), &key, stripped).await?;
    if let Some(head) = heads.get_mut(&room_id) {
        head.group = group;
    }
    task.rooms.remove(&room_id);
    Ok(Ok(appended(pdu, false, false, false)))
}
