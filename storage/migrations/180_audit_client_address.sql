-- The network address of the client whose request an audit entry traces (issue 21: the
-- AuditEvent's agent network). NULL for entries no request made (the feed, the command
-- line, maintenance) and for those before this column. Covered by the chain's MAC when set.
ALTER TABLE audit_log ADD COLUMN client_address text;
