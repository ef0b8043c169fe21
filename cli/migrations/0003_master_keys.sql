-- Other users' master cross-signing keys, pinned when first seen: a different key later is an
-- identity change the user is told about, never trusted silently.
CREATE TABLE master_keys (
    user_id TEXT PRIMARY KEY NOT NULL,
    master_key TEXT NOT NULL,
    -- This key (not an earlier one) was confirmed by SAS verification.
    verified INTEGER NOT NULL DEFAULT 0,
    -- The key pinned before a change that no verification has confirmed yet.
    previous TEXT
);
