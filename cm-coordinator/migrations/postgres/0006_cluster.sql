-- CCDS coordinator schema, version 6: several coordinator processes on one database.
--
-- Each running coordinator keeps a row in `coordinators`, its heartbeat refreshed every few
-- seconds; a node's open session names the coordinator it joined through, so every coordinator
-- knows which nodes are online anywhere in the collective, and the sessions of a coordinator
-- whose heartbeat stopped are closed by the others. `leases` elects one coordinator to run the
-- collective-wide maintenance (repairs and audits).
CREATE TABLE coordinators (
    -- Stable per data directory (`DIR/instance.id`).
    instance      TEXT COLLATE "C" PRIMARY KEY,
    -- Random per process start: a second process with the same instance is detected.
    run           TEXT COLLATE "C" NOT NULL,
    addr          TEXT NOT NULL,
    http          TEXT NOT NULL,
    started_at    BIGINT NOT NULL,
    heartbeat_at  BIGINT NOT NULL
);

CREATE TABLE leases (
    name        TEXT COLLATE "C" PRIMARY KEY,
    holder      TEXT COLLATE "C" NOT NULL,
    expires_at  BIGINT NOT NULL
);

-- NULL for sessions recorded before version 6.
ALTER TABLE node_sessions ADD COLUMN coordinator TEXT COLLATE "C";
CREATE INDEX node_sessions_open ON node_sessions(node) WHERE ended_at IS NULL;

-- Placement changes since a time, for coordinators following each other's publishes and repairs.
CREATE INDEX placements_placed_at ON placements(placed_at);
CREATE INDEX placements_removed_at ON placements(removed_at);
