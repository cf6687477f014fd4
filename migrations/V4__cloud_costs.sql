-- Cloud costs: AWS detailed billing files (DBR with resources and tags) and their rows.
-- Money is stored as integer nano-dollars (1e-9 USD), parsed exactly from the file's decimals, so
-- sums are exact; the views divide by 1e9 to show dollars.

-- One row per account and billing month: the version of its file the line items come from.
CREATE TABLE cost_files (
    id            INTEGER PRIMARY KEY,
    key           TEXT    NOT NULL,         -- object key, or path relative to the source folder
    source        TEXT    NOT NULL,         -- a local folder or s3://bucket/prefix
    account_id    TEXT    NOT NULL,         -- from the file name
    month         TEXT    NOT NULL,         -- billing month from the file name, YYYY-MM
    etag          TEXT,                     -- S3 ETag, when read from S3
    size          INTEGER NOT NULL,
    last_modified TEXT,
    ingested_at   TEXT    NOT NULL,
    line_items    INTEGER NOT NULL,         -- rows in cost_line_items from this file
    total_rows    INTEGER NOT NULL,         -- rows in cost_totals from this file
    problem_count INTEGER NOT NULL,         -- rows in cost_ingest_problems for this file
    version       INTEGER NOT NULL DEFAULT 1, -- 1 + the number of times the month was replaced
    -- ok; partial (some rows were problems); rejected (unreadable: the line items of the
    -- previous version, if any, are kept until a readable version arrives)
    status        TEXT    NOT NULL CHECK (status IN ('ok', 'partial', 'rejected')),
    UNIQUE (account_id, month)
);

-- Line items: usage, discounted usage, tax, fees. Never the total rows.
CREATE TABLE cost_line_items (
    id                INTEGER PRIMARY KEY,
    file_id           INTEGER NOT NULL REFERENCES cost_files (id) ON DELETE CASCADE,
    line              INTEGER NOT NULL,     -- line in the CSV, the header being line 1
    record_type       TEXT    NOT NULL,
    invoice_id        TEXT,
    linked_account_id TEXT,
    product_name      TEXT,
    usage_type        TEXT,
    operation         TEXT,
    availability_zone TEXT,
    item_description  TEXT,
    usage_start       TEXT    NOT NULL,     -- UTC, 'YYYY-MM-DDTHH:MM:SSZ'; days are counted by it
    usage_end         TEXT,
    usage_quantity    REAL,
    blended_nanos     INTEGER NOT NULL,     -- BlendedCost in nano-dollars
    unblended_nanos   INTEGER,              -- UnBlendedCost in nano-dollars
    resource_id       TEXT,
    -- The first non-empty of the configured user tags (cost_settings 'user_tags'), resolved
    -- when stored and re-resolved for every row when the list changes; NULL when none is set.
    user              TEXT,
    tags              TEXT                  -- every non-empty tag as a JSON object; NULL if none
);
CREATE INDEX cost_line_items_by_file ON cost_line_items (file_id, blended_nanos);
-- Covers the report's query: spend per hour, user and product over a window.
CREATE INDEX cost_line_items_by_start ON cost_line_items
    (usage_start, user, product_name, blended_nanos);

-- InvoiceTotal, AccountTotal, StatementTotal and Rounding rows: what line items are checked against.
CREATE TABLE cost_totals (
    id                INTEGER PRIMARY KEY,
    file_id           INTEGER NOT NULL REFERENCES cost_files (id) ON DELETE CASCADE,
    line              INTEGER NOT NULL,
    record_type       TEXT    NOT NULL,
    invoice_id        TEXT,
    linked_account_id TEXT,
    item_description  TEXT,
    blended_nanos     INTEGER NOT NULL,
    unblended_nanos   INTEGER
);
CREATE INDEX cost_totals_by_file ON cost_totals (file_id);

-- What was wrong with a billing file: one row per problem, naming the line (NULL: whole file).
CREATE TABLE cost_ingest_problems (
    id          INTEGER PRIMARY KEY,
    file_id     INTEGER NOT NULL REFERENCES cost_files (id) ON DELETE CASCADE,
    line        INTEGER,
    reason      TEXT    NOT NULL,
    detected_at TEXT    NOT NULL
);
CREATE INDEX cost_ingest_problems_by_file ON cost_ingest_problems (file_id);

-- Settings of the cost ledger; 'user_tags' is the comma-separated tag list users come from.
CREATE TABLE cost_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Spend per UTC day (`meterbook costs report --tz` counts days in another time zone).
CREATE VIEW daily_costs AS
SELECT substr(usage_start, 1, 10)   AS day,
       SUM(blended_nanos) / 1e9     AS cost,
       COUNT(*)                     AS line_items
FROM cost_line_items
GROUP BY substr(usage_start, 1, 10);

-- Spend per UTC day and user ('(untagged)' when no user tag is set).
CREATE VIEW user_daily_costs AS
SELECT substr(usage_start, 1, 10)    AS day,
       COALESCE(user, '(untagged)')  AS user,
       SUM(blended_nanos) / 1e9      AS cost,
       COUNT(*)                      AS line_items
FROM cost_line_items
GROUP BY substr(usage_start, 1, 10), COALESCE(user, '(untagged)');

-- Spend per billing month and user.
CREATE VIEW user_costs AS
SELECT f.month,
       COALESCE(i.user, '(untagged)') AS user,
       SUM(i.blended_nanos) / 1e9     AS cost,
       COUNT(*)                       AS line_items
FROM cost_line_items i
JOIN cost_files f ON f.id = i.file_id
GROUP BY f.month, COALESCE(i.user, '(untagged)');

-- Spend per billing month and product.
CREATE VIEW product_costs AS
SELECT f.month,
       i.product_name,
       SUM(i.blended_nanos) / 1e9 AS cost,
       COUNT(*)                   AS line_items
FROM cost_line_items i
JOIN cost_files f ON f.id = i.file_id
GROUP BY f.month, i.product_name;

-- Spend per billing month and linked account.
CREATE VIEW account_costs AS
SELECT f.month,
       f.account_id               AS payer_account_id,
       i.linked_account_id,
       SUM(i.blended_nanos) / 1e9 AS cost,
       COUNT(*)                   AS line_items
FROM cost_line_items i
JOIN cost_files f ON f.id = i.file_id
GROUP BY f.month, f.account_id, i.linked_account_id;

-- Spend no user tag accounts for, per billing month and resource (largest first).
CREATE VIEW untagged_costs AS
SELECT f.month,
       i.resource_id,
       i.product_name,
       SUM(i.blended_nanos) / 1e9 AS cost,
       COUNT(*)                   AS line_items
FROM cost_line_items i
JOIN cost_files f ON f.id = i.file_id
WHERE i.user IS NULL
GROUP BY f.month, i.resource_id, i.product_name
ORDER BY f.month, cost DESC;

-- Each month's line items against its invoice total(s): difference = invoice total - (line
-- items + rounding), exact; NULL while the file has no InvoiceTotal row yet. The *_nanos columns
-- are the same sums as exact integers.
CREATE VIEW cost_month_check AS
SELECT account_id,
       month,
       key,
       items_nanos / 1e9                                      AS line_items,
       rounding_nanos / 1e9                                   AS rounding,
       CASE WHEN invoices > 0 THEN invoice_nanos / 1e9 END    AS invoice_total,
       CASE WHEN statements > 0 THEN statement_nanos / 1e9 END AS statement_total,
       CASE WHEN invoices > 0
            THEN (invoice_nanos - items_nanos - rounding_nanos) / 1e9 END AS difference,
       status,
       items_nanos                                            AS line_items_nanos,
       rounding_nanos,
       CASE WHEN invoices > 0 THEN invoice_nanos END          AS invoice_total_nanos
FROM (
    SELECT f.account_id, f.month, f.key, f.status,
           COALESCE((SELECT SUM(blended_nanos) FROM cost_line_items WHERE file_id = f.id), 0)
               AS items_nanos,
           COALESCE((SELECT SUM(blended_nanos) FROM cost_totals
                     WHERE file_id = f.id AND record_type = 'Rounding'), 0) AS rounding_nanos,
           COALESCE((SELECT SUM(blended_nanos) FROM cost_totals
                     WHERE file_id = f.id AND record_type = 'InvoiceTotal'), 0) AS invoice_nanos,
           (SELECT COUNT(*) FROM cost_totals
            WHERE file_id = f.id AND record_type = 'InvoiceTotal') AS invoices,
           COALESCE((SELECT SUM(blended_nanos) FROM cost_totals
                     WHERE file_id = f.id AND record_type = 'StatementTotal'), 0) AS statement_nanos,
           (SELECT COUNT(*) FROM cost_totals
            WHERE file_id = f.id AND record_type = 'StatementTotal') AS statements
    FROM cost_files f
);

-- Every billing-file problem with the file it came from.
CREATE VIEW cost_problems AS
SELECT p.id,
       f.key,
       f.account_id,
       f.month,
       p.line,
       p.reason,
       f.status AS file_status,
       p.detected_at
FROM cost_ingest_problems p
JOIN cost_files f ON f.id = p.file_id;
