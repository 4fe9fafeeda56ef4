-- Certificate renewal over MQTT (issue 4, devices/renewal.py): each CSR answered, by the
-- SHA-256 of its DER form. A device that did not get its answer (a lost inbox message)
-- sends the same CSR again and gets the same certificate back instead of a new one; the
-- rows of the last day also bound how often a device may renew.
CREATE TABLE certificate_renewals (
    csr_sha256  bytea PRIMARY KEY CHECK (length(csr_sha256) = 32),
    device_id   text NOT NULL REFERENCES devices (id),
    serial      text NOT NULL REFERENCES device_certificates (serial),
    cert_pem    text NOT NULL,
    issued_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX certificate_renewals_by_device ON certificate_renewals (device_id, issued_at);
