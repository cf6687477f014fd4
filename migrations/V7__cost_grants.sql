-- Grants: an amount of money given to a user (a grantee) to spend over a period of days, loaded
-- from a CSV file by `meterbook costs grants load`, which replaces them all. Spend is counted from
-- the line items whose user (resolved from the user tags) is the grant's user.
CREATE TABLE cost_grants (
    id           INTEGER PRIMARY KEY,
    user         TEXT    NOT NULL,
    amount_nanos INTEGER NOT NULL CHECK (amount_nanos >= 0), -- nano-dollars, like every cost
    starts_on    TEXT    NOT NULL,          -- first day of the grant, YYYY-MM-DD
    ends_on      TEXT,                      -- last day, inclusive; NULL when open-ended
    note         TEXT,
    source       TEXT    NOT NULL,          -- the file it was loaded from
    line         INTEGER NOT NULL,          -- its line in that file (the header is line 1)
    loaded_at    TEXT    NOT NULL,
    CHECK (ends_on IS NULL OR ends_on >= starts_on)
);

-- A user's spend over a range of time is one range of this index.
CREATE INDEX cost_line_items_by_user ON cost_line_items (user, usage_start, blended_nanos);

-- Each grant against its user's spend over the grant's days (UTC days here; `costs report`
-- counts them in its --tz). remaining < 0 is an overspent grant.
CREATE VIEW grant_spend AS
SELECT user,
       starts_on,
       ends_on,
       amount_nanos / 1e9                  AS grant_amount,
       spent_nanos / 1e9                   AS spent,
       (amount_nanos - spent_nanos) / 1e9  AS remaining,
       CASE WHEN amount_nanos > 0
            THEN ROUND(100.0 * spent_nanos / amount_nanos, 1) END AS used_pct,
       note,
       amount_nanos,
       spent_nanos
FROM (
    SELECT g.*,
           COALESCE((SELECT SUM(i.blended_nanos) FROM cost_line_items i
                     WHERE i.user = g.user
                       AND i.usage_start >= g.starts_on
                       AND (g.ends_on IS NULL OR i.usage_start < date(g.ends_on, '+1 day'))), 0)
               AS spent_nanos
    FROM cost_grants g
);
