-- An imported failure without its request (dimension '*': the predecessor's whole contract-month)
-- stops needing attention once a line for that contract and period is in flight or accepted. Its
-- resubmission sends real dimensions, never '*', so V3's per-dimension match kept it in this view
-- forever and every later `submit` ended with exit code 3. Otherwise unchanged from V3.
DROP VIEW submission_failures;

CREATE VIEW submission_failures AS
SELECT h.*
FROM submission_history h
WHERE (h.status IN ('failed', 'rejected', 'warning')
       AND NOT EXISTS (SELECT 1 FROM submission_lines r WHERE r.retry_of = h.line_id)
       AND NOT EXISTS (
           SELECT 1 FROM submission_lines a
           WHERE a.service_key = h.service_key AND a.contract_id = h.contract_id
             AND a.period_kind = h.period_kind AND a.period = h.period
             AND (a.dimension = h.dimension OR a.dimension = '*' OR h.dimension = '*')
             AND a.status IN ('pending', 'sending', 'transient', 'accepted', 'duplicate', 'imported')))
   OR h.status = 'transient';
