-- Root-key rotation (docs/operations.md "Rotating the root key"): which root key wraps each data key, and the
-- service secret (the source of blind-index keys), stored wrapped once the root key is first rotated.
ALTER TABLE kms_data_keys ADD COLUMN root_fingerprint VARCHAR(32);

CREATE TABLE kms_service_secret (
    id               SMALLINT     PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    wrapped          BYTEA        NOT NULL,
    root_fingerprint VARCHAR(32)  NOT NULL,
    updated_at       TIMESTAMPTZ  NOT NULL DEFAULT now()
);
CREATE TRIGGER kms_service_secret_set_updated_at BEFORE UPDATE ON kms_service_secret
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
