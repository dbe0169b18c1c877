-- CCDS coordinator schema, version 4, for PostgreSQL (see `../sqlite/0004_ticket_settlements.sql`).

CREATE TABLE dirty_tickets (
    ticket  TEXT COLLATE "C" PRIMARY KEY,
    mark    BIGINT NOT NULL
);

CREATE TABLE ticket_settlements (
    ticket  TEXT COLLATE "C" PRIMARY KEY,
    paid    TEXT COLLATE "C" NOT NULL
);

INSERT INTO dirty_tickets (ticket, mark)
    SELECT DISTINCT ticket, 0 FROM served_claims WHERE dirty = 1;
INSERT INTO ticket_settlements (ticket, paid)
    SELECT ticket, string_agg(rowid || ':' || paid_bytes, ',')
    FROM served_claims WHERE paid_bytes > 0 GROUP BY ticket;
DROP INDEX served_claims_dirty;
ALTER TABLE served_claims DROP COLUMN dirty;
ALTER TABLE served_claims DROP COLUMN paid_bytes;

ALTER TABLE completions DROP CONSTRAINT completions_ticket_client_at_key;
ALTER TABLE completions ADD COLUMN digest BYTEA;
ALTER TABLE completions ADD CONSTRAINT completions_ticket_digest_key UNIQUE (ticket, digest);
CREATE INDEX completions_content ON completions(content);
