-- Clinicians and the consents patients give them (issue 8).

CREATE TABLE clinicians (
    id              uuid PRIMARY KEY,
    rpps            char(11) NOT NULL UNIQUE,     -- validated (Luhn) before insert
    profession      text NOT NULL,
    display_name    text NOT NULL,
    username        text UNIQUE,                  -- password + TOTP accounts
    password_hash   text,
    totp_sealed     bytea,
    totp_last_step  bigint NOT NULL DEFAULT 0,    -- single-use codes, as for patients
    oidc_subject    text UNIQUE,                  -- accounts from the identity provider
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((username IS NULL) = (password_hash IS NULL)),
    CHECK (username IS NOT NULL OR oidc_subject IS NOT NULL)
);

-- What a patient shares with a clinician: metrics (categories are expanded at grant time,
-- so a later catalogue change does not widen an old consent), a data period, an expiry.
CREATE TABLE consents (
    id              uuid PRIMARY KEY,
    patient_id      uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    clinician_id    uuid NOT NULL REFERENCES clinicians (id),
    metrics         text[] NOT NULL CHECK (cardinality(metrics) > 0),
    data_from       timestamptz NOT NULL,
    data_to         timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    granted_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    CHECK (data_from < data_to)
);
CREATE INDEX consents_active ON consents (clinician_id, patient_id) WHERE revoked_at IS NULL;
CREATE INDEX consents_by_patient ON consents (patient_id, granted_at);
