-- Issue 17: a sequence number reused with other content is quarantined, not dropped; a device
-- starts a new numbering with a new epoch.
--
-- epoch: the device's numbering epoch (MQTT user property "epoch"; absent = 0). A device
-- whose counter restarts (a firmware or factory reset, a counter that wrapped) bumps it and
-- numbers from 1 again; the idempotency key becomes (device, epoch, seq).
-- digest: HMAC-SHA-256 of the payload as received, under the system key 'ledger_digest'
-- (a plain hash of a small pack, a weighing say, could be brute-forced back to its value).
-- The same number with the same digest is a repeat; with another, a reuse. NULL for rows
-- stored before this migration: a repeat of one of those is not compared.
--
-- The new primary key rebuilds the index under a lock; the old rows all get epoch 0.
ALTER TABLE ingested_messages
    ADD COLUMN epoch  bigint NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    ADD COLUMN digest bytea;
ALTER TABLE ingested_messages
    DROP CONSTRAINT ingested_messages_pkey,
    ADD PRIMARY KEY (device_id, epoch, seq);
