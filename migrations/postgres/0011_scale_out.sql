-- Several myelin-server processes on one database.
--
-- A count of the redactions applied in a room. A redaction changes a current-state event's
-- content without changing the room's state group, so a process's cached copy of the current
-- state is valid only for the (current_group, redactions) pair it was read at; the writer
-- re-reads both under the room write lock.
ALTER TABLE rooms ADD COLUMN redactions BIGINT NOT NULL DEFAULT 0;

-- Wake-ups for the other processes, delivered by PostgreSQL when (and only if) the writing
-- transaction commits. Triggers rather than calls in the code: no write path can forget one,
-- and they cost no extra round trip.
--
-- myelin_stream: a new stream position (events, account data, receipts, typing, presence,
-- to-device, device lists all take theirs from stream_head): waiting /sync requests look again.
CREATE FUNCTION myelin_notify_stream() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('myelin_stream', NEW.position::text);
    RETURN NULL;
END $$;
CREATE TRIGGER stream_head_notify AFTER UPDATE ON stream_head
    FOR EACH ROW EXECUTE FUNCTION myelin_notify_stream();

-- myelin_outbox: something was queued for another server: the federation senders look again.
CREATE FUNCTION myelin_notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('myelin_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER federation_outbox_notify AFTER INSERT ON federation_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION myelin_notify_outbox();

-- myelin_media: a reserved media ID got its content: downloads waiting for it look again.
CREATE FUNCTION myelin_notify_media() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('myelin_media', '');
    RETURN NULL;
END $$;
CREATE TRIGGER media_uploaded_notify AFTER UPDATE OF sha256 ON media
    FOR EACH STATEMENT EXECUTE FUNCTION myelin_notify_media();
