-- A partitioned table's unique keys must hold its partition column: PostgreSQL's range
-- partitioning refuses any other, and so does TimescaleDB's create_hypertable. 001 keyed
-- segments on id alone, so the TimescaleDB path failed at its first start. The key becomes
-- (id, start_at) while the table is still plain; partitioning.py then converts it as it is.
-- A database converted natively before this migration has that key already: left alone.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
        WHERE i.indrelid = 'segments'::regclass AND i.indisprimary AND a.attname = 'start_at')
    THEN
        ALTER TABLE segments DROP CONSTRAINT segments_pkey,
            ADD CONSTRAINT segments_pkey PRIMARY KEY (id, start_at);
    END IF;
END $$;
