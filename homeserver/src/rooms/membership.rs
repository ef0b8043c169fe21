//! Membership changes by local users: join, leave, invite, kick, ban, unban. Whether a change
//! is allowed is the authorization rules' call; this module shapes the `m.room.member` event.

use ruma_common::{RoomId, UserId};

use super::RoomError;
use super::create::member_template;
use super::timeline::{self, Appended, Target};
use crate::state::AppState;

/// A membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The sender joins.
    Join,
    /// The sender leaves (or rejects an invite).
    Leave,
    /// The sender invites the target.
    Invite,
    /// The sender removes the target.
    Kick,
    /// The sender bans the target.
    Ban,
    /// The sender lifts the target's ban.
    Unban,
}

/// Applies a membership change sent by `sender` about `target` (the sender itself for join and
/// leave).
pub async fn change(
    state: &AppState,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    change: Change,
    reason: Option<String>,
) -> Result<Appended, RoomError> {
    if state.storage.room(room_id.as_str()).await?.is_none() {
        return Err(RoomError::NotFound);
    }
    let membership = match change {
        Change::Join => "join",
        Change::Invite => "invite",
        Change::Ban => "ban",
        Change::Leave | Change::Kick | Change::Unban => "leave",
    };
    if change == Change::Unban {
        let current = state.storage.membership(room_id.as_str(), target.as_str()).await?;
        if current.as_ref().is_none_or(|(m, _)| m != "ban") {
            return Err(RoomError::Forbidden(format!("{target} is not banned")));
        }
    }
    if change == Change::Kick {
        let current = state.storage.membership(room_id.as_str(), target.as_str()).await?;
        if current.as_ref().is_none_or(|(m, _)| m == "leave" || m == "ban") {
            return Err(RoomError::Forbidden(format!("{target} is not in the room")));
        }
    }
    if change == Change::Invite && target.server_name().as_str() != state.config.server_name {
        return Err(RoomError::Forbidden(
            "inviting users of other servers needs federation, which is not enabled".into(),
        ));
    }
    // Joins and invites carry the target's profile, as the spec recommends.
    let profile = match change {
        Change::Join | Change::Invite => state.storage.profile(target.as_str()).await?,
        _ => Default::default(),
    };
    let mut template = member_template(target, membership, &profile, false);
    if let Some(reason) = reason {
        template.content["reason"] = reason.into();
    }
    let appended = timeline::append(state, Target::Room(room_id), sender, template, None).await?;
    if change == Change::Join {
        state.storage.set_forgotten(target.as_str(), room_id.as_str(), false).await?;
    }
    Ok(appended)
}
