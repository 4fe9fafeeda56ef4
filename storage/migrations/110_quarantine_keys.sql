-- Erasure that reaches backups (issue 18): quarantined payloads.
--
-- Quarantined payloads were all sealed under the shared key 'system:quarantine', which no
-- erasure destroys: a dump from before an erasure still opened them. Each row now says
-- which key sealed it: the patient's when the message's patient is known (a device paired
-- to one person), else the device's own quarantine key 'quarantine:device:<id>' (a device
-- not paired yet, a shared scale), destroyed with the device or with the erasure of anyone
-- who used it; 'system:quarantine' only where no device is named. A device out of service
-- (revoked, retired) has its refusals recorded without the payload: nothing it sends after
-- the revocation is kept (sealed, key_owner and key_version NULL).
ALTER TABLE quarantine
    ADD COLUMN key_owner   text,
    ADD COLUMN key_version integer,
    ALTER COLUMN sealed DROP NOT NULL;
UPDATE quarantine SET key_owner = 'system:quarantine', key_version = 1;
ALTER TABLE quarantine ADD CONSTRAINT quarantine_sealed_with_a_key
    CHECK ((sealed IS NULL) = (key_owner IS NULL) AND (key_owner IS NULL) = (key_version IS NULL));
CREATE INDEX quarantine_by_device ON quarantine (device_id);
CREATE INDEX quarantine_by_key_owner ON quarantine (key_owner);

-- A device leaving service takes its quarantine key and what it sealed (its secret half,
-- outside the database, is destroyed by the application: storage/erasure.py).
CREATE FUNCTION devices_quarantine_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM quarantine WHERE key_owner = 'quarantine:device:' || NEW.id;
    DELETE FROM data_keys WHERE owner = 'quarantine:device:' || NEW.id;
    RETURN NULL;
END $$;
CREATE TRIGGER devices_quarantine_follow AFTER UPDATE OF state ON devices
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state
                       AND NEW.state IN ('revoked', 'retired'))
    EXECUTE FUNCTION devices_quarantine_follow();
