-- CCDS coordinator schema, version 1. Times are Unix seconds; IDs are text (peer IDs in base58,
-- content and ticket IDs in hex). Written in the common subset of SQLite and PostgreSQL.

CREATE TABLE certificates (
    serial      INTEGER PRIMARY KEY,
    subject     TEXT NOT NULL,
    role        TEXT NOT NULL,
    issued_at   BIGINT NOT NULL,
    not_after   BIGINT NOT NULL
);

CREATE TABLE nodes (
    id            TEXT PRIMARY KEY,
    registered_at BIGINT NOT NULL,
    cert_serial   BIGINT NOT NULL,
    addrs         TEXT NOT NULL DEFAULT '[]',
    quota         BIGINT NOT NULL DEFAULT 0,
    used          BIGINT NOT NULL DEFAULT 0,
    last_seen     BIGINT
);

-- Online sessions: the raw material of availability history.
CREATE TABLE node_sessions (
    node        TEXT NOT NULL REFERENCES nodes(id),
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    end_reason  TEXT
);
CREATE INDEX node_sessions_node ON node_sessions(node, started_at);

CREATE TABLE partners (
    name        TEXT PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    cert        BLOB NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE contents (
    id           TEXT PRIMARY KEY,
    partner      TEXT NOT NULL REFERENCES partners(name),
    name         TEXT NOT NULL,
    size         BIGINT NOT NULL,
    data_shards  INTEGER NOT NULL,
    parity_shards INTEGER NOT NULL,
    manifest     BLOB NOT NULL,
    content_key  BLOB NOT NULL,
    created_at   BIGINT NOT NULL
);

-- Who was told to hold what, since when: a witness for accounting.
CREATE TABLE placements (
    content     TEXT NOT NULL REFERENCES contents(id),
    segment     BIGINT NOT NULL,
    idx         INTEGER NOT NULL,
    node        TEXT NOT NULL REFERENCES nodes(id),
    placed_at   BIGINT NOT NULL,
    removed_at  BIGINT,
    PRIMARY KEY (content, segment, idx, node)
);
CREATE INDEX placements_node ON placements(node);

CREATE TABLE tickets (
    id          TEXT PRIMARY KEY,
    content     TEXT NOT NULL REFERENCES contents(id),
    client      TEXT NOT NULL,
    partner     TEXT NOT NULL,
    not_after   BIGINT NOT NULL,
    allowance   BIGINT NOT NULL,
    issued_at   BIGINT NOT NULL
);

CREATE TABLE problem_reports (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    reporter    TEXT NOT NULL,
    node        TEXT NOT NULL,
    content     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    segment     BIGINT,
    idx         INTEGER,
    detail      TEXT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX problem_reports_node ON problem_reports(node);

CREATE TABLE completions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket      TEXT NOT NULL,
    client      TEXT NOT NULL,
    content     TEXT NOT NULL,
    report      BLOB NOT NULL,
    at          BIGINT NOT NULL,
    UNIQUE (ticket, client, at)
);
