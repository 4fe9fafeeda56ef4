-- The patient's link to their medical record (issue 20): the OAuth 2.0 authorisation they
-- gave healthiot at Mon espace santé, and what the PHD Device profile needs of a device.

-- An authorisation request while the patient signs in at the record: the PKCE verifier and
-- the nonce, sealed, found again from the redirect by the hash of the OAuth state.
CREATE TABLE record_link_requests (
    state_hash        bytea PRIMARY KEY,         -- sha256 of the OAuth state parameter
    patient_id        uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    key_version       integer NOT NULL,
    sealed            bytea NOT NULL,
    expires_at        timestamptz NOT NULL
);
CREATE INDEX record_link_requests_by_patient ON record_link_requests (patient_id);

-- The link once given: the tokens and the person identifier the record bound to them,
-- sealed with the patient's data key (erasure makes them unreadable). 'relink': the record
-- stopped taking them and the patient has to link again.
CREATE TABLE record_links (
    patient_id        uuid PRIMARY KEY REFERENCES patients (id) ON DELETE CASCADE,
    state             text NOT NULL CHECK (state IN ('linked', 'relink')),
    key_version       integer NOT NULL,
    tokens_sealed     bytea NOT NULL,
    access_expires_at timestamptz NOT NULL,
    linked_at         timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- The PHD system identifier (EUI-64) of a device, as its maker assigned it. Our devices do
-- not report one over MQTT: the operator records it (from the device label or its
-- packaging) and the feed sends no reading of a device without one.
CREATE TABLE record_device_system_ids (
    device_id         text PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    system_id         text NOT NULL CHECK (system_id ~ '^[0-9A-F]{2}(-[0-9A-F]{2}){7}$')
);

-- The person identifier now comes from the link: the INS is no longer asked for.
ALTER TABLE record_feed_consents ALTER COLUMN ins_sealed DROP NOT NULL;
