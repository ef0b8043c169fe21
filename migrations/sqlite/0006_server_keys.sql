-- Other servers' signing keys, as fetched from them (or a notary) and verified. A key stays
-- usable until `valid_until_ts`; a key the server has retired (an `old_verify_keys` entry) only
-- for events older than `expired_ts`.
CREATE TABLE server_keys (
    server_name        TEXT NOT NULL,
    key_id             TEXT NOT NULL,
    public_key         TEXT NOT NULL,
    valid_until_ts     INTEGER NOT NULL,
    expired_ts         INTEGER,
    -- The signed key document the key came in, served again to those who ask us as a notary.
    response_json      TEXT NOT NULL,
    fetched_ts         INTEGER NOT NULL,
    PRIMARY KEY (server_name, key_id)
);
