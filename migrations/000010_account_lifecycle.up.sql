-- Account lifecycle (docs/api.md "Account lifecycle").
-- Sessions show where they were used: the client address (as resolved through trusted proxies) and the
-- User-Agent at login, and when they were last refreshed. Deleted with the family.
ALTER TABLE refresh_token_families ADD COLUMN last_used_at TIMESTAMPTZ;
ALTER TABLE refresh_token_families ADD COLUMN client_addr VARCHAR(64);
ALTER TABLE refresh_token_families ADD COLUMN user_agent VARCHAR(256);

-- A deleted account stays as a row without PII until the deletion grace period ends: its keyed blind
-- indexes keep its addresses blocked (the unique indexes), username_hash (a keyed blind index of the
-- username's confusable key) keeps the username blocked. Then the row is removed.
ALTER TABLE users ADD COLUMN deleted_at TIMESTAMPTZ;
ALTER TABLE users ADD COLUMN username_hash CHAR(64);
CREATE UNIQUE INDEX users_username_hash_key ON users (username_hash) WHERE username_hash IS NOT NULL;
CREATE INDEX users_deleted_at_idx ON users (deleted_at) WHERE deleted_at IS NOT NULL;
