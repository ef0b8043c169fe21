-- Rooms shared with other servers.
--
-- The state group holding the room state *before* an event (the state it was authorized
-- against). For events built here it is the group the room was at; for events from other
-- servers it is the resolved state of their prev_events. Sync uses it for the state at the start
-- of a timeline, which for a room joined over federation is not the state after any earlier
-- event of ours. NULL on rows from before this migration: the state after the previous event.
ALTER TABLE events ADD COLUMN state_before_group INTEGER;

-- Events a server holds without placing them in its timeline ("outliers": the state and auth
-- chain received when joining over federation, events fetched to check auth, soft-failed
-- events) take negative stream orderings, counting down. Every timeline and sync read selects
-- stream_ordering > 0, so they are never shown as new, yet they are found by ID like any event.

-- Invites from other servers to rooms this server is not in: the stripped state the inviting
-- server sent along, shown in the invitee's sync.
CREATE TABLE invite_state (
    room_id            TEXT NOT NULL,
    user_id            TEXT NOT NULL,
    json               TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
