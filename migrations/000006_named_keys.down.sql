-- Back to one flat key space: the versions of every key but `default` are dropped, so this loses the data
-- encrypted under other keys (users' PII included). Only run it right after the upgrade.
ALTER TABLE service_credentials DROP COLUMN key_patterns;

UPDATE users SET pii_key_version = NULL WHERE pii_key_version = 0;

DROP VIEW kms_data_key_statistics;
DELETE FROM kms_data_keys WHERE key_name <> 'default';
ALTER TABLE kms_data_keys DROP CONSTRAINT kms_data_keys_pending_has_date;
UPDATE kms_data_keys SET status = 'inactive' WHERE status = 'pending_destruction';
ALTER TABLE kms_data_keys DROP CONSTRAINT kms_data_keys_status_check;
ALTER TABLE kms_data_keys ALTER COLUMN status TYPE VARCHAR(16);
ALTER TABLE kms_data_keys ADD CONSTRAINT kms_data_keys_status_check
    CHECK (status IN ('active', 'inactive', 'expired', 'revoked'));
DROP INDEX kms_data_keys_status_idx;
CREATE INDEX kms_data_keys_status_idx ON kms_data_keys (status, version);
DROP INDEX kms_data_keys_one_active;
CREATE UNIQUE INDEX kms_data_keys_one_active ON kms_data_keys ((TRUE)) WHERE status = 'active';
ALTER TABLE kms_data_keys DROP CONSTRAINT kms_data_keys_key_version_key;
ALTER TABLE kms_data_keys ADD CONSTRAINT kms_data_keys_version_key UNIQUE (version);
ALTER TABLE kms_data_keys DROP COLUMN destroy_after;
ALTER TABLE kms_data_keys DROP COLUMN key_name;
CREATE VIEW kms_data_key_statistics AS
    SELECT status, algorithm, count(*) AS key_count, max(version) AS latest_version
    FROM kms_data_keys
    GROUP BY status, algorithm;

DROP TABLE kms_keys;
