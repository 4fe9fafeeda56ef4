-- Patient accounts as issue 7 wants them: TOTP enrolment and single-use codes, sessions
-- with rotating refresh tokens, erasure records, and an append-only hash-chained audit log.

-- NULL until the first code is confirmed: no health data before the second factor works.
ALTER TABLE patients ADD COLUMN totp_confirmed_at timestamptz;
UPDATE patients SET totp_confirmed_at = created_at;
-- The last TOTP time step accepted: a code at or below it is a replay.
ALTER TABLE patients ADD COLUMN totp_last_step bigint NOT NULL DEFAULT 0;

-- A session is a refresh-token family: rotation keeps the family, reuse of a spent token
-- or logout revokes it, and access tokens carry its id (sid) so they die with it.
CREATE TABLE sessions (
    id              uuid PRIMARY KEY,
    subject         text NOT NULL,            -- the patient id, or clinician:<id>
    methods         text[] NOT NULL,          -- how it was authenticated (amr), kept on refresh
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    revoked_reason  text
);
CREATE INDEX sessions_by_subject ON sessions (subject);

CREATE TABLE refresh_tokens (
    token_hash      bytea PRIMARY KEY,        -- SHA-256 of the token: a dump holds no token
    session_id      uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at       timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz
);

-- What remains of an erased patient: that an erasure happened, and when. No identity beyond
-- the id, which nothing else refers to any more.
CREATE TABLE erasures (
    id              bigserial PRIMARY KEY,
    patient_id      uuid NOT NULL,
    requested_by    text NOT NULL,
    erased_at       timestamptz NOT NULL DEFAULT now(),
    detail          text NOT NULL
);

-- The audit chain: each row's hash covers the previous row's hash and its own content.
ALTER TABLE audit_log ADD COLUMN prev_hash bytea;
ALTER TABLE audit_log ADD COLUMN hash bytea;

-- Append-only: no UPDATE ever; DELETE only by the retention job, which says so for its
-- transaction (SET LOCAL healthiot.audit_retention = 'on') and cuts from the oldest end.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('healthiot.audit_retention', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
