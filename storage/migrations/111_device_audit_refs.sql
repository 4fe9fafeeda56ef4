-- Erasure that reaches backups (issue 18): devices in the audit log, and registry rows.
--
-- Audit rows name a device by a reference, not by its id: 'device/<audit_ref>'. Erasing
-- a person who used the device gives it a new reference, after which nothing maps the old
-- one to the device (the audit log itself is append-only and is never rewritten).
ALTER TABLE devices ADD COLUMN audit_ref text NOT NULL UNIQUE
    DEFAULT 'r' || substr(replace(gen_random_uuid()::text, '-', ''), 1, 24);

-- An erased patient's devices stay in the registry, revoked, so that their certificates
-- stay refused; the serial (printed on the device, on its box, on a receipt) goes.
ALTER TABLE devices ALTER COLUMN serial DROP NOT NULL;
