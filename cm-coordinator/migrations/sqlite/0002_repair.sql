-- CCDS coordinator schema, version 2: repair, surplus deletion, demand, node history.

-- A placement removed while its holder was away: the holder is told to delete the fragment
-- when it returns, and this records when that order went out.
ALTER TABLE placements ADD COLUMN delete_sent_at BIGINT;
CREATE INDEX placements_undeleted ON placements(node, removed_at, delete_sent_at);

-- Fragments rebuilt (repair) or added for demand (expand): work accounting pays for.
CREATE TABLE repairs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    content      TEXT NOT NULL REFERENCES contents(id),
    segment      BIGINT NOT NULL,
    idx          INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    previous     TEXT,
    node         TEXT NOT NULL,
    -- Who rebuilt it: the coordinator's ID, or a node's on a CM order.
    rebuilt_by   TEXT NOT NULL,
    -- The ticket the fragments were fetched under, so that reconciliation knows the fetches.
    ticket       TEXT NOT NULL,
    bytes_fetched BIGINT NOT NULL,
    bytes_stored BIGINT NOT NULL,
    at           BIGINT NOT NULL
);
CREATE INDEX repairs_content ON repairs(content, at);

-- Partner demand hints: extra distinct fragments wanted for a content until `until`.
CREATE TABLE demand_hints (
    content     TEXT NOT NULL REFERENCES contents(id),
    level       BIGINT NOT NULL,
    until       BIGINT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX demand_hints_content ON demand_hints(content, until);

-- What nodes say about themselves and what others observe.
ALTER TABLE nodes ADD COLUMN boot_time BIGINT;
ALTER TABLE nodes ADD COLUMN upload_bps BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN observed_bps BIGINT NOT NULL DEFAULT 0;
