-- Hostile input never blocks billing.
--
-- 1. Bounded usage. From now on ingest stores a record only while its hour's total per service
--    key, contract (or none) and dimension stays at most 2^52 (4503599627370496); a month (at most
--    744 hours) then sums to less than 2^62, so SQLite's integer SUM in the views and in `submit`
--    cannot overflow. A ledger written before may hold groups past the bound (one record of
--    9223372036854775807 and another of 1 made every usage view fail with "integer overflow").
--    Here those records move to ingest_problems (not kept), from the first record that passes
--    the bound on (in file and record order; a record above the bound on its own always), and
--    their files become 'partial' (or 'rejected' when nothing is left).
-- 2. pending_periods adds values across dimensions, whose number is not bounded: TOTAL (a
--    double, which cannot overflow) instead of SUM.
-- 3. source_problems: paths that are not stored as usage files (an unreadable folder or file, a
--    symbolic link, a file over the size limit), shown in usage_problems beside the files'.
-- 4. ingest_runs.files_too_large: files listed but not read because of their size; they do not
--    make a run unclean (reading them again would not change anything until the limit does).

CREATE TABLE v8_out_of_bound AS
WITH groups AS (
    SELECT service_key, hour, contract_id, dimension
    FROM usage_records
    GROUP BY service_key, hour, contract_id, dimension
    HAVING TOTAL(value) > 4503599627370496 OR MAX(value) > 4503599627370496
),
running AS (
    SELECT r.service_key, r.hour, r.file_id, r.record_index, r.contract_id, r.dimension, r.value,
           TOTAL(CASE WHEN r.value <= 4503599627370496 THEN r.value ELSE 0 END) OVER (
               PARTITION BY r.service_key, r.hour, r.contract_id, r.dimension
               ORDER BY r.file_id, r.record_index
               ROWS UNBOUNDED PRECEDING) AS total
    FROM usage_records r
    JOIN groups g ON g.service_key = r.service_key AND g.hour = r.hour
                 AND g.contract_id IS r.contract_id AND g.dimension = r.dimension
)
SELECT service_key, hour, file_id, record_index, contract_id, dimension, value
FROM running
WHERE value > 4503599627370496 OR total > 4503599627370496;

INSERT INTO ingest_problems (file_id, record_index, reason, record_kept, detected_at)
SELECT file_id, record_index,
       'value ' || value || ' of contract ' || COALESCE(contract_id, '(none)') || ' dimension '
           || dimension || ' brings the hour''s total above the largest total taken, 2^52 = '
           || '4503599627370496; removed from the ledger by schema version 8',
       0, strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
FROM v8_out_of_bound;

DELETE FROM usage_records
WHERE (service_key, hour, file_id, record_index) IN
      (SELECT service_key, hour, file_id, record_index FROM v8_out_of_bound);

UPDATE usage_files
SET record_count = record_count - (SELECT COUNT(*) FROM v8_out_of_bound o WHERE o.file_id = usage_files.id),
    problem_count = problem_count + (SELECT COUNT(*) FROM v8_out_of_bound o WHERE o.file_id = usage_files.id)
WHERE id IN (SELECT file_id FROM v8_out_of_bound);
UPDATE usage_files
SET status = CASE WHEN record_count = 0 THEN 'rejected' ELSE 'partial' END
WHERE id IN (SELECT file_id FROM v8_out_of_bound);

DROP TABLE v8_out_of_bound;

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
FROM monthly_usage u
LEFT JOIN export_completion c ON c.service_key = u.service_key
WHERE NOT EXISTS (
    SELECT 1 FROM submissions s
    WHERE s.service_key = u.service_key AND s.contract_id = u.contract_id
      AND ((s.period_kind = 'month' AND s.period = u.month)
           OR (s.period_kind = 'hour' AND substr(s.period, 1, 7) = u.month)))
GROUP BY u.service_key, u.month, u.contract_id, c.last_processed_to;

-- A path of a source that ingest could not take as a usage file, one row per source and path:
-- seen again, it is updated; a complete listing of the source that no longer finds it removes
-- it, and so does storing a file at that path.
CREATE TABLE source_problems (
    id            INTEGER PRIMARY KEY,
    source        TEXT NOT NULL,            -- as usage_files.source
    path          TEXT NOT NULL,            -- relative to the source root, '/'-separated
    reason        TEXT NOT NULL,
    run_id        INTEGER NOT NULL REFERENCES ingest_runs (id), -- the last run that found it
    first_seen_at TEXT NOT NULL,
    last_seen_at  TEXT NOT NULL,
    UNIQUE (source, path)
);

ALTER TABLE ingest_runs ADD COLUMN files_too_large INTEGER NOT NULL DEFAULT 0;

-- Every input problem with the file it came from; problems with paths that are not stored as
-- files (source_problems) have no file: `file_status` and `service_key` are NULL, `key` is the path.
DROP VIEW usage_problems;
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
JOIN usage_files f ON f.id = p.file_id
UNION ALL
SELECT NULL, s.path, NULL, NULL, NULL, s.reason, 0, NULL, s.last_seen_at
FROM source_problems s;
