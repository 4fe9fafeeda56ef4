-- Issue 5, normalisation: what the ledger of ingested messages keeps besides the receive
-- time, so that device time, clock offset and raw values stay recoverable.
--
-- first_sample_at / last_sample_at: the oldest and newest accepted sample of the message,
-- device clock. last_sample_at - received_at is the device clock offset the bridge saw
-- (positive: the clock is ahead; negative: behind, or the message was delivered late).
-- raw_units: for a message whose accepted samples came in a non-canonical unit, which, per
-- metric ({"body_weight": ["[lb_av]"]}); NULL when every one was canonical. Samples are
-- stored converted; vitals.normalise.raw_values(metric, unit, value) gives back what the
-- device sent, for the samples of this device between first and last_sample_at.
ALTER TABLE ingested_messages
    ADD COLUMN first_sample_at timestamptz,
    ADD COLUMN last_sample_at  timestamptz,
    ADD COLUMN raw_units       jsonb;
