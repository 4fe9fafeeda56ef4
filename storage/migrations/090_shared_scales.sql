-- Shared scales (issue 3): several people of one household weigh on one scale. The owner
-- (who paired it) invites members with a one-time code; a weighing the bridge cannot
-- attribute to one of them is held, sealed under the device's own key, for the users of the
-- scale to claim or dismiss. Held weighings are kept 30 days (the retention job).

-- Who uses a device. The owner's row follows devices.patient_id (trigger below), so a
-- device with one row is single-user and behaves as before; members join by invitation.
CREATE TABLE device_users (
    device_id       text NOT NULL REFERENCES devices (id),
    patient_id      uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    role            text NOT NULL CHECK (role IN ('owner', 'member')),
    joined_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, patient_id)
);
CREATE UNIQUE INDEX device_users_one_owner ON device_users (device_id) WHERE role = 'owner';
CREATE INDEX device_users_by_patient ON device_users (patient_id);

INSERT INTO device_users (device_id, patient_id, role, joined_at)
SELECT id, patient_id, 'owner', coalesce(state_changed_at, created_at)
FROM devices WHERE state = 'paired' AND patient_id IS NOT NULL;

-- An invitation: only the SHA-256 of its code is kept (80 random bits: no offline search
-- is worth it, and the index finds the row without trying every open invitation).
CREATE TABLE device_invitations (
    code_hash       bytea PRIMARY KEY CHECK (length(code_hash) = 32),
    device_id       text NOT NULL REFERENCES devices (id),
    created_by      uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    used_by         uuid REFERENCES patients (id) ON DELETE SET NULL
);
CREATE INDEX device_invitations_by_device ON device_invitations (device_id);

-- A weighing nobody could be sure of: its values sealed with the key of owner
-- 'device:<id>' (associated data: this row's identity). Erasing the device's key makes every
-- copy unreadable, as for a patient.
CREATE TABLE unclaimed_readings (
    id              uuid PRIMARY KEY,
    device_id       text NOT NULL REFERENCES devices (id),
    seq             bigint NOT NULL,          -- the device message it came in
    measured_at     timestamptz NOT NULL,     -- device clock
    held_at         timestamptz NOT NULL,     -- received: retention counts from here
    reason          text NOT NULL,
    key_version     integer NOT NULL,
    sealed          bytea NOT NULL
);
CREATE INDEX unclaimed_readings_by_device ON unclaimed_readings (device_id, measured_at);
CREATE INDEX unclaimed_readings_by_age ON unclaimed_readings (held_at);

-- "Not mine": hidden for that user; the reading goes once every user who can see it said so.
CREATE TABLE unclaimed_dismissals (
    reading_id      uuid NOT NULL REFERENCES unclaimed_readings (id) ON DELETE CASCADE,
    patient_id      uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    dismissed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (reading_id, patient_id)
);
CREATE INDEX unclaimed_dismissals_by_patient ON unclaimed_dismissals (patient_id);

-- Remove the held weighings of a device that no current user would still see: each user
-- who could see it (joined before it was held) dismissed it, or nobody uses the device.
CREATE FUNCTION unclaimed_sweep(device text) RETURNS bigint LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM unclaimed_readings r WHERE r.device_id = device AND NOT EXISTS (
            SELECT 1 FROM device_users u
            WHERE u.device_id = r.device_id AND u.joined_at <= r.held_at
              AND NOT EXISTS (SELECT 1 FROM unclaimed_dismissals x
                              WHERE x.reading_id = r.id AND x.patient_id = u.patient_id))
        RETURNING 1)
    SELECT count(*) FROM gone
$$;

-- A user leaving (or erased) may have been the last who had not dismissed a weighing.
CREATE FUNCTION device_users_left() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM unclaimed_sweep(OLD.device_id);
    RETURN NULL;
END $$;
CREATE TRIGGER device_users_left AFTER DELETE ON device_users
    FOR EACH ROW EXECUTE FUNCTION device_users_left();

-- The owner row follows pairing; a device leaving 'paired' (unpaired, revoked, its owner
-- erased) loses its members, its open invitations, its held weighings and its key: the
-- members lose the scale, and what was held becomes unreadable.
CREATE FUNCTION devices_users_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'paired' AND NEW.patient_id IS NOT NULL THEN
        INSERT INTO device_users (device_id, patient_id, role) VALUES (NEW.id, NEW.patient_id,
                                                                       'owner')
            ON CONFLICT (device_id, patient_id) DO UPDATE SET role = 'owner';
    ELSE
        DELETE FROM device_users WHERE device_id = NEW.id;
        DELETE FROM device_invitations WHERE device_id = NEW.id;
        DELETE FROM unclaimed_readings WHERE device_id = NEW.id;
        DELETE FROM data_keys WHERE owner = 'device:' || NEW.id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER devices_users_follow AFTER INSERT OR UPDATE OF state, patient_id ON devices
    FOR EACH ROW EXECUTE FUNCTION devices_users_follow();
