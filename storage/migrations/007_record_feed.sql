-- The medical-record feed (issue 8): per-patient consent to feed, and a durable outbox.
-- A reading enters the outbox once (identifier unique), leaves it only on a definitive
-- answer from the record; the Bundle itself is sealed with the patient's data key.

CREATE TABLE record_feed_consents (
    patient_id      uuid PRIMARY KEY REFERENCES patients (id) ON DELETE CASCADE,
    enabled         boolean NOT NULL,
    ins_sealed      bytea NOT NULL,           -- national health identifier, sealed
    key_version     integer NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE record_feed_outbox (
    id              bigserial PRIMARY KEY,
    patient_id      uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    identifier      text NOT NULL UNIQUE,     -- <metric>/<sample time ms>: stable per reading
    metric          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    state           text NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'sent', 'refused')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status     integer,                  -- HTTP status of the last answer
    last_error      text,                     -- readable, shown to the patient
    sent_at         timestamptz,
    key_version     integer NOT NULL,
    sealed          bytea NOT NULL            -- the transaction Bundle, sealed
);
CREATE INDEX record_feed_outbox_due ON record_feed_outbox (next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX record_feed_outbox_by_patient ON record_feed_outbox (patient_id, state);
