-- Compacted months (`meterbook compact`): the records of months that are fully submitted and
-- older than the drift window give way to each file's own totals, so that the ledger stops
-- growing with every month of raw records, while the usage views give the same numbers, drift
-- is still detected, and a later rewrite of a file in such a month replaces exactly that file's
-- contribution.

-- One row per file of a compacted month, per contract (NULL: unattributed), dimension,
-- subscription and customer (a file is one subscription's hour, so these are few): what its
-- records added up to. Kept in period order, like usage_records.
CREATE TABLE compacted_usage (
    file_id         INTEGER NOT NULL REFERENCES usage_files (id) ON DELETE CASCADE,
    service_key     TEXT    NOT NULL,
    hour            TEXT    NOT NULL,
    contract_id     TEXT,
    dimension       TEXT    NOT NULL,
    subscription_id TEXT,
    customer_id     TEXT,
    records         INTEGER NOT NULL,
    value           NUMERIC NOT NULL,   -- SUM(value): integers stay exact integers
    amount          REAL                -- SUM(value * price_per_unit)
);
CREATE INDEX compacted_usage_by_period ON compacted_usage (service_key, hour, file_id);

-- One row per service key and month compacted, and when.
CREATE TABLE compacted_months (
    service_key  TEXT NOT NULL,
    month        TEXT NOT NULL,         -- 'YYYY-MM'
    files        INTEGER NOT NULL,
    records      INTEGER NOT NULL,      -- records replaced by totals
    compacted_at TEXT NOT NULL,
    PRIMARY KEY (service_key, month)
);

-- The usage views, over the records and the compacted totals. A compacted month has no records
-- (ingest stores a file of a compacted month as totals too), so each group comes from exactly one
-- side: from the records it is V1's very aggregate (the sums `submit` computes), from the totals
-- their sums (`compact` checks that they are the same numbers before it drops the records).
-- hourly_usage_max_per_pod needs the records themselves: compacted months are not in it.
DROP VIEW hourly_usage;
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
GROUP BY service_key, hour, contract_id, dimension
UNION ALL
SELECT service_key,
       hour,
       substr(hour, 1, 7),
       contract_id,
       dimension,
       SUM(value),
       SUM(amount),
       SUM(records),
       COUNT(DISTINCT file_id)
FROM compacted_usage
WHERE contract_id IS NOT NULL
GROUP BY service_key, hour, contract_id, dimension;

DROP VIEW monthly_usage;
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
GROUP BY service_key, substr(hour, 1, 7), contract_id, dimension
UNION ALL
SELECT service_key,
       substr(hour, 1, 7),
       contract_id,
       dimension,
       SUM(value),
       SUM(amount),
       SUM(records),
       COUNT(DISTINCT file_id),
       COUNT(DISTINCT hour)
FROM compacted_usage
WHERE contract_id IS NOT NULL
GROUP BY service_key, substr(hour, 1, 7), contract_id, dimension;

DROP VIEW unattributed_usage;
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
GROUP BY r.service_key, substr(r.hour, 1, 7), r.subscription_id, r.customer_id, r.dimension
UNION ALL
SELECT c.service_key,
       substr(c.hour, 1, 7),
       c.subscription_id,
       c.customer_id,
       c.dimension,
       SUM(c.value),
       SUM(c.records),
       COUNT(DISTINCT c.file_id),
       MIN(c.hour),
       MAX(c.hour),
       MIN(f.key)
FROM compacted_usage c
JOIN usage_files f ON f.id = c.file_id
WHERE c.contract_id IS NULL
GROUP BY c.service_key, substr(c.hour, 1, 7), c.subscription_id, c.customer_id, c.dimension;
