-- Issue 18: the audit chain becomes HMAC-SHA256 under a key kept outside the database, its
-- head anchored in files outside it too (storage/audit.py). What is already stored:
--
-- - Rows chained with plain SHA-256 stay as they are, and verify checks them that way: the
--   first keyed row's MAC covers the last of their hashes, so from then on none of them can
--   be rewritten unseen either. audit_chain.legacy_until says where they end.
-- - Rows without a hash (from before 004, or slipped in since) were never part of any chain:
--   nothing vouches for them, so they leave the log (and the patients' access log, which
--   showed them) for audit_log_unchained, kept as found (the services may read it, as they
--   read everything: a backup taken as the service role must be complete).
-- - hash and prev_hash become NOT NULL: a row outside the chain cannot be stored again.

CREATE TABLE audit_log_unchained AS
    SELECT * FROM audit_log WHERE hash IS NULL OR prev_hash IS NULL;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON audit_log_unchained FROM healthiot_service;

ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only;
DELETE FROM audit_log WHERE hash IS NULL OR prev_hash IS NULL;
ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only;

ALTER TABLE audit_log ALTER COLUMN hash SET NOT NULL,
    ALTER COLUMN prev_hash SET NOT NULL,
    ADD CONSTRAINT audit_log_hash_size CHECK (octet_length(hash) = 32
                                              AND octet_length(prev_hash) = 32);

CREATE TABLE audit_chain (
    only_row        boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    legacy_until    bigint NOT NULL  -- rows up to this id were chained with plain SHA-256
);
INSERT INTO audit_chain (legacy_until) SELECT coalesce(max(id), 0) FROM audit_log;
REVOKE INSERT, UPDATE, DELETE ON audit_chain FROM healthiot_service;
