-- Submissions to Clazar: an outbox of requests and their lines, every answer, and the views that
-- answer "what was sent, what failed, what is still due, what changed after it was sent".
-- Exactly once is enforced here, by a unique index, not only by the code.

-- One row per `meterbook submit` / `resubmit` run (a dry run writes nothing).
CREATE TABLE submission_runs (
    id          INTEGER PRIMARY KEY,
    command     TEXT NOT NULL,              -- submit, resubmit, import-state
    period_kind TEXT,                       -- month or hour
    settings    TEXT,                       -- the resolved settings as JSON (never secrets)
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    planned     INTEGER NOT NULL DEFAULT 0, -- submissions written by this run's planning step
    sent        INTEGER NOT NULL DEFAULT 0  -- requests answered during this run
);

-- One row per outbox message: the exact body of one request, for one contract and period.
-- Written (status 'pending') and committed before the request leaves; the answer updates it.
CREATE TABLE submissions (
    id            INTEGER PRIMARY KEY,
    run_id        INTEGER REFERENCES submission_runs (id),
    service_key   TEXT NOT NULL,
    contract_id   TEXT NOT NULL,
    period_kind   TEXT NOT NULL CHECK (period_kind IN ('month', 'hour')),
    period        TEXT NOT NULL,            -- 'YYYY-MM' or 'YYYY-MM-DDTHH:00:00Z'
    start_time    TEXT NOT NULL,            -- the window as sent
    end_time      TEXT NOT NULL,
    cloud         TEXT NOT NULL,
    payload       TEXT,                     -- the exact JSON body; NULL when nothing could be sent or for imported rows
    status        TEXT NOT NULL CHECK (status IN (
                      'pending',            -- written, not yet sent
                      'sending',            -- may have left: the next run re-sends it (a duplicate answer means it arrived)
                      'transient',          -- no answer after every retry (5xx, 429, network): the next run re-sends it
                      'answered',           -- Clazar answered; each line says how
                      'rejected',           -- an HTTP 4xx for the whole request
                      'failed',             -- not sendable (formula) or the answer could not be read
                      'imported')),         -- recorded by the predecessor, imported
    attempts      INTEGER NOT NULL DEFAULT 0,
    http_status   INTEGER,
    response_body TEXT,                     -- the last answer's body, verbatim
    error         TEXT,                     -- what went wrong, in words
    retry_of      INTEGER REFERENCES submissions (id), -- resubmit: the submission this one retries
    created_at    TEXT NOT NULL,
    sent_at       TEXT,                     -- when the last attempt left
    answered_at   TEXT
);
CREATE INDEX submissions_by_period ON submissions (service_key, period_kind, period, contract_id);
CREATE INDEX submissions_by_status ON submissions (status);

-- One row per metering record (contract, dimension, period) of a submission.
CREATE TABLE submission_lines (
    id             INTEGER PRIMARY KEY,
    submission_id  INTEGER NOT NULL REFERENCES submissions (id),
    service_key    TEXT NOT NULL,
    contract_id    TEXT NOT NULL,
    period_kind    TEXT NOT NULL CHECK (period_kind IN ('month', 'hour')),
    period         TEXT NOT NULL,
    dimension      TEXT NOT NULL,           -- '*' on an imported row: every dimension of that contract and period
    exact_quantity REAL,                    -- the amount before rounding (NULL when not a finite number, or imported)
    quantity       INTEGER,                 -- the whole number sent (NULL when nothing was sent, or imported)
    status         TEXT NOT NULL CHECK (status IN (
                       'pending', 'sending', 'transient', -- in flight: blocks a second line
                       'accepted',          -- Clazar said success
                       'duplicate',         -- Clazar said it already has this record: accepted earlier
                       'imported',          -- accepted by the predecessor (quantity unknown)
                       'warning',           -- status other than success without errors (e.g. unregistered dimension)
                       'rejected',          -- errors in the result, or an HTTP 4xx
                       'failed')),          -- formula failure, unreadable answer, or no result for this line
    clazar_id      TEXT,                    -- the result's id
    result_status  TEXT,                    -- the result's status as Clazar wrote it
    code           TEXT,
    message        TEXT,
    errors         TEXT,                    -- the result's errors as JSON
    retry_of       INTEGER REFERENCES submission_lines (id), -- resubmit: the line this one retries
    updated_at     TEXT NOT NULL
);
CREATE INDEX submission_lines_by_submission ON submission_lines (submission_id);
CREATE INDEX submission_lines_by_key ON submission_lines (service_key, contract_id, period_kind, period, dimension);

-- Exactly once: at most one accepted or in-flight quantity per service key, contract, dimension
-- and period. A second insert (or an update back into one of these states) fails.
CREATE UNIQUE INDEX submission_lines_once ON submission_lines
    (service_key, contract_id, period_kind, period, dimension)
    WHERE status IN ('pending', 'sending', 'transient', 'accepted', 'duplicate', 'imported');

-- An imported row covers every dimension of its contract and period: nothing else may be sent for it,
-- and it cannot be imported over lines already in flight or accepted.
CREATE TRIGGER submission_lines_respect_imports
BEFORE INSERT ON submission_lines
WHEN NEW.status IN ('pending', 'sending', 'transient', 'accepted', 'duplicate', 'imported')
 AND EXISTS (
    SELECT 1 FROM submission_lines l
    WHERE l.service_key = NEW.service_key AND l.contract_id = NEW.contract_id
      AND l.period_kind = NEW.period_kind AND l.period = NEW.period
      AND l.status IN ('pending', 'sending', 'transient', 'accepted', 'duplicate', 'imported')
      AND (l.dimension = '*' OR NEW.dimension = '*'))
BEGIN
    SELECT RAISE(ABORT, 'an imported submission already covers this contract and period');
END;

-- The base usage a submission was computed from, per dimension: drift compares it with the ledger now.
CREATE TABLE submission_inputs (
    submission_id INTEGER NOT NULL REFERENCES submissions (id),
    dimension     TEXT    NOT NULL,
    value         NUMERIC NOT NULL,
    amount        REAL,
    PRIMARY KEY (submission_id, dimension)
);

-- Every line with its submission: the history, newest first by id.
CREATE VIEW submission_history AS
SELECT l.id              AS line_id,
       s.id              AS submission_id,
       s.run_id,
       l.service_key,
       l.contract_id,
       l.period_kind,
       l.period,
       l.dimension,
       l.exact_quantity,
       l.quantity,
       l.status,
       s.status          AS submission_status,
       s.attempts,
       s.http_status,
       l.result_status,
       l.code,
       l.message,
       l.errors,
       COALESCE(l.message, s.error) AS detail,
       l.clazar_id,
       l.retry_of,
       s.created_at,
       s.sent_at,
       COALESCE(s.answered_at, l.updated_at) AS answered_at
FROM submission_lines l
JOIN submissions s ON s.id = l.submission_id;

-- Lines that need an operator: failed, rejected or warned, not yet retried and not since accepted,
-- plus lines still in flight or without an answer after every retry.
CREATE VIEW submission_failures AS
SELECT h.*
FROM submission_history h
WHERE (h.status IN ('failed', 'rejected', 'warning')
       AND NOT EXISTS (SELECT 1 FROM submission_lines r WHERE r.retry_of = h.line_id)
       AND NOT EXISTS (
           SELECT 1 FROM submission_lines a
           WHERE a.service_key = h.service_key AND a.contract_id = h.contract_id
             AND a.period_kind = h.period_kind AND a.period = h.period
             AND (a.dimension = h.dimension OR a.dimension = '*')
             AND a.status IN ('pending', 'sending', 'transient', 'accepted', 'duplicate', 'imported')))
   OR h.status = 'transient';

-- Usage not yet planned for submission, per service key, contract and month, with whether
-- Omnistrate's marker says the month is complete (last_processed_to at or after its last second).
CREATE VIEW pending_periods AS
SELECT u.service_key,
       u.month,
       u.contract_id,
       COUNT(*)     AS dimensions,
       SUM(u.value) AS value,
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

-- Periods already delivered (accepted or duplicate) whose usage in the ledger has changed since:
-- the base usage then and now, per dimension. Never re-sent automatically.
CREATE VIEW submission_drift AS
WITH delivered AS (
    SELECT s.service_key, s.contract_id, s.period_kind, s.period, MAX(s.id) AS submission_id
    FROM submissions s
    WHERE EXISTS (SELECT 1 FROM submission_lines l
                  WHERE l.submission_id = s.id AND l.status IN ('accepted', 'duplicate'))
      AND EXISTS (SELECT 1 FROM submission_inputs i WHERE i.submission_id = s.id)
    GROUP BY s.service_key, s.contract_id, s.period_kind, s.period
),
-- Aggregated once, then looked up (SQLite indexes a materialized CTE automatically).
usage_now AS MATERIALIZED (
    SELECT service_key, 'month' AS period_kind, month AS period, contract_id, dimension, value
    FROM monthly_usage
    WHERE EXISTS (SELECT 1 FROM delivered WHERE period_kind = 'month')
    UNION ALL
    SELECT service_key, 'hour', hour, contract_id, dimension, value
    FROM hourly_usage
    WHERE EXISTS (SELECT 1 FROM delivered WHERE period_kind = 'hour')
),
compared AS (
    SELECT d.service_key, d.contract_id, d.period_kind, d.period, k.dimension, d.submission_id,
           (SELECT i.value FROM submission_inputs i
            WHERE i.submission_id = d.submission_id AND i.dimension = k.dimension) AS submitted_value,
           (SELECT u.value FROM usage_now u
            WHERE u.service_key = d.service_key AND u.period_kind = d.period_kind
              AND u.period = d.period AND u.contract_id = d.contract_id
              AND u.dimension = k.dimension) AS current_value
    FROM delivered d
    JOIN (SELECT i.submission_id, i.dimension FROM submission_inputs i
          UNION
          SELECT d2.submission_id, u.dimension FROM delivered d2
          JOIN usage_now u ON u.service_key = d2.service_key AND u.period_kind = d2.period_kind
                          AND u.period = d2.period AND u.contract_id = d2.contract_id) k
      ON k.submission_id = d.submission_id
)
SELECT service_key, contract_id, period_kind, period, dimension, submission_id,
       COALESCE(submitted_value, 0) AS submitted_value,
       COALESCE(current_value, 0)   AS current_value,
       COALESCE(current_value, 0) - COALESCE(submitted_value, 0) AS difference
FROM compared
WHERE COALESCE(current_value, 0) != COALESCE(submitted_value, 0);
