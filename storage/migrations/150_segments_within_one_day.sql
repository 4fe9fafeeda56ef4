-- Reads bound segments' start_at from both ends (issue 19): a segment that ends at or after
-- a read's start began less than a day before it, so a one-day read touches one or two
-- partitions or chunks, not a year of them. The store writes no segment spanning a day or
-- more (a message with several days of backlog becomes one segment per UTC day); the table
-- refuses one. Added before the conversion on a new database, so both engines carry it.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM segments WHERE end_at >= start_at + interval '24 hours') THEN
        RAISE EXCEPTION 'segments spanning 24 hours or more exist: reads bounded from below '
            'would miss them; they must be re-sealed one per UTC day before this migration';
    END IF;
END $$;
ALTER TABLE segments ADD CONSTRAINT segments_within_one_day
    CHECK (end_at < start_at + interval '24 hours');
-- create_hypertable used to add its own index on start_at, which the native path lacks;
-- the conversion no longer makes it, and a database converted before drops it.
DROP INDEX IF EXISTS segments_start_at_idx;
