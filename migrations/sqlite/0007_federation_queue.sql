-- Outbound federation: what each destination server has yet to receive, in the order it
-- happened. Rows are deleted once the destination has acknowledged the transaction holding them.
CREATE TABLE federation_outbox (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    destination        TEXT NOT NULL,
    -- 'pdu' or 'edu'
    kind               TEXT NOT NULL,
    json               TEXT NOT NULL,
    created_ts         INTEGER NOT NULL
);
CREATE INDEX federation_outbox_by_destination ON federation_outbox (destination, id);

-- Per destination: the retry schedule, which process is sending to it (a lease, so that several
-- processes on one database never send to one server at once), and the transaction in flight:
-- a retry sends exactly the same transaction again, so the receiver can recognise it.
CREATE TABLE federation_destinations (
    destination        TEXT PRIMARY KEY NOT NULL,
    failures           INTEGER NOT NULL DEFAULT 0,
    retry_at           INTEGER NOT NULL DEFAULT 0,
    lease_owner        TEXT,
    lease_until        INTEGER NOT NULL DEFAULT 0,
    txn_id             TEXT,
    txn_last_id        INTEGER
);

-- Transactions received from other servers and our answer: a repeated transaction gets the
-- same answer and is not processed twice.
CREATE TABLE federation_received_txns (
    origin             TEXT NOT NULL,
    txn_id             TEXT NOT NULL,
    response           TEXT NOT NULL,
    received_ts        INTEGER NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
