-- A segment the maintenance job cannot open (tampered, moved, its key gone) aborted the
-- whole pass, retention included (issue 19). It is now moved here, sealed as it was found,
-- with the reason: rollups, compaction and retention go on without it, and whoever
-- investigates has the row. Removed with the raw data by retention, and by erasure.
CREATE TABLE segments_set_aside (
    id              uuid NOT NULL,
    patient_id      uuid NOT NULL,
    metric          text NOT NULL,
    device_id       text NOT NULL,
    start_at        timestamptz NOT NULL,
    end_at          timestamptz NOT NULL,
    samples         integer NOT NULL,
    key_version     integer NOT NULL,
    sealed          bytea NOT NULL,
    reason          text NOT NULL,
    set_aside_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, start_at)
);
CREATE INDEX segments_set_aside_by_patient ON segments_set_aside (patient_id);
