//! `createRoom`: the sequence of events that makes a room, in the order the spec gives.
//! <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3createroom>

use ruma_common::{OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId};
use ruma_events::TimelineEventType;
use serde_json::{Map, Value, json};

use super::RoomError;
use super::pdu::PduTemplate;
use super::timeline::{self, Target};
use crate::state::AppState;
use crate::storage::{self, now_ms};

/// The presets of `createRoom`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Invite-only, shared history, guests may join.
    PrivateChat,
    /// As private, and every invitee gets the creator's power level.
    TrustedPrivateChat,
    /// Anyone may join, shared history, no guests.
    PublicChat,
}

/// What the client asked for.
#[derive(Clone, Debug, Default)]
pub struct NewRoom {
    /// The preset; by default derived from `public`.
    pub preset: Option<Preset>,
    /// Whether to publish the room in the directory (`visibility: public`).
    pub public: bool,
    /// `m.room.name`.
    pub name: Option<String>,
    /// `m.room.topic`.
    pub topic: Option<String>,
    /// Users to invite.
    pub invite: Vec<OwnedUserId>,
    /// Whether the invites are for a direct chat.
    pub is_direct: bool,
    /// Extra state events `(type, state_key, content)`.
    pub initial_state: Vec<(String, String, Value)>,
    /// Localpart of an alias to create.
    pub alias_localpart: Option<String>,
    /// Keys to merge into the default power levels.
    pub power_level_override: Option<Map<String, Value>>,
    /// Extra keys for the create event's content.
    pub creation_content: Option<Map<String, Value>>,
    /// The room version; the server default when absent.
    pub room_version: Option<String>,
}

/// Creates a room and returns its ID.
pub async fn create_room(state: &AppState, creator: &UserId, new: NewRoom) -> Result<OwnedRoomId, RoomError> {
    let version = match &new.room_version {
        Some(v) => RoomVersionId::try_from(v.as_str()).map_err(|_| RoomError::UnsupportedVersion(v.clone()))?,
        None => super::version::DEFAULT,
    };
    let rules = super::version::rules(&version).ok_or_else(|| RoomError::UnsupportedVersion(version.to_string()))?;
    let server_name = &state.config.server_name;
    let alias = match &new.alias_localpart {
        Some(localpart) => {
            let alias = format!("#{localpart}:{server_name}");
            ruma_common::RoomAliasId::parse(&alias)
                .map_err(|e| RoomError::InvalidEvent(format!("invalid alias: {e}")))?;
            if state.storage.alias(&alias).await?.is_some() {
                return Err(RoomError::AliasInUse);
            }
            Some(alias)
        }
        None => None,
    };
    // Refuse what would fail half-way, before any event exists. (With federation, the caller
    // invites users of other servers once the room exists: their servers must sign the invite.)
    if state.federation_client.is_none()
        && let Some(remote) = new.invite.iter().find(|u| u.server_name().as_str() != server_name.as_str())
    {
        return Err(RoomError::Forbidden(format!(
            "cannot invite {remote}: inviting users of other servers needs federation"
        )));
    }
    let mut new = new;
    new.invite.retain(|u| u != creator);
    new.invite.dedup();
    let preset = new.preset.unwrap_or(if new.public { Preset::PublicChat } else { Preset::PrivateChat });
    let v12 = rules.authorization.explicitly_privilege_room_creators;

    // 1. The create event.
    let mut create_content = new.creation_content.clone().unwrap_or_default();
    create_content.insert("room_version".into(), version.as_str().into());
    if !rules.authorization.use_room_create_sender {
        create_content.insert("creator".into(), creator.as_str().into());
    }
    let create = state_template(TimelineEventType::RoomCreate, "", Value::Object(create_content));
    let server = ruma_common::ServerName::parse(server_name).map_err(|e| RoomError::InvalidEvent(e.to_string()))?;
    let room_id_v1 = (!rules.authorization.room_create_event_id_as_room_id).then(|| RoomId::new_v1(&server));
    let target = Target::NewRoom { version, room_id: room_id_v1.as_deref(), published: new.public };
    let created = timeline::append(state, target, creator, create, None).await?;
    let room_id = created.pdu.room_id;
    let send = |template: PduTemplate| {
        let room_id = room_id.clone();
        async move { timeline::append(state, Target::Room(&room_id), creator, template, None).await }
    };

    // 2. The creator joins.
    let profile = state.storage.profile(creator.as_str()).await?;
    send(member_template(creator, "join", &profile, false)).await?;

    // 3. Power levels: defaults, invitees of a trusted chat at 100, then the override.
    let mut users = Map::new();
    if !v12 {
        users.insert(creator.to_string(), 100.into());
    }
    if preset == Preset::TrustedPrivateChat {
        for invitee in &new.invite {
            users.insert(invitee.to_string(), 100.into());
        }
    }
    let mut levels = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
            "m.room.server_acl": 100, "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": if preset == Preset::PublicChat { 0 } else { 50 },
        "notifications": {"room": 50},
    });
    if let (Some(overrides), Some(object)) = (&new.power_level_override, levels.as_object_mut()) {
        for (k, v) in overrides {
            object.insert(k.clone(), v.clone());
        }
    }
    send(state_template(TimelineEventType::RoomPowerLevels, "", levels)).await?;

    // 4. The canonical alias.
    if let Some(alias) = &alias {
        match state.storage.create_alias(alias, room_id.as_str(), creator.as_str(), now_ms()).await {
            Err(storage::Error::Conflict { .. }) => return Err(RoomError::AliasInUse),
            other => other?,
        }
        send(state_template(TimelineEventType::RoomCanonicalAlias, "", json!({"alias": alias}))).await?;
    }

    // 5. The preset's events.
    let (join_rule, guest_access) = match preset {
        Preset::PublicChat => ("public", "forbidden"),
        Preset::PrivateChat | Preset::TrustedPrivateChat => ("invite", "can_join"),
    };
    send(state_template(TimelineEventType::RoomJoinRules, "", json!({"join_rule": join_rule}))).await?;
    send(state_template(TimelineEventType::RoomHistoryVisibility, "", json!({"history_visibility": "shared"}))).await?;
    send(state_template(TimelineEventType::RoomGuestAccess, "", json!({"guest_access": guest_access}))).await?;

    // 6. initial_state, which may override the preset's events.
    for (kind, state_key, content) in new.initial_state {
        send(state_template(TimelineEventType::from(kind.as_str()), &state_key, content)).await?;
    }

    // 7. Name and topic.
    if let Some(name) = new.name {
        send(state_template(TimelineEventType::RoomName, "", json!({"name": name}))).await?;
    }
    if let Some(topic) = new.topic {
        send(state_template(TimelineEventType::RoomTopic, "", json!({"topic": topic}))).await?;
    }

    // 8. Invites (of local users; see above).
    for invitee in new.invite.iter().filter(|u| u.server_name().as_str() == server_name.as_str()) {
        let profile = state.storage.profile(invitee.as_str()).await?;
        send(member_template(invitee, "invite", &profile, new.is_direct)).await?;
    }
    tracing::info!(%room_id, %creator, "room created");
    Ok(room_id)
}

/// A state event template.
pub fn state_template(kind: TimelineEventType, state_key: &str, content: Value) -> PduTemplate {
    PduTemplate { kind, state_key: Some(state_key.to_owned()), content }
}

/// An `m.room.member` template for `target`, carrying their profile as the spec suggests.
pub fn member_template(
    target: &UserId,
    membership: &str,
    profile: &std::collections::BTreeMap<String, Value>,
    is_direct: bool,
) -> PduTemplate {
    let mut content = json!({"membership": membership});
    for field in ["displayname", "avatar_url"] {
        if let Some(Value::String(value)) = profile.get(field) {
            content[field] = value.as_str().into();
        }
    }
    if is_direct {
        content["is_direct"] = true.into();
    }
    state_template(TimelineEventType::RoomMember, target.as_str(), content)
}
