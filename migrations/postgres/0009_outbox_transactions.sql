-- The transaction an outbox row was sent in: a retry resends exactly these rows, and only
-- they are deleted when the destination acknowledges (rows that commit late, out of id order,
-- are never swept up by an id range).
ALTER TABLE federation_outbox ADD COLUMN txn_id TEXT;
CREATE INDEX federation_outbox_by_txn ON federation_outbox (destination, txn_id);
