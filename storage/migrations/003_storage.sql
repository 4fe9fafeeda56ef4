-- Storage (issue 6): rollups per hour and per day, sealed like segments, and the flag that
-- tells the maintenance job which segments it has not summarised yet.

ALTER TABLE segments ADD COLUMN rolled_up boolean NOT NULL DEFAULT false;
CREATE INDEX segments_pending_rollup ON segments (patient_id, metric, start_at)
    WHERE NOT rolled_up;

-- One row per patient, metric, resolution ('1h' or '1d') and UTC window (a day of hours, a
-- month of days): per bucket the count, sum, min, max, mean and standard deviation, packed
-- and sealed with the patient's key; the associated data binds it to this row.
CREATE TABLE rollups (
    patient_id      uuid NOT NULL,
    metric          text NOT NULL,
    resolution      text NOT NULL CHECK (resolution IN ('1h', '1d')),
    window_start    timestamptz NOT NULL,
    buckets         integer NOT NULL,
    key_version     integer NOT NULL,
    sealed          bytea NOT NULL,
    computed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (patient_id, metric, resolution, window_start)
);

-- What the retention job removed and when: the record the law asks for (no health data).
CREATE TABLE retention_runs (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    kind            text NOT NULL,            -- raw, rollups, quarantine, audit, ledger
    cutoff          timestamptz NOT NULL,
    removed         bigint NOT NULL
);
