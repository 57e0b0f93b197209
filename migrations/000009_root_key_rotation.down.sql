-- Only safe while every data key is still wrapped under the original root key (no rekey has run).
DROP TABLE kms_service_secret;
ALTER TABLE kms_data_keys DROP COLUMN root_fingerprint;
