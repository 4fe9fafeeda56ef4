-- A patient's FHIR Bulk Data export (issue 21): the job a kick-off creates, polled by its
-- status URL. Its files are generated when fetched (streamed from the sealed segments), so
-- nothing readable rests here; the row goes on DELETE, on expiry, or with the patient.
CREATE TABLE export_jobs (
    id            uuid PRIMARY KEY,
    patient_id    uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    requested_at  timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL
);
CREATE INDEX export_jobs_by_patient ON export_jobs (patient_id);
