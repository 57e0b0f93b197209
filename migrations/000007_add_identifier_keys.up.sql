-- Confusable-safe identifiers (Unicode TR 39). username_key is the NFKC + confusable skeleton of the
-- username, case-folded; email_key_hash is the keyed blind index of the same key of the email
-- (skeleton of the local part at the domain). Both UNIQUE, so "аlice" (Cyrillic а) or "ａlice"
-- (fullwidth) cannot be registered beside "alice". Rows from before this migration have NULL keys until
-- the service fills them in at start-up.
ALTER TABLE users ADD COLUMN username_key TEXT;
ALTER TABLE users ADD COLUMN email_key_hash CHAR(64);
CREATE UNIQUE INDEX users_username_skeleton_key ON users (username_key) WHERE username_key IS NOT NULL;
CREATE UNIQUE INDEX users_email_key_hash_key ON users (email_key_hash) WHERE email_key_hash IS NOT NULL;
