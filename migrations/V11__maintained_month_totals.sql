-- Monthly usage kept up to date as files are stored, so that reading a month's usage per contract
-- and dimension does not aggregate every record of the month again (about 0.6 s per query on a
-- month of a hundred subscriptions, each time the ledger has changed). The console, its metrics,
-- pending_periods and submission_drift (below) read it. The money path is unchanged: `submit`
-- computes what it sends from the records, and monthly_usage and hourly_usage still sum them.
--
-- usage_month_totals_recomputed defines the totals: one row per service key, month, contract and
-- dimension, adding up each file's contribution (its records of that contract and dimension, or
-- their compacted totals). usage_month_totals holds the same rows, kept by ingest in the same
-- transaction as the records (src/ledger/month_totals.rs): adding a stored file's contribution,
-- taking a replaced file's back. Float sums are kept exactly beside their rounded value, so that
-- taking a contribution back leaves what was there before. Tests compare the table with its
-- definition after random ingests and rewrites, and after every integration test.
--
-- monthly_usage_totals shows them as monthly_usage does, with the same columns. Integer values (the
-- export's, in every example) give exactly monthly_usage's numbers. A file whose values have a
-- fraction adds a float, which may differ from the view's sum in its last digits (the view's
-- own float sum depends on the order SQLite reads the records); `amount` is such a float sum
-- (as in `compact`, it is never sent anywhere).
-- Unattributed records (no contract) are not in it: unattributed_usage reads them through a
-- partial index.

CREATE TABLE usage_month_totals (
    service_key  TEXT    NOT NULL,
    month        TEXT    NOT NULL,          -- 'YYYY-MM'
    contract_id  TEXT    NOT NULL,
    dimension    TEXT    NOT NULL,
    records      INTEGER NOT NULL,
    files        INTEGER NOT NULL,          -- files with records of this contract and dimension
    hours        INTEGER NOT NULL,          -- distinct hours of those files
    int_value    INTEGER NOT NULL,          -- sum of the files' sums that are integers
    real_files   INTEGER NOT NULL,          -- files whose sum has a fraction
    real_value   REAL    NOT NULL,          -- their sums added (0 when there are none)
    real_exact   TEXT,                      -- real_value exactly: '<mantissa>p<exponent>'
    priced_files INTEGER NOT NULL,          -- files with a price on one of these records
    amount       REAL    NOT NULL,          -- their sums of value * price_per_unit (0 when none)
    amount_exact TEXT,                      -- amount exactly, likewise
    PRIMARY KEY (service_key, month, contract_id, dimension)
) WITHOUT ROWID;

CREATE VIEW usage_month_totals_recomputed AS
WITH contributions AS (
    SELECT service_key, hour, file_id, contract_id, dimension,
           COUNT(*) AS records, SUM(value) AS value, SUM(value * price_per_unit) AS amount
    FROM usage_records
    WHERE contract_id IS NOT NULL
    GROUP BY service_key, hour, file_id, contract_id, dimension
    UNION ALL
    SELECT service_key, hour, file_id, contract_id, dimension,
           SUM(records), SUM(value), SUM(amount)
    FROM compacted_usage
    WHERE contract_id IS NOT NULL
    GROUP BY service_key, hour, file_id, contract_id, dimension
)
SELECT service_key,
       substr(hour, 1, 7)                                                  AS month,
       contract_id,
       dimension,
       SUM(records)                                                        AS records,
       COUNT(*)                                                            AS files,
       COUNT(DISTINCT hour)                                                AS hours,
       COALESCE(SUM(CASE WHEN typeof(value) = 'integer' THEN value END), 0) AS int_value,
       COUNT(CASE WHEN typeof(value) = 'real' THEN 1 END)                  AS real_files,
       TOTAL(CASE WHEN typeof(value) = 'real' THEN value END)              AS real_value,
       COUNT(amount)                                                       AS priced_files,
       TOTAL(amount)                                                       AS amount
FROM contributions
GROUP BY service_key, substr(hour, 1, 7), contract_id, dimension;

-- The float sums of these first rows are taken as exact (real_exact, amount_exact NULL).
INSERT INTO usage_month_totals (service_key, month, contract_id, dimension, records, files, hours,
    int_value, real_files, real_value, priced_files, amount)
SELECT * FROM usage_month_totals_recomputed;

CREATE VIEW monthly_usage_totals AS
SELECT service_key,
       month,
       contract_id,
       dimension,
       CASE WHEN real_files = 0 THEN int_value ELSE int_value + real_value END AS value,
       CASE WHEN priced_files = 0 THEN NULL ELSE amount END                  AS amount,
       records,
       files,
       hours
FROM usage_month_totals;

-- Unattributed records are few where usage is configured well: read through their own index.
CREATE INDEX usage_records_unattributed ON usage_records (service_key, hour)
WHERE contract_id IS NULL;

-- pending_periods and submission_drift read a month's usage from the kept totals: `submit`
-- (which reports drift after every run), the console and `compact` no longer aggregate every
-- record for them. A contract-month is pending exactly when it has usage, in either; drift
-- compares with the same integers. Months whose files' sums have a fraction are compared with
-- monthly_usage itself, so that a float added in another order never shows as drift.
DROP VIEW pending_periods;
CREATE VIEW pending_periods AS
SELECT u.service_key,
       u.month,
       u.contract_id,
       COUNT(*)       AS dimensions,
       TOTAL(u.value) AS value,
       c.last_processed_to,
       CASE WHEN c.last_processed_to IS NULL THEN NULL
            WHEN c.last_processed_to >= strftime('%Y-%m-%dT%H:%M:%SZ', u.month || '-01', '+1 month', '-1 second')
            THEN 1 ELSE 0 END AS complete
FROM monthly_usage_totals u
LEFT JOIN export_completion c ON c.service_key = u.service_key
WHERE NOT EXISTS (
    SELECT 1 FROM submissions s
    WHERE s.service_key = u.service_key AND s.contract_id = u.contract_id
      AND ((s.period_kind = 'month' AND s.period = u.month)
           OR (s.period_kind = 'hour' AND substr(s.period, 1, 7) = u.month)))
GROUP BY u.service_key, u.month, u.contract_id, c.last_processed_to;

DROP VIEW submission_drift;
CREATE VIEW submission_drift AS
WITH delivered AS (
    SELECT s.service_key, s.contract_id, s.period_kind, s.period, MAX(s.id) AS submission_id
    FROM submissions s
    WHERE EXISTS (SELECT 1 FROM submission_lines l
                  WHERE l.submission_id = s.id AND l.status IN ('accepted', 'duplicate'))
      AND EXISTS (SELECT 1 FROM submission_inputs i WHERE i.submission_id = s.id)
    GROUP BY s.service_key, s.contract_id, s.period_kind, s.period
),
-- Computed once, and only when a delivered month has a file whose sum has a fraction (a subquery
-- over a materialized CTE runs on its first use).
fractional_months AS MATERIALIZED (
    SELECT service_key, month, contract_id, dimension, value
    FROM monthly_usage
    WHERE (service_key, month, contract_id, dimension) IN (
        SELECT service_key, month, contract_id, dimension
        FROM usage_month_totals WHERE real_files > 0)
),
-- Likewise, only when an hour was delivered.
delivered_hours AS MATERIALIZED (
    SELECT service_key, hour, contract_id, dimension, value
    FROM hourly_usage
    WHERE (service_key, hour, contract_id) IN (
        SELECT service_key, period, contract_id FROM delivered WHERE period_kind = 'hour')
),
-- The dimensions to compare: those sent, and those with usage now.
dimensions AS (
    SELECT d.submission_id, i.dimension
    FROM delivered d JOIN submission_inputs i ON i.submission_id = d.submission_id
    UNION
    SELECT d.submission_id, t.dimension
    FROM delivered d
    JOIN usage_month_totals t
      ON t.service_key = d.service_key AND t.month = d.period AND t.contract_id = d.contract_id
    WHERE d.period_kind = 'month'
    UNION
    SELECT d.submission_id, r.dimension
    FROM delivered d
    JOIN usage_records r
      ON r.service_key = d.service_key AND r.hour = d.period AND r.contract_id = d.contract_id
    WHERE d.period_kind = 'hour'
    UNION
    SELECT d.submission_id, c.dimension
    FROM delivered d
    JOIN compacted_usage c
      ON c.service_key = d.service_key AND c.hour = d.period AND c.contract_id = d.contract_id
    WHERE d.period_kind = 'hour'
),
compared AS (
    SELECT d.service_key, d.contract_id, d.period_kind, d.period, k.dimension, d.submission_id,
           (SELECT i.value FROM submission_inputs i
            WHERE i.submission_id = d.submission_id AND i.dimension = k.dimension) AS submitted_value,
           CASE WHEN d.period_kind = 'hour' THEN
               (SELECT h.value FROM delivered_hours h
                WHERE h.service_key = d.service_key AND h.hour = d.period
                  AND h.contract_id = d.contract_id AND h.dimension = k.dimension)
           ELSE
               (SELECT CASE WHEN t.real_files = 0 THEN t.int_value
                            ELSE (SELECT f.value FROM fractional_months f
                                  WHERE f.service_key = t.service_key AND f.month = t.month
                                    AND f.contract_id = t.contract_id
                                    AND f.dimension = t.dimension) END
                FROM usage_month_totals t
                WHERE t.service_key = d.service_key AND t.month = d.period
                  AND t.contract_id = d.contract_id AND t.dimension = k.dimension)
           END AS current_value
    FROM delivered d
    JOIN dimensions k ON k.submission_id = d.submission_id
)
SELECT service_key, contract_id, period_kind, period, dimension, submission_id,
       COALESCE(submitted_value, 0) AS submitted_value,
       COALESCE(current_value, 0)   AS current_value,
       COALESCE(current_value, 0) - COALESCE(submitted_value, 0) AS difference
FROM compared
WHERE COALESCE(current_value, 0) != COALESCE(submitted_value, 0);
