-- The audit trail: one row per administrative action or change of data, in
-- the order it happened. Each row carries an HMAC over its fields and the
-- previous row's HMAC, so a removed, reordered or altered row breaks the
-- chain. audit_head holds the last sequence number and HMAC; updating it
-- first serialises writers, and it reveals a removed last row.
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    client_address TEXT NOT NULL,
    request_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log(at);

CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '');

-- Alerts fired by the alert rules; repeats of one rule for one subject
-- within the grouping interval raise count instead of adding rows.
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule TEXT NOT NULL,
    subject TEXT NOT NULL,
    first_at INTEGER NOT NULL,
    last_at INTEGER NOT NULL,
    count INTEGER NOT NULL,
    details TEXT NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX alerts_rule_subject ON alerts(rule, subject, last_at);

-- Addresses (in their logged, masked form) that each user has signed in
-- from, for the alert on an administrator signing in from a new address.
CREATE TABLE known_addresses (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    PRIMARY KEY (user_id, address)
);
