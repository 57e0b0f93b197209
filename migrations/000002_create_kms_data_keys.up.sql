-- Versioned data keys, stored only wrapped by the root key.
CREATE TABLE kms_data_keys (
    id               UUID         PRIMARY KEY,
    version          INTEGER      NOT NULL UNIQUE CHECK (version > 0),
    algorithm        VARCHAR(32)  NOT NULL
        CHECK (algorithm IN ('AES-256-GCM', 'ChaCha20-Poly1305', 'SM4-GCM', 'AES-256-CBC')),
    encrypted_key    BYTEA,
    key_hash         CHAR(64)     NOT NULL,
    status           VARCHAR(16)  NOT NULL CHECK (status IN ('active', 'inactive', 'expired', 'revoked')),
    encryption_count BIGINT       NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ  NOT NULL DEFAULT now(),
    expires_at       TIMESTAMPTZ,
    destroyed_at     TIMESTAMPTZ,
    metadata         JSONB        NOT NULL DEFAULT '{}'::jsonb,
    -- A destroyed (revoked) key keeps its row for the record but loses its material.
    CHECK ((status = 'revoked') = (encrypted_key IS NULL))
);

-- At most one active key, enforced by the database: concurrent rotations cannot both win.
CREATE UNIQUE INDEX kms_data_keys_one_active ON kms_data_keys ((TRUE)) WHERE status = 'active';
CREATE INDEX kms_data_keys_status_idx ON kms_data_keys (status, version);

CREATE TRIGGER kms_data_keys_set_updated_at BEFORE UPDATE ON kms_data_keys
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE VIEW kms_data_key_statistics AS
    SELECT status, algorithm, count(*) AS key_count, max(version) AS latest_version
    FROM kms_data_keys
    GROUP BY status, algorithm;
