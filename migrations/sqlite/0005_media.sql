-- The media repository's metadata; the bytes live in the object store under sha256/<hash>, so
-- identical uploads share one object.
CREATE TABLE media (
    media_id           TEXT PRIMARY KEY NOT NULL,
    uploader           TEXT NOT NULL,
    created_ts         INTEGER NOT NULL,
    -- Set by POST /create: the upload must arrive before then. NULL once uploaded.
    unused_expires_ts  INTEGER,
    content_type       TEXT,
    upload_name        TEXT,
    size               INTEGER,
    sha256             TEXT
);
CREATE INDEX media_sha256 ON media (sha256);
CREATE INDEX media_uploader ON media (uploader, created_ts);
