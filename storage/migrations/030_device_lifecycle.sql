-- Device life cycle (issue 4): certificate history, pairing codes, and the guards that make
-- revocation final. The allowed transitions are enforced by devices/registry.py; the
-- database adds what must hold whoever writes: no way back from revoked or retired, and a
-- device leaving service takes its certificates with it (they go on the next CRL).

ALTER TABLE devices
    ADD COLUMN state_changed_at timestamptz,
    ADD COLUMN battery_percent  smallint CHECK (battery_percent BETWEEN 0 AND 100),
    ADD COLUMN battery_at       timestamptz;

-- Every certificate a device was given, current or not. The CRL lists the revoked ones
-- that have not expired yet (an expired certificate is refused at the handshake anyway).
CREATE TABLE device_certificates (
    serial          text PRIMARY KEY,         -- hex, as devices.cert_serial
    device_id       text NOT NULL REFERENCES devices (id),
    issued_at       timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    revocation_reason text,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp()  -- issued_at has seconds
);
CREATE INDEX device_certificates_by_device ON device_certificates (device_id, recorded_at);
CREATE INDEX device_certificates_revoked ON device_certificates (expires_at)
    WHERE revoked_at IS NOT NULL;

INSERT INTO device_certificates (serial, device_id, issued_at, expires_at, revoked_at,
                                 revocation_reason)
SELECT cert_serial, id, created_at, cert_not_after,
       CASE WHEN state IN ('revoked', 'retired') THEN now() END,
       CASE WHEN state IN ('revoked', 'retired') THEN state END
FROM devices WHERE cert_serial IS NOT NULL AND cert_not_after IS NOT NULL;

-- The pairing code a device shows, stored only as a salted scrypt hash; single use.
CREATE TABLE device_pairing (
    device_id       text PRIMARY KEY REFERENCES devices (id),
    salt            bytea NOT NULL,
    code_hash       bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz
);

-- Wrong pairing attempts, counted per patient and per device over a sliding window.
CREATE TABLE device_pairing_failures (
    at              timestamptz NOT NULL DEFAULT now(),
    patient_id      uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    device_id       text REFERENCES devices (id)   -- null: no device waiting with that serial
);
CREATE INDEX device_pairing_failures_by_patient ON device_pairing_failures (patient_id, at);
CREATE INDEX device_pairing_failures_by_device ON device_pairing_failures (device_id, at);

CREATE FUNCTION devices_state_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.state IN ('revoked', 'retired') AND NEW.state IN ('provisioned', 'paired'))
       OR (OLD.state = 'paired' AND NEW.state = 'provisioned') THEN
        RAISE EXCEPTION 'device % is %: it cannot become %', OLD.id, OLD.state, NEW.state
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.state_changed_at := now();
    RETURN NEW;
END $$;
CREATE TRIGGER devices_state_guard BEFORE UPDATE OF state ON devices
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION devices_state_guard();

-- Revoked or retired, by the registry or by an erasure: its certificates are revoked and
-- an unused pairing code dies with it.
CREATE FUNCTION devices_out_of_service() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE device_certificates SET revoked_at = now(), revocation_reason = NEW.state
        WHERE device_id = NEW.id AND revoked_at IS NULL;
    UPDATE device_pairing SET used_at = now() WHERE device_id = NEW.id AND used_at IS NULL;
    RETURN NULL;
END $$;
CREATE TRIGGER devices_out_of_service AFTER UPDATE OF state ON devices
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state
                       AND NEW.state IN ('revoked', 'retired'))
    EXECUTE FUNCTION devices_out_of_service();
