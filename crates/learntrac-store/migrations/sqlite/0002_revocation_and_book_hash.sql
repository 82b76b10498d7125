-- Tokens, refresh tokens included, carry the token_version they were
-- issued under; raising it (on a password change) makes every older token
-- invalid, even one issued while the change was being made. revoked_tokens lists
-- signed-out sessions until they would have expired anyway. content_hash
-- detects a book uploaded twice.

ALTER TABLE refresh_tokens ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;

ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;

CREATE TABLE revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);

ALTER TABLE books ADD COLUMN content_hash TEXT;
CREATE UNIQUE INDEX books_content_hash ON books(content_hash);
