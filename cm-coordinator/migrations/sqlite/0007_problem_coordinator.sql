-- CCDS coordinator schema, version 7: a client's problem report names the coordinator that
-- received it, so that the coordinator watching the node acts on reports sent to another one.
-- NULL for reports received before version 7.
ALTER TABLE problem_reports ADD COLUMN coordinator TEXT;
CREATE INDEX problem_reports_at ON problem_reports(at);
