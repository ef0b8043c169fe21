-- A count of the redactions applied in a room. A redaction changes a current-state event's
-- content without changing the room's state group, so a cached copy of the current state is
-- valid only for the (current_group, redactions) pair it was read at.
--
-- (The PostgreSQL migration of this number also installs the NOTIFY triggers that wake the
-- other processes on one database; SQLite serves one process, which wakes itself.)
ALTER TABLE rooms ADD COLUMN redactions INTEGER NOT NULL DEFAULT 0;
