DROP INDEX IF EXISTS users_email_key_hash_key;
DROP INDEX IF EXISTS users_username_skeleton_key;
ALTER TABLE users DROP COLUMN IF EXISTS email_key_hash;
ALTER TABLE users DROP COLUMN IF EXISTS username_key;
