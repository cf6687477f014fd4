-- The usage ledger: every Omnistrate usage file and every record in it.
-- Forward-only: never edit this file once released; change views in a new migration.

-- One row per usage object (the current version of it).
CREATE TABLE usage_files (
    id            INTEGER PRIMARY KEY,
    key           TEXT    NOT NULL UNIQUE,  -- relative to the source root: omnistrate-metering/S/E/P/YYYY/MM/DD/HH/sub.json
    source        TEXT    NOT NULL,         -- where it was read from: a local folder or s3://bucket
    service_key   TEXT,                     -- SERVICE:ENVIRONMENT:PLAN, NULL when the path does not say
    hour          TEXT,                     -- usage hour from the path, 'YYYY-MM-DDTHH:00:00Z' (UTC); NULL when it does not parse
    sha256        TEXT    NOT NULL,         -- content fingerprint
    etag          TEXT,                     -- S3 ETag, when read from S3
    size          INTEGER NOT NULL,
    last_modified TEXT,                     -- object or file modification time (RFC 3339)
    ingested_at   TEXT    NOT NULL,
    record_count  INTEGER NOT NULL,         -- records stored from this file
    problem_count INTEGER NOT NULL,         -- rows in ingest_problems for this file
    version       INTEGER NOT NULL DEFAULT 1, -- 1 + the number of earlier versions replaced
    status        TEXT    NOT NULL CHECK (status IN ('ok', 'partial', 'rejected'))
);
CREATE INDEX usage_files_by_hour ON usage_files (service_key, hour);

-- One row per usage record of the current version of each file.
-- Clustered by file (WITHOUT ROWID): rows are appended in file order, and replacing a file's
-- records is one range delete, with no index to maintain for it.
CREATE TABLE usage_records (
    file_id         INTEGER NOT NULL REFERENCES usage_files (id) ON DELETE CASCADE,
    record_index    INTEGER NOT NULL,       -- position in the file's JSON array, from 0
    service_key     TEXT    NOT NULL,
    hour            TEXT    NOT NULL,
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
    PRIMARY KEY (file_id, record_index)
) WITHOUT ROWID;
-- Covers hourly_usage and monthly_usage: they never touch the table itself.
CREATE INDEX usage_records_by_period ON usage_records
    (service_key, hour, contract_id, dimension, value, price_per_unit, file_id);

-- What was wrong with the input: one row per problem, naming the file and the record.
CREATE TABLE ingest_problems (
    id           INTEGER PRIMARY KEY,
    file_id      INTEGER NOT NULL REFERENCES usage_files (id) ON DELETE CASCADE,
    record_index INTEGER,                   -- NULL when the problem is the whole file
    reason       TEXT    NOT NULL,
    record_kept  INTEGER NOT NULL DEFAULT 0, -- 1 when the record was still stored (e.g. a bad pricePerUnit)
    detected_at  TEXT    NOT NULL
);
CREATE INDEX ingest_problems_by_file ON ingest_problems (file_id);

-- Earlier versions of a file that was rewritten: when, and what they held.
CREATE TABLE usage_file_versions (
    id           INTEGER PRIMARY KEY,
    file_id      INTEGER NOT NULL REFERENCES usage_files (id) ON DELETE CASCADE,
    version      INTEGER NOT NULL,
    sha256       TEXT    NOT NULL,
    etag         TEXT,
    size         INTEGER NOT NULL,
    record_count INTEGER NOT NULL,
    ingested_at  TEXT    NOT NULL,
    replaced_at  TEXT    NOT NULL,
    UNIQUE (file_id, version)
);

-- Totals of a replaced version, per contract and dimension.
CREATE TABLE usage_file_version_totals (
    version_id  INTEGER NOT NULL REFERENCES usage_file_versions (id) ON DELETE CASCADE,
    contract_id TEXT,
    dimension   TEXT    NOT NULL,
    records     INTEGER NOT NULL,
    value       NUMERIC NOT NULL,
    amount      REAL
);
CREATE INDEX usage_file_version_totals_by_version ON usage_file_version_totals (version_id);

-- One row per ingest run, for "what happened when".
CREATE TABLE ingest_runs (
    id              INTEGER PRIMARY KEY,
    source          TEXT    NOT NULL,
    scope           TEXT    NOT NULL,
    started_at      TEXT    NOT NULL,
    finished_at     TEXT,
    files_seen      INTEGER NOT NULL DEFAULT 0,
    files_new       INTEGER NOT NULL DEFAULT 0,
    files_replaced  INTEGER NOT NULL DEFAULT 0,
    files_unchanged INTEGER NOT NULL DEFAULT 0,
    records         INTEGER NOT NULL DEFAULT 0,
    problems        INTEGER NOT NULL DEFAULT 0
);

-- Usage per service key, contract, dimension and hour (attributed records only).
CREATE VIEW hourly_usage AS
SELECT service_key,
       hour,
       substr(hour, 1, 7)           AS month,
       contract_id,
       dimension,
       SUM(value)                   AS value,
       SUM(value * price_per_unit)  AS amount,
       COUNT(*)                     AS records,
       COUNT(DISTINCT file_id)      AS files
FROM usage_records
WHERE contract_id IS NOT NULL
GROUP BY service_key, hour, contract_id, dimension;

-- Usage per service key, contract, dimension and month (attributed records only).
CREATE VIEW monthly_usage AS
SELECT service_key,
       substr(hour, 1, 7)           AS month,
       contract_id,
       dimension,
       SUM(value)                   AS value,
       SUM(value * price_per_unit)  AS amount,
       COUNT(*)                     AS records,
       COUNT(DISTINCT file_id)      AS files,
       COUNT(DISTINCT hour)         AS hours
FROM usage_records
WHERE contract_id IS NOT NULL
GROUP BY service_key, substr(hour, 1, 7), contract_id, dimension;

-- Omnistrate's own aggregation: the largest value per pod, instance and host within an hour,
-- which guards against a record duplicated inside an hour. Compare with hourly_usage.
CREATE VIEW hourly_usage_max_per_pod AS
SELECT service_key, hour, substr(hour, 1, 7) AS month, contract_id, dimension,
       SUM(value) AS value, SUM(amount) AS amount, SUM(records) AS records
FROM (
    SELECT service_key, hour, contract_id, dimension,
           MAX(value) AS value, MAX(value) * MAX(price_per_unit) AS amount, COUNT(*) AS records
    FROM usage_records
    WHERE contract_id IS NOT NULL
    GROUP BY service_key, hour, contract_id, dimension, pod_name, instance_id, host_name
)
GROUP BY service_key, hour, contract_id, dimension;

-- Records without a contract id: kept, never billed, and shown here so they get fixed.
CREATE VIEW unattributed_usage AS
SELECT r.service_key,
       substr(r.hour, 1, 7)  AS month,
       r.subscription_id,
       r.customer_id,
       r.dimension,
       SUM(r.value)          AS value,
       COUNT(*)              AS records,
       COUNT(DISTINCT r.file_id) AS files,
       MIN(r.hour)           AS first_hour,
       MAX(r.hour)           AS last_hour,
       MIN(f.key)            AS example_key
FROM usage_records r
JOIN usage_files f ON f.id = r.file_id
WHERE r.contract_id IS NULL
GROUP BY r.service_key, substr(r.hour, 1, 7), r.subscription_id, r.customer_id, r.dimension;

-- Every input problem with the file it came from.
CREATE VIEW usage_problems AS
SELECT p.id,
       f.key,
       f.service_key,
       f.hour,
       p.record_index,
       p.reason,
       p.record_kept,
       f.status AS file_status,
       p.detected_at
FROM ingest_problems p
JOIN usage_files f ON f.id = p.file_id;
