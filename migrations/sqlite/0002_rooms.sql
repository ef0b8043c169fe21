-- Rooms, events as PDUs, state at every event, current state, forward extremities,
-- transaction IDs and aliases.

CREATE TABLE rooms (
    room_id            TEXT PRIMARY KEY NOT NULL,
    room_version       TEXT NOT NULL,
    -- The state group of the room's current state.
    current_group      INTEGER NOT NULL,
    -- Whether the room is listed in the public room directory.
    published          INTEGER NOT NULL DEFAULT 0,
    created_ts         INTEGER NOT NULL
);

-- Every event, as the signed PDU federation ships (`json`, canonical JSON). `stream_ordering`
-- is the order in which this server accepted events: sync tokens and pagination use it.
CREATE TABLE events (
    stream_ordering    INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id           TEXT NOT NULL UNIQUE,
    room_id            TEXT NOT NULL REFERENCES rooms (room_id),
    event_type         TEXT NOT NULL,
    state_key          TEXT,
    sender             TEXT NOT NULL,
    origin_server_ts   INTEGER NOT NULL,
    depth              INTEGER NOT NULL,
    -- The state of the room after this event.
    state_group        INTEGER NOT NULL,
    -- Set once the event has been redacted; `json` then holds the redacted PDU.
    redacted_by        TEXT,
    json               TEXT NOT NULL
);
CREATE INDEX events_room_order ON events (room_id, stream_ordering);

-- State is stored as deltas: a group is its `prev_group` plus its own entries, so storage grows
-- with the number of state changes, not with events times room size. Every so often a group is
-- a full snapshot (prev_group NULL) to bound the chain a read walks.
CREATE TABLE state_groups (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id            TEXT NOT NULL,
    prev_group         INTEGER,
    chain_length       INTEGER NOT NULL
);

CREATE TABLE state_group_entries (
    group_id           INTEGER NOT NULL,
    event_type         TEXT NOT NULL,
    state_key          TEXT NOT NULL,
    event_id           TEXT NOT NULL,
    PRIMARY KEY (group_id, event_type, state_key)
);

-- The current state of each room, for fast reads; `membership` is filled for m.room.member.
CREATE TABLE current_state (
    room_id            TEXT NOT NULL,
    event_type         TEXT NOT NULL,
    state_key          TEXT NOT NULL,
    event_id           TEXT NOT NULL,
    membership         TEXT,
    PRIMARY KEY (room_id, event_type, state_key)
);
CREATE INDEX current_state_members ON current_state (state_key, membership);

CREATE TABLE forward_extremities (
    room_id            TEXT NOT NULL,
    event_id           TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- Client transaction IDs, scoped per device and endpoint as the spec asks.
CREATE TABLE event_txns (
    user_id            TEXT NOT NULL,
    device_id          TEXT NOT NULL,
    endpoint           TEXT NOT NULL,
    txn_id             TEXT NOT NULL,
    event_id           TEXT NOT NULL,
    created_ts         INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, endpoint, txn_id)
);

CREATE TABLE room_aliases (
    alias              TEXT PRIMARY KEY NOT NULL,
    room_id            TEXT NOT NULL,
    creator            TEXT NOT NULL,
    created_ts         INTEGER NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

-- Rooms a user has forgotten: hidden from sync until they are in the room again.
CREATE TABLE forgotten_rooms (
    user_id            TEXT NOT NULL,
    room_id            TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

-- Filters uploaded with POST /user/{userId}/filter.
CREATE TABLE filters (
    filter_id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id            TEXT NOT NULL,
    json               TEXT NOT NULL
);
