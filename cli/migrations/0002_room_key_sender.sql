-- The user whose device sent a room key over Olm (authenticated): events decrypted with the
-- session must come from that user. Empty for keys imported from a file (not authenticated).
ALTER TABLE inbound_group_sessions ADD COLUMN sender_user TEXT NOT NULL DEFAULT '';

-- Rooms seen encrypted: encryption is never switched off, whatever the server says later.
CREATE TABLE encrypted_rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    content TEXT NOT NULL
);
