-- Users: PII is stored only encrypted (self-describing KMS ciphertext) with a keyed blind index beside it.
CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TABLE users (
    id                    BIGSERIAL PRIMARY KEY,
    username              VARCHAR(32)  NOT NULL,
    password              TEXT         NOT NULL,
    email_encrypted       BYTEA,
    email_hash            CHAR(64),
    phone_encrypted       BYTEA,
    phone_hash            CHAR(64),
    name_encrypted        BYTEA,
    name_hash             CHAR(64),
    totp_secret_encrypted BYTEA,
    totp_enabled          BOOLEAN      NOT NULL DEFAULT FALSE,
    totp_last_step        BIGINT,
    -- Lowest data-key version any of this row's ciphertexts uses, so maintenance finds rows to re-encrypt.
    pii_key_version       INTEGER,
    created_at            TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ  NOT NULL DEFAULT now()
);

-- Case-insensitive uniqueness: "Alice" and "alice" are the same account.
CREATE UNIQUE INDEX users_username_key ON users (lower(username));
CREATE UNIQUE INDEX users_email_hash_key ON users (email_hash) WHERE email_hash IS NOT NULL;
CREATE UNIQUE INDEX users_phone_hash_key ON users (phone_hash) WHERE phone_hash IS NOT NULL;
CREATE INDEX users_name_hash_idx ON users (name_hash);
CREATE INDEX users_pii_key_version_idx ON users (pii_key_version, id);

CREATE TRIGGER users_set_updated_at BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
