DROP VIEW IF EXISTS kms_data_key_statistics;
DROP TABLE IF EXISTS kms_data_keys;
