-- End-to-end encryption support: device keys, one-time and fallback keys, cross-signing keys and
-- the signatures on them, device list changes, to-device messages and server-side key backup.
-- The server stores keys and ciphertext only; it never sees plaintext.

-- Each device's identity keys: the signed `DeviceKeys` object as uploaded.
CREATE TABLE device_keys (
    user_id            TEXT NOT NULL,
    device_id          TEXT NOT NULL,
    key_json           TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- One-time keys, handed out in upload order (`id`) and deleted when claimed: at most once each.
CREATE TABLE one_time_keys (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id            TEXT NOT NULL,
    device_id          TEXT NOT NULL,
    algorithm          TEXT NOT NULL,
    key_id             TEXT NOT NULL,
    key_json           TEXT NOT NULL,
    UNIQUE (user_id, device_id, algorithm, key_id)
);
CREATE INDEX one_time_keys_claim ON one_time_keys (user_id, device_id, algorithm, id);

-- One fallback key per device and algorithm; `used` once claimed (it stays claimable).
CREATE TABLE fallback_keys (
    user_id            TEXT NOT NULL,
    device_id          TEXT NOT NULL,
    algorithm          TEXT NOT NULL,
    key_id             TEXT NOT NULL,
    key_json           TEXT NOT NULL,
    used               INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- Cross-signing keys: `master`, `self_signing`, `user_signing`, as uploaded.
CREATE TABLE cross_signing_keys (
    user_id            TEXT NOT NULL,
    key_type           TEXT NOT NULL,
    key_json           TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures from `/keys/signatures/upload`, merged into the signed object on query. The target
-- is a device ID or a cross-signing public key of `target_user_id`.
CREATE TABLE key_signatures (
    target_user_id     TEXT NOT NULL,
    target_key_id      TEXT NOT NULL,
    signer_user_id     TEXT NOT NULL,
    signer_key_id      TEXT NOT NULL,
    signature          TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
);

-- The last stream position at which a user's devices or cross-signing keys changed.
CREATE TABLE device_list_changes (
    user_id            TEXT PRIMARY KEY NOT NULL,
    stream_id          INTEGER NOT NULL
);
CREATE INDEX device_list_changes_position ON device_list_changes (stream_id);

-- To-device messages waiting for their device; deleted when a later sync acknowledges them.
CREATE TABLE to_device_messages (
    user_id            TEXT NOT NULL,
    device_id          TEXT NOT NULL,
    stream_id          INTEGER NOT NULL,
    sender             TEXT NOT NULL,
    event_type         TEXT NOT NULL,
    content            TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, stream_id)
);

-- `PUT /sendToDevice/{type}/{txnId}` transactions already carried out.
CREATE TABLE to_device_txns (
    user_id            TEXT NOT NULL,
    device_id          TEXT NOT NULL,
    txn_id             TEXT NOT NULL,
    created_ts         INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

-- Server-side key backup versions; deleted ones keep their row so a number is never reused.
CREATE TABLE backup_versions (
    user_id            TEXT NOT NULL,
    version            INTEGER NOT NULL,
    algorithm          TEXT NOT NULL,
    auth_data          TEXT NOT NULL,
    etag               INTEGER NOT NULL,
    deleted            INTEGER NOT NULL,
    PRIMARY KEY (user_id, version)
);

-- Backed-up room keys (encrypted by the client).
CREATE TABLE backup_keys (
    user_id            TEXT NOT NULL,
    version            INTEGER NOT NULL,
    room_id            TEXT NOT NULL,
    session_id         TEXT NOT NULL,
    first_message_index INTEGER NOT NULL,
    forwarded_count    INTEGER NOT NULL,
    is_verified        INTEGER NOT NULL,
    session_data       TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
