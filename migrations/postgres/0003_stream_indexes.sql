-- Incremental syncs ask which rooms changed in a stream range across all rooms, and which
-- presence changed in it: these indexes answer by position instead of scanning every room.
CREATE INDEX typing_position ON typing (stream_id);
CREATE INDEX receipts_position ON receipts (stream_id);
CREATE INDEX presence_position ON presence (stream_id);
