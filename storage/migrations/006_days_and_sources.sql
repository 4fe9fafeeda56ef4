-- A patient's time zones over time, and their source order per metric (issue 9).

CREATE TABLE patient_time_zones (
    patient_id      uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    effective_from  timestamptz NOT NULL,
    zone            text NOT NULL,            -- IANA name, validated by the application
    PRIMARY KEY (patient_id, effective_from)
);

CREATE TABLE source_priorities (
    patient_id      uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    metric          text NOT NULL,
    device_ids      text[] NOT NULL,          -- best first; unlisted sources follow by model
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (patient_id, metric)
);
