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

-- One position for every stream (events, account data, receipts, typing, presence), taken
-- from this single row inside the writing transaction. The row lock (PostgreSQL) or the write
-- lock (SQLite) orders commits by position, so a reader that sees position N has every change
-- up to N: sync tokens can be one number and never skip a change.
CREATE TABLE stream_head (
    id                 INTEGER PRIMARY KEY NOT NULL CHECK (id = 0),
    position           BIGINT NOT NULL
);
INSERT INTO stream_head (id, position) VALUES (0, 0);

-- Every event, as the signed PDU federation ships (`json`, canonical JSON). `stream_ordering`
-- is the stream position at which this server accepted it: sync tokens and pagination use it.
CREATE TABLE events (
    stream_ordering    INTEGER PRIMARY KEY NOT NULL,
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

-- Account data, global (room_id '') and per room; stream_id is the position of the last change.
CREATE TABLE account_data (
    user_id            TEXT NOT NULL,
    room_id            TEXT NOT NULL,
    data_type          TEXT NOT NULL,
    content            TEXT NOT NULL,
    stream_id          INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, data_type)
);
CREATE INDEX account_data_stream ON account_data (user_id, stream_id);

-- Read receipts (and private ones), the latest per user, type and thread.
CREATE TABLE receipts (
    room_id            TEXT NOT NULL,
    receipt_type       TEXT NOT NULL,
    user_id            TEXT NOT NULL,
    thread_id          TEXT NOT NULL,
    event_id           TEXT NOT NULL,
    ts                 INTEGER NOT NULL,
    stream_id          INTEGER NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_stream ON receipts (room_id, stream_id);

-- Who is typing where, until when.
CREATE TABLE typing (
    room_id            TEXT NOT NULL,
    user_id            TEXT NOT NULL,
    expires_ts         INTEGER NOT NULL,
    stream_id          INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX typing_stream ON typing (room_id, stream_id);

-- Presence of local users.
CREATE TABLE presence (
    user_id            TEXT PRIMARY KEY NOT NULL,
    presence           TEXT NOT NULL,
    status_msg         TEXT,
    last_active_ts     INTEGER NOT NULL,
    stream_id          INTEGER NOT NULL
);

-- Each local user's server notices room.
CREATE TABLE server_notice_rooms (
    user_id            TEXT PRIMARY KEY NOT NULL,
    room_id            TEXT NOT NULL
);
