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
    /// Whether a previous request with the same transaction ID produced it.
    pub replayed: bool,
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
    };
    state.writer.append(request).await
}

/// An append as the writer task receives it.
struct Request {
    target: OwnedTarget,
    sender: OwnedUserId,
    template: PduTemplate,
    txn: Option<OwnedTxn>,
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
