-- Service credentials for KMS callers: only a SHA-256 of the (high-entropy) token is stored.
CREATE TABLE service_credentials (
    id         UUID         PRIMARY KEY,
    name       VARCHAR(64)  NOT NULL UNIQUE,
    token_hash CHAR(64)     NOT NULL UNIQUE,
    scopes     TEXT[]       NOT NULL,
    created_at TIMESTAMPTZ  NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);
