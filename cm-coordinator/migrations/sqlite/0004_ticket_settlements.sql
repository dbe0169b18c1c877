-- CCDS coordinator schema, version 4: reconciliation's progress kept per ticket, and completion
-- reports told apart by digest.
--
-- Runs used to mark every claim they settled (paid bytes, a dirty flag) in `served_claims`; at
-- millions of claims per run, rewriting those wide rows took most of a run. A run now deletes
-- narrow rows from `dirty_tickets` and writes one packed row per ticket it settled.

-- Tickets with a claim changed since they were last settled. `mark` is the rowid of the node
-- report that changed one (node reports are never deleted, so marks only grow): a run settles
-- the tickets marked up to the newest report it saw, and a ticket changed during a run stays dirty.
CREATE TABLE dirty_tickets (
    ticket  TEXT PRIMARY KEY,
    mark    BIGINT NOT NULL
) WITHOUT ROWID;

-- Confirmed bytes already paid, per claim of a ticket: `claim rowid:bytes` pairs separated by
-- commas, for the claims with bytes paid.
CREATE TABLE ticket_settlements (
    ticket  TEXT PRIMARY KEY,
    paid    TEXT NOT NULL
) WITHOUT ROWID;

INSERT INTO dirty_tickets (ticket, mark)
    SELECT DISTINCT ticket, 0 FROM served_claims WHERE dirty = 1;
INSERT INTO ticket_settlements (ticket, paid)
    SELECT ticket, group_concat(rowid || ':' || paid_bytes, ',')
    FROM served_claims WHERE paid_bytes > 0 GROUP BY ticket;
DROP INDEX served_claims_dirty;
ALTER TABLE served_claims DROP COLUMN dirty;
ALTER TABLE served_claims DROP COLUMN paid_bytes;

-- Completion reports are told apart by their digest (BLAKE3 of the signed report), not by the
-- second they arrived in: two downloads under one ticket can complete within the same second.
-- Reports recorded before have no digest.
CREATE TABLE completions_v4 (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket      TEXT NOT NULL,
    client      TEXT NOT NULL,
    content     TEXT NOT NULL,
    report      BLOB NOT NULL,
    digest      BLOB,
    at          BIGINT NOT NULL,
    UNIQUE (ticket, digest)
);
INSERT INTO completions_v4 (id, ticket, client, content, report, digest, at)
    SELECT id, ticket, client, content, report, NULL, at FROM completions;
DROP TABLE completions;
ALTER TABLE completions_v4 RENAME TO completions;
CREATE INDEX completions_ticket ON completions(ticket, at);
CREATE INDEX completions_content ON completions(content);
