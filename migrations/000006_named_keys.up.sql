-- Named keys (docs/api.md "Named keys"): every data key becomes a version of a named key. The keys that
-- existed before become the versions of `default`, so every stored ciphertext still opens; users' PII is
-- moved onto the reserved key `authkms.users` by maintenance (docs/operations.md "Moving to named keys").
CREATE TABLE kms_keys (
    name                     VARCHAR(63)  PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_.-]{0,62}$'),
    -- NULL policies follow the service configuration (kms.algorithm, kms.rotate_interval, …).
    algorithm                VARCHAR(32)  CHECK (algorithm IN ('AES-256-GCM', 'ChaCha20-Poly1305', 'SM4-GCM')),
    rotate_interval          INTERVAL     CHECK (rotate_interval >= interval '0'),
    rotate_after_encryptions BIGINT       CHECK (rotate_after_encryptions > 0),
    destruction_wait         INTERVAL     CHECK (destruction_wait >= interval '7 days'),
    description              TEXT         NOT NULL DEFAULT '',
    -- Grows with every change to the key or its versions: replicas compare it to know their cache is current.
    generation               BIGINT       NOT NULL DEFAULT 1,
    created_at               TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at               TIMESTAMPTZ  NOT NULL DEFAULT now()
);
CREATE TRIGGER kms_keys_set_updated_at BEFORE UPDATE ON kms_keys
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

INSERT INTO kms_keys (name) VALUES ('default');

DROP VIEW kms_data_key_statistics;
-- 'pending_destruction' (19 characters) does not fit the VARCHAR(16) of migration 000002.
ALTER TABLE kms_data_keys ALTER COLUMN status TYPE VARCHAR(32);
ALTER TABLE kms_data_keys ADD COLUMN key_name VARCHAR(63) NOT NULL DEFAULT 'default' REFERENCES kms_keys (name);
ALTER TABLE kms_data_keys ALTER COLUMN key_name DROP DEFAULT;
ALTER TABLE kms_data_keys ADD COLUMN destroy_after TIMESTAMPTZ;

-- Versions are numbered per key; one active version per key.
ALTER TABLE kms_data_keys DROP CONSTRAINT kms_data_keys_version_key;
ALTER TABLE kms_data_keys ADD CONSTRAINT kms_data_keys_key_version_key UNIQUE (key_name, version);
DROP INDEX kms_data_keys_one_active;
CREATE UNIQUE INDEX kms_data_keys_one_active ON kms_data_keys (key_name) WHERE status = 'active';
DROP INDEX kms_data_keys_status_idx;
CREATE INDEX kms_data_keys_status_idx ON kms_data_keys (key_name, status, version);

ALTER TABLE kms_data_keys DROP CONSTRAINT kms_data_keys_status_check;
ALTER TABLE kms_data_keys ADD CONSTRAINT kms_data_keys_status_check
    CHECK (status IN ('active', 'inactive', 'expired', 'pending_destruction', 'revoked'));
ALTER TABLE kms_data_keys ADD CONSTRAINT kms_data_keys_pending_has_date
    CHECK (status <> 'pending_destruction' OR destroy_after IS NOT NULL);

CREATE VIEW kms_data_key_statistics AS
    SELECT key_name, status, algorithm, count(*) AS key_count, max(version) AS latest_version
    FROM kms_data_keys
    GROUP BY key_name, status, algorithm;

-- users.pii_key_version now counts versions of `authkms.users`; 0 marks a row written under `default`
-- before named keys, which maintenance re-encrypts (and re-indexes) first.
UPDATE users SET pii_key_version = 0
 WHERE email_encrypted IS NOT NULL OR phone_encrypted IS NOT NULL OR name_encrypted IS NOT NULL
    OR totp_secret_encrypted IS NOT NULL;

-- Credentials are scoped to key names (exact or prefix.*); existing ones keep working on `default`.
ALTER TABLE service_credentials ADD COLUMN key_patterns TEXT[] NOT NULL DEFAULT '{default}';
