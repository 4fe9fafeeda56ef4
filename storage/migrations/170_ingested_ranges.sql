-- The message ledger, compacted (issue 19). ingested_messages holds a row per message
-- (about 145 bytes with its key): at 1 Hz sent every 5 seconds, 29 bytes per stored sample,
-- kept a year. The maintenance job moves the rows older than the exact horizon
-- (HEALTHIOT_LEDGER_EXACT_HOURS) here, as runs of consecutive sequence numbers of one
-- device and epoch, received on one UTC day, sent in the same units: what idempotency
-- (is this number stored?) and loss accounting (messages, samples, rejected) need.
--
-- A number inside a run is stored: a late repeat of it is acknowledged and not stored
-- twice. Payload digests are not kept here; a repeat is told from a reuse by the device-
-- clock span instead (a repeat carries the same samples, so its accepted ones overlap
-- first_sample_at..last_sample_at; a number reused after a counter reset carries new ones).
-- Messages of a run: seq_hi - seq_lo + 1 (every number in it was stored). A run never spans
-- two UTC days of receipt, so that retention removes the ledger with the data, by day.
CREATE TABLE ingested_ranges (
    device_id       text NOT NULL,
    epoch           bigint NOT NULL CHECK (epoch >= 0),
    seq_lo          bigint NOT NULL,
    seq_hi          bigint NOT NULL,
    received_from   timestamptz NOT NULL,
    received_to     timestamptz NOT NULL,
    samples         bigint NOT NULL,
    rejected        bigint NOT NULL,
    first_sample_at timestamptz,
    last_sample_at  timestamptz,
    raw_units       jsonb,
    PRIMARY KEY (device_id, epoch, seq_lo),
    CHECK (seq_hi >= seq_lo),
    CHECK (received_to < date_trunc('day', received_from, 'UTC') + interval '1 day')
);
-- Compaction finds the rows past the horizon, oldest day first, by receive time. Once
-- compacted the table holds about a day of rows, so this index costs little; a block-range
-- index would be smaller, but pages freed by compaction and filled again by new rows widen
-- its ranges until every search reads the whole table.
CREATE INDEX ingested_messages_by_received ON ingested_messages (received_at);
