-- CCDS coordinator schema, version 3: accounting (reports, claims, sales, audits, verdicts,
-- the ledger). Amounts are micro-credits (1 credit = 1,000,000).

-- Sales records: what a ticket cost and where the record came from
-- ('issued' through the coordinator, 'uploaded' by a partner, 'repair' for the CM's own fetches).
ALTER TABLE tickets ADD COLUMN price BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tickets ADD COLUMN source TEXT NOT NULL DEFAULT 'issued';
CREATE INDEX tickets_issued ON tickets(issued_at);
CREATE INDEX completions_ticket ON completions(ticket, at);

-- Every node report accepted, by its per-node sequence number (a replay is refused).
CREATE TABLE node_reports (
    node         TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    period_from  BIGINT NOT NULL,
    period_to    BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    claims       BIGINT NOT NULL,
    held         BIGINT,
    upload_bps   BIGINT NOT NULL,
    online_secs  BIGINT NOT NULL,
    -- BLAKE3 of the signed body, and the node's signature over it: the report as evidence.
    digest       BLOB NOT NULL,
    signature    BLOB NOT NULL,
    PRIMARY KEY (node, seq)
);

-- A node's cumulative claim under one ticket with the newest receipt backing it.
CREATE TABLE served_claims (
    ticket            TEXT NOT NULL,
    node              TEXT NOT NULL,
    content           TEXT NOT NULL,
    bytes             BIGINT NOT NULL,
    fragments         BIGINT NOT NULL,
    report_seq        BIGINT NOT NULL,
    first_seen        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    receipt_signer    TEXT,
    receipt_bytes     BIGINT,
    receipt_fragments BIGINT,
    receipt_seq       BIGINT,
    receipt_time      BIGINT,
    receipt_sig       BLOB,
    -- Confirmed bytes already paid; claims changed since the last reconciliation are dirty.
    paid_bytes        BIGINT NOT NULL DEFAULT 0,
    dirty             INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (ticket, node)
);
CREATE INDEX served_claims_dirty ON served_claims(dirty, ticket);

-- A node's latest list of the fragments it holds (postcard-encoded list of HeldContent).
CREATE TABLE node_holdings (
    node        TEXT PRIMARY KEY,
    report_seq  BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    fragments   BLOB NOT NULL
);

CREATE TABLE audits (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    node        TEXT NOT NULL,
    content     TEXT NOT NULL,
    segment     BIGINT NOT NULL,
    idx         INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    failed      INTEGER NOT NULL,
    offence     INTEGER NOT NULL,
    detail      TEXT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX audits_node ON audits(node, at);

-- Per-node state of the audit scheduler and of pay levels (JSON), rewritten as they change.
CREATE TABLE audit_states (
    node        TEXT PRIMARY KEY,
    state       TEXT NOT NULL
);
CREATE TABLE pay_states (
    node        TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    updated_run BIGINT
);

CREATE TABLE recon_runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at   BIGINT NOT NULL,
    period_from  BIGINT NOT NULL,
    period_to    BIGINT NOT NULL,
    summary      TEXT NOT NULL
);

CREATE TABLE verdicts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run         BIGINT NOT NULL REFERENCES recon_runs(id),
    node        TEXT,
    client      TEXT,
    ticket      TEXT,
    outcome     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    amount      TEXT NOT NULL,
    offence     INTEGER NOT NULL,
    evidence    TEXT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX verdicts_node ON verdicts(node, run);

-- Append-only double entry: `amount` moves from the `debit` account to the `credit` account.
-- Balances are sums over this table; nothing here is ever updated or deleted.
CREATE TABLE ledger (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run         BIGINT,
    at          BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    debit       TEXT NOT NULL,
    credit      TEXT NOT NULL,
    amount      BIGINT NOT NULL CHECK (amount > 0),
    service     TEXT,
    node        TEXT,
    memo        TEXT NOT NULL
);
CREATE INDEX ledger_debit ON ledger(debit);
CREATE INDEX ledger_credit ON ledger(credit);
CREATE INDEX ledger_node ON ledger(node, kind, at);

CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
