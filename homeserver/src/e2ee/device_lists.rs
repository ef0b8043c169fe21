//! Which users' device lists a user must re-fetch, and which they stopped sharing rooms with:
//! sync's `device_lists` and `GET /keys/changes`.
//! <https://spec.matrix.org/v1.19/client-server-api/#tracking-the-device-list-for-a-user>

use std::collections::BTreeSet;

use crate::rooms::pdu::EventView;
use crate::storage::{self, Storage};

/// `changed` and `left` of a range of the stream.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Users whose devices or cross-signing keys changed, or who newly share a room.
    pub changed: Vec<String>,
    /// Users who no longer share any room.
    pub left: Vec<String>,
}

/// The changes `user_id` must hear about in the stream range `(after, until]`: device and key
/// changes of the user and of users sharing a room with them, users who started sharing a room
/// (they joined one of the user's rooms, or the user joined theirs), and users who no longer
/// share any room (they left, or the user did).
pub async fn changes(storage: &Storage, user_id: &str, after: i64, until: i64) -> Result<Changes, storage::Error> {
    let sharing: BTreeSet<String> = storage.users_sharing_rooms(user_id).await?.into_iter().collect();
    let mut changed: BTreeSet<String> = storage.device_list_changes(user_id, after, until).await?.into_iter().collect();
    let mut left = BTreeSet::new();
    for (room_id, target, json) in storage.membership_events_in_my_rooms(user_id, after, until).await? {
        let membership = EventView::parse(&json).ok().and_then(|e| e.content["membership"].as_str().map(str::to_owned));
        let Some(membership) = membership else { continue };
        let joined = membership == "join";
        let departed = membership == "leave" || membership == "ban";
        if target == user_id && (joined || departed) {
            // The user's own join or departure changes whom they share rooms with.
            for (member, member_membership) in storage.members(&room_id).await? {
                if member == user_id || member_membership != "join" {
                    continue;
                }
                match sharing.contains(&member) {
                    true if joined => changed.insert(member),
                    false if departed => left.insert(member),
                    _ => false,
                };
            }
        } else if joined && sharing.contains(&target) {
            changed.insert(target);
        } else if departed && !sharing.contains(&target) {
            left.insert(target);
        }
    }
    // A user who left and came back within the range shares a room now.
    left.retain(|u| !sharing.contains(u));
    Ok(Changes { changed: changed.into_iter().collect(), left: left.into_iter().collect() })
}
