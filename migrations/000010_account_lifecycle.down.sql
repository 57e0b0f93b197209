DROP INDEX IF EXISTS users_deleted_at_idx;
DROP INDEX IF EXISTS users_username_hash_key;
ALTER TABLE users DROP COLUMN IF EXISTS username_hash;
ALTER TABLE users DROP COLUMN IF EXISTS deleted_at;
ALTER TABLE refresh_token_families DROP COLUMN IF EXISTS user_agent;
ALTER TABLE refresh_token_families DROP COLUMN IF EXISTS client_addr;
ALTER TABLE refresh_token_families DROP COLUMN IF EXISTS last_used_at;
