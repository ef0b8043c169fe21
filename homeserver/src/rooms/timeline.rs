//! The append path for events created on this server: select auth events and prev events,
//! build and sign the PDU, check the room version's authorization rules against the current
//! state, then persist it and wake waiting syncs.
//!
//! Every append of the process goes through one writer task ([`writer`]), which takes the
//! appends waiting at the time into one database transaction: one commit (one fsync) for the
//! whole group, with each event still built on the one before it, authorized, and durable
//! before its sender hears back.

mod writer;

use ruma_common::{OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId};

pub use self::writer::Writer;
use super::RoomError;
use super::pdu::{Pdu, PduTemplate};
use crate::state::AppState;
use crate::storage::TxnKey;

/// An event appended to a room.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The event.
    pub pdu: Pdu,
    /// Whether a previous request with the same transaction ID produced it (for events from
    /// other servers: whether it was known already).
    pub replayed: bool,
    /// For events from other servers: kept, but not placed in the timeline because the room's
    /// current state does not allow it (soft failure).
    pub soft_failed: bool,
    /// Whether it was queued for other servers.
    pub forwarded: bool,
}

impl Appended {
    fn new(pdu: Pdu, replayed: bool) -> Self {
        Self { pdu, replayed, soft_failed: false, forwarded: false }
    }
}

/// Events from other servers for the writer.
pub enum Incoming {
    /// An event of a room this server takes part in, signatures and hashes checked. It is
    /// authorized against its auth events, the state before it and the current state, placed,
    /// and the room's state resolved. `outliers` are stored first (auth events and state
    /// fetched to fill gaps); `prev_states` gives the state after prev events that are not in
    /// our timeline. With `forward`, it is queued for the other servers in the room (an event
    /// a server handed us to send on its behalf: joins, leaves, our invites).
    Event {
        /// The event.
        pdu: Pdu,
        /// Whether to send it to the other servers in the room.
        forward: bool,
        /// Events to keep first, without placing them.
        outliers: Vec<Pdu>,
        /// The state after each prev event missing from our timeline.
        prev_states: std::collections::HashMap<ruma_common::OwnedEventId, crate::storage::StateIds>,
    },
    /// A local user's join to a room of other servers, with the state before it (and its auth
    /// chain) as the resident server sent them.
    Joined {
        /// The room version.
        version: RoomVersionId,
        /// The join event.
        join: Pdu,
        /// The state before the join.
        state: Vec<Pdu>,
        /// The auth chain of the state and the join.
        auth_chain: Vec<Pdu>,
    },
    /// An invite to, or a leave from, a room this server does not take part in, for a local
    /// user; `stripped` is the invite's stripped room state.
    Membership {
        /// The room version.
        version: RoomVersionId,
        /// The member event.
        pdu: Pdu,
        /// For invites: the stripped state to show the invitee.
        stripped: Option<String>,
    },
}

/// Hands the writer something another server sent.
pub async fn receive(state: &AppState, incoming: Incoming) -> Result<Appended, RoomError> {
    state.writer.receive(incoming).await
}

/// Builds, signs and authorizes an event from local user `sender` on top of the room's current
/// state without storing it: for events another server must sign first (invites).
pub async fn build(
    state: &AppState,
    room_id: &RoomId,
    sender: &UserId,
    template: PduTemplate,
) -> Result<Pdu, RoomError> {
    let request = Request {
        target: OwnedTarget::Room(room_id.to_owned()),
        sender: sender.to_owned(),
        template,
        txn: None,
        dry_run: true,
    };
    Ok(state.writer.append(request).await?.pdu)
}

/// Where the event goes.
pub enum Target<'a> {
    /// An existing room.
    Room(&'a RoomId),
    /// A new room: this is its create event (for room versions whose room IDs carry a server
    /// name, the ID to use).
    NewRoom {
        /// The room version.
        version: RoomVersionId,
        /// The room ID, for versions whose IDs are not derived from the create event.
        room_id: Option<&'a RoomId>,
        /// Whether to list the room in the public directory.
        published: bool,
    },
}

/// Appends an event sent by local user `sender`. With `txn`, a repeated transaction returns the
/// event of the first attempt instead of sending again.
pub async fn append(
    state: &AppState,
    target: Target<'_>,
    sender: &UserId,
    template: PduTemplate,
    txn: Option<TxnKey<'_>>,
) -> Result<Appended, RoomError> {
    let request = Request {
        target: match target {
            Target::Room(room_id) => OwnedTarget::Room(room_id.to_owned()),
            Target::NewRoom { version, room_id, published } => {
                OwnedTarget::NewRoom { version, room_id: room_id.map(ToOwned::to_owned), published }
            }
        },
        sender: sender.to_owned(),
        template,
        txn: txn.map(|t| OwnedTxn {
            user_id: t.user_id.to_owned(),
            device_id: t.device_id.to_owned(),
            endpoint: t.endpoint.to_owned(),
            txn_id: t.txn_id.to_owned(),
        }),
        dry_run: false,
    };
    state.writer.append(request).await
}

/// An append as the writer task receives it.
struct Request {
    target: OwnedTarget,
    sender: OwnedUserId,
    template: PduTemplate,
    txn: Option<OwnedTxn>,
    /// Build and authorize only.
    dry_run: bool,
}

enum OwnedTarget {
    Room(OwnedRoomId),
    NewRoom { version: RoomVersionId, room_id: Option<OwnedRoomId>, published: bool },
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct OwnedTxn {
    user_id: String,
    device_id: String,
    endpoint: String,
    txn_id: String,
}

impl OwnedTxn {
    fn key(&self) -> TxnKey<'_> {
        TxnKey { user_id: &self.user_id, device_id: &self.device_id, endpoint: &self.endpoint, txn_id: &self.txn_id }
    }
}
