-- The first schema: patients, their wrapped data keys, devices, ingested messages,
-- sealed segments, quarantine and the audit log. Health values exist only inside sealed
-- blobs; what stays in clear is what the database needs to find rows.

CREATE TABLE patients (
    id              uuid PRIMARY KEY,
    username        text NOT NULL UNIQUE,
    password_hash   text NOT NULL,
    totp_sealed     bytea NOT NULL,           -- TOTP secret, sealed with the system key
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- One data key per patient and version, stored only wrapped by the key-encryption key.
CREATE TABLE data_keys (
    owner           text NOT NULL,            -- a patient id, or 'system:<purpose>'
    version         integer NOT NULL,
    kek_id          text NOT NULL,
    wrapped         bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, version)
);

CREATE TABLE devices (
    id              text PRIMARY KEY,         -- the certificate CN and the topic segment
    model           text NOT NULL CHECK (model IN
                        ('watch', 'scale', 'bp_cuff', 'thermometer', 'glucometer',
                         'pulse_oximeter')),
    serial          text NOT NULL,
    firmware_version text,
    patient_id      uuid REFERENCES patients (id),
    state           text NOT NULL CHECK (state IN ('provisioned', 'paired', 'revoked', 'retired')),
    cert_serial     text,
    cert_not_after  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen       timestamptz,
    UNIQUE (model, serial)
);

-- One row per device message stored: the idempotency key and the loss ledger.
CREATE TABLE ingested_messages (
    device_id       text NOT NULL,
    seq             bigint NOT NULL,
    received_at     timestamptz NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    samples         integer NOT NULL,
    rejected        integer NOT NULL,
    PRIMARY KEY (device_id, seq)
);

CREATE TABLE segments (
    id              uuid PRIMARY KEY,
    patient_id      uuid NOT NULL,
    metric          text NOT NULL,
    device_id       text NOT NULL,
    start_at        timestamptz NOT NULL,
    end_at          timestamptz NOT NULL,
    samples         integer NOT NULL,
    key_version     integer NOT NULL,
    sealed          bytea NOT NULL            -- nonce || AES-256-GCM(packed samples)
);
CREATE INDEX segments_by_patient_metric_time ON segments (patient_id, metric, start_at);

CREATE TABLE quarantine (
    id              bigserial PRIMARY KEY,
    received_at     timestamptz NOT NULL,
    device_id       text,
    topic           text NOT NULL,
    reason          text NOT NULL,
    detail          text NOT NULL,
    sealed          bytea NOT NULL            -- the payload, sealed with the system key
);

CREATE TABLE audit_log (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    actor           text NOT NULL,
    patient_id      uuid,
    action          text NOT NULL,
    resource        text NOT NULL,
    outcome         text NOT NULL
);
CREATE INDEX audit_log_by_patient ON audit_log (patient_id, at);
