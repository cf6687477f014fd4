-- usage_records, clustered by what every aggregate reads: service key, hour, contract, dimension.
--
-- V1 clustered the records by file and kept a covering index in period order beside them: every
-- record was written twice. Here the table itself is in period order, so it is the only b-tree:
-- ingest writes each record once, `hourly_usage` reads the table in its own GROUP BY order
-- without sorting, and a period's usage (service key and hour range) is one range scan.
-- The views keep their definitions (V1): `monthly_usage` still sums the records themselves, so
-- its sums are exactly those `submit` computes for the same month.
-- Replacing a file's records is a range scan of its hour (the file's hour is in usage_files).
--
-- SQLite's procedure for changing a table's layout: create the new table, copy, drop the old,
-- rename the new. legacy_alter_table keeps the rename from re-checking the views that name
-- usage_records while it does not exist; they resolve to the new table by name.
PRAGMA legacy_alter_table = ON;

CREATE TABLE usage_records_v6 (
    file_id         INTEGER NOT NULL REFERENCES usage_files (id) ON DELETE CASCADE,
    record_index    INTEGER NOT NULL,       -- position in the file's JSON array, from 0
    service_key     TEXT    NOT NULL,       -- the file's, from its path
    hour            TEXT    NOT NULL,       -- the file's, from its path: 'YYYY-MM-DDTHH:00:00Z'
    contract_id     TEXT,                   -- externalPayerId; NULL when missing or empty (unattributed)
    dimension       TEXT    NOT NULL,
    value           NUMERIC NOT NULL,       -- integers stay exact integers
    price_per_unit  REAL,
    subscription_id TEXT,
    customer_id     TEXT,
    instance_id     TEXT,
    pod_name        TEXT,
    host_name       TEXT,
    instance_type   TEXT,
    timestamp       TEXT,
    PRIMARY KEY (service_key, hour, file_id, record_index)
) WITHOUT ROWID;

INSERT INTO usage_records_v6 (file_id, record_index, service_key, hour, contract_id, dimension,
    value, price_per_unit, subscription_id, customer_id, instance_id, pod_name, host_name,
    instance_type, timestamp)
SELECT file_id, record_index, service_key, hour, contract_id, dimension, value, price_per_unit,
       subscription_id, customer_id, instance_id, pod_name, host_name, instance_type, timestamp
FROM usage_records
ORDER BY service_key, hour, file_id, record_index;

DROP TABLE usage_records;
ALTER TABLE usage_records_v6 RENAME TO usage_records;

PRAGMA legacy_alter_table = OFF;


-- A file's content fingerprint is now BLAKE3, written 'blake3:<hex>': hashing every body with
-- SHA-256 was a fifth of ingest's CPU on machines without SHA instructions. Fingerprints stored
-- before are kept, marked 'sha256:<hex>'; a legacy file re-read is compared by SHA-256 once and
-- then given its BLAKE3 fingerprint.
ALTER TABLE usage_files RENAME COLUMN sha256 TO fingerprint;
UPDATE usage_files SET fingerprint = 'sha256:' || fingerprint;
ALTER TABLE usage_file_versions RENAME COLUMN sha256 TO fingerprint;
UPDATE usage_file_versions SET fingerprint = 'sha256:' || fingerprint;
