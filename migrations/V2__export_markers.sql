-- Omnistrate's completion marker (omnistrate-metering/last_success_export.json), with history.

-- Every distinct (last_processed_to, last_updated_at) seen for a service key.
CREATE TABLE export_markers (
    id                INTEGER PRIMARY KEY,
    service_key       TEXT NOT NULL,
    last_processed_to TEXT NOT NULL,   -- RFC 3339 UTC: the export is complete up to this instant
    last_updated_at   TEXT,            -- when Omnistrate wrote it
    source            TEXT NOT NULL,
    first_seen_at     TEXT NOT NULL,
    last_seen_at      TEXT NOT NULL
);
CREATE INDEX export_markers_by_service_key ON export_markers (service_key, last_seen_at);

-- Every attempt to read the marker, including a missing or malformed one.
CREATE TABLE export_marker_reads (
    id       INTEGER PRIMARY KEY,
    source   TEXT NOT NULL,
    read_at  TEXT NOT NULL,
    status   TEXT NOT NULL CHECK (status IN ('ok', 'missing', 'malformed', 'unreadable')),
    detail   TEXT             -- what was wrong, or how many service keys it named
);

-- How far each service key's export is complete: the marker value seen most recently.
CREATE VIEW export_completion AS
SELECT service_key, last_processed_to, last_updated_at, last_seen_at
FROM export_markers m
WHERE id = (
    SELECT id FROM export_markers m2
    WHERE m2.service_key = m.service_key
    ORDER BY last_seen_at DESC, id DESC
    LIMIT 1
);
