-- Accounts, devices, access tokens, profiles and user-interactive auth sessions.
-- Times are BIGINT milliseconds since the Unix epoch; JSON is TEXT (see NOTES.md).

CREATE TABLE users (
    user_id        TEXT PRIMARY KEY NOT NULL,
    password_hash  TEXT,
    created_ts     BIGINT NOT NULL
);

CREATE TABLE devices (
    user_id        TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    device_id      TEXT NOT NULL,
    display_name   TEXT,
    last_seen_ip   TEXT,
    last_seen_ts   BIGINT,
    created_ts     BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Only the SHA-256 of each access token is stored: a leaked database does not leak sessions.
CREATE TABLE access_tokens (
    token_hash     TEXT PRIMARY KEY NOT NULL,
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    created_ts     BIGINT NOT NULL,
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

-- One row per profile field (displayname, avatar_url, m.tz, custom fields); value is JSON.
CREATE TABLE profile_fields (
    user_id        TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    field          TEXT NOT NULL,
    value          TEXT NOT NULL,
    PRIMARY KEY (user_id, field)
);

-- User-interactive authentication sessions live in the database, not in process memory,
-- so that any homeserver process sharing the database can continue a session.
CREATE TABLE uia_sessions (
    session_id     TEXT PRIMARY KEY NOT NULL,
    purpose        TEXT NOT NULL,
    user_id        TEXT,
    completed      TEXT NOT NULL,
    created_ts     BIGINT NOT NULL
);
CREATE INDEX uia_sessions_created ON uia_sessions (created_ts);
