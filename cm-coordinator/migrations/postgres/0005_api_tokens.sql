-- CCDS coordinator schema, version 5: API tokens for the HTTP API.
--
-- Only a token's BLAKE3 hash is kept: a copy of the database does not let anyone call the API.
-- `id` is the first 16 hex digits of the hash, a public name for listing and revoking.
CREATE TABLE api_tokens (
    id          TEXT COLLATE "C" PRIMARY KEY,
    hash        TEXT COLLATE "C" NOT NULL UNIQUE,
    label       TEXT NOT NULL,
    -- The partner the token acts for (partner tokens), NULL for operator tokens.
    partner     TEXT COLLATE "C" REFERENCES partners(name),
    -- Space-separated scopes, e.g. "partner:publish partner:tickets".
    scopes      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
