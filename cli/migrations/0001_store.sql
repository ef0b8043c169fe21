-- The CLI's local store. Values in `secrets`, `olm_sessions`, `inbound_group_sessions`,
-- `outbound_group_sessions` and `inbox` are encrypted with the profile's store key.

-- Non-secret settings: the sync token, cursors.
CREATE TABLE kv (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

-- Secret values: the Olm account, cross-signing keys.
CREATE TABLE secrets (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);

-- Device keys of other users (and our own other devices), verified by their self-signature.
CREATE TABLE devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    curve25519 TEXT NOT NULL,
    ed25519 TEXT NOT NULL,
    display_name TEXT,
    verified INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id)
);
CREATE INDEX devices_by_curve25519 ON devices (curve25519);

CREATE TABLE olm_sessions (
    session_id TEXT PRIMARY KEY NOT NULL,
    sender_key TEXT NOT NULL,
    pickle BLOB NOT NULL,
    last_used_ms INTEGER NOT NULL
);
CREATE INDEX olm_sessions_by_sender_key ON olm_sessions (sender_key);

CREATE TABLE inbound_group_sessions (
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    sender_key TEXT NOT NULL,
    -- The Ed25519 key the sender's device claimed in the Olm-encrypted m.room_key.
    claimed_ed25519 TEXT NOT NULL,
    pickle BLOB NOT NULL,
    first_index INTEGER NOT NULL,
    PRIMARY KEY (room_id, session_id)
);

CREATE TABLE outbound_group_sessions (
    room_id TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL,
    pickle BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    messages INTEGER NOT NULL,
    -- JSON array of "user_id device_id" the session key was sent to.
    shared_with TEXT NOT NULL
);

-- Which event used which Megolm message index: a second event at the same index is a replay.
CREATE TABLE megolm_indexes (
    session_id TEXT NOT NULL,
    message_index INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (session_id, message_index)
);

-- Timeline events seen by incremental syncs, waiting for `myelin listen` to print them.
CREATE TABLE inbox (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL,
    event BLOB NOT NULL
);
