-- The first native conversion (CREATE TABLE ... LIKE without INCLUDING INDEXES) left out
-- segments_pending_rollup from 003, so the maintenance job's search for segments not yet
-- summarised scanned whole partitions. Made again where it is missing; a no-op elsewhere.
CREATE INDEX IF NOT EXISTS segments_pending_rollup ON segments (patient_id, metric, start_at)
    WHERE NOT rolled_up;
