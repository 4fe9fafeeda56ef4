-- Operators of the service (issue 22): people who run healthiot, neither patients nor
-- clinicians. They sign in with a password and a one-time code, like clinicians. Their
-- role says what they may read: "operator" sees refusals (when, which device, why) without
-- payloads; "operator-values" may also open the payloads, which can hold health values.
-- The role is read at every request, so a change takes effect at once.
CREATE TABLE operators (
    id              uuid PRIMARY KEY,
    username        text NOT NULL UNIQUE,
    display_name    text NOT NULL,
    role            text NOT NULL CHECK (role IN ('operator', 'operator-values')),
    password_hash   text NOT NULL,
    totp_sealed     bytea NOT NULL,
    totp_last_step  bigint NOT NULL DEFAULT 0,    -- single-use codes
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- The operator's listing: one device's refusals over a period, newest first.
CREATE INDEX IF NOT EXISTS quarantine_by_device_time ON quarantine (device_id, received_at);
