-- The Python exporter's state, imported by `meterbook import-state`, so that nothing it sent is
-- sent again. Its successful contracts become 'imported' submission lines (which block a second
-- send through the unique index and trigger of V3); its error contracts become 'failed' ones.

-- One row per service key per import: how far the predecessor had processed.
CREATE TABLE predecessor_imports (
    id                INTEGER PRIMARY KEY,
    source            TEXT NOT NULL,           -- the state file it came from
    service_key       TEXT NOT NULL,
    period_kind       TEXT NOT NULL CHECK (period_kind IN ('month', 'hour')),
    last_processed    TEXT NOT NULL,           -- as written: 'YYYY-MM' or the hour's start
    processed_through TEXT NOT NULL,           -- RFC 3339: periods ending at or before this were the predecessor's
    last_updated      TEXT,
    successes         INTEGER NOT NULL,        -- contract-periods recorded as imported
    errors            INTEGER NOT NULL,        -- contract-periods recorded as failed
    imported_at       TEXT NOT NULL
);

-- Per service key, up to when the predecessor is responsible: `submit` plans nothing that ends
-- at or before `processed_through`; its failures are re-sent with `meterbook resubmit`.
CREATE VIEW predecessor_coverage AS
SELECT service_key, MAX(processed_through) AS processed_through, MAX(imported_at) AS imported_at
FROM predecessor_imports
GROUP BY service_key;
