-- Media of other servers, fetched over federation and kept: the bytes live in the object store
-- beside local media (sha256/<hash>, shared with identical local uploads).
CREATE TABLE remote_media (
    origin             TEXT NOT NULL,
    media_id           TEXT NOT NULL,
    content_type       TEXT,
    upload_name        TEXT,
    size               INTEGER NOT NULL,
    sha256             TEXT NOT NULL,
    fetched_ts         INTEGER NOT NULL,
    PRIMARY KEY (origin, media_id)
);
CREATE INDEX remote_media_sha256 ON remote_media (sha256);
