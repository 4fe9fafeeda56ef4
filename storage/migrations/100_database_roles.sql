-- Issue 18: the services connect as healthiot_service, which may read and write rows and
-- nothing else; this runs as healthiot_owner (storage/roles.py), which owns the schema.
-- What the services need beyond rows goes through SECURITY DEFINER functions of the owner,
-- each doing one thing, with a fixed search_path (nobody can create in public but the owner),
-- executable by the services only. Other functions run with the caller's rights.

GRANT USAGE ON SCHEMA public TO healthiot_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO healthiot_service;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO healthiot_service;
-- Tables of later migrations (and partitions) are granted the same way.
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO healthiot_service;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO healthiot_service;

-- The audit log: the services append and read, nothing more.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM healthiot_service;

-- Append-only for everyone, the owner included, but for the retention function below. The
-- setting it checks is no longer enough by itself (any session could set it): the deleting
-- role must also be the owner, which only that function makes the services.
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_user = 'healthiot_owner'
       AND current_setting('healthiot.audit_cut', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
-- TRUNCATE fires no row trigger.
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- How long the log is kept: set by `healthiot db migrate` (from the settings), readable but
-- not writable by the services, so they cannot shorten it.
CREATE TABLE audit_policy (
    only_row        boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    retention       interval NOT NULL CHECK (retention >= interval '0')
);
INSERT INTO audit_policy (retention) VALUES (interval '1825 days');
REVOKE INSERT, UPDATE, DELETE ON audit_policy FROM healthiot_service;

-- Retention, the one way rows leave the log: the oldest rows up to the first one not yet past
-- the period (whatever the caller asks), so the rest stays one chain.
CREATE FUNCTION audit_log_cut(older_than timestamptz) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    due timestamptz := least(older_than, now() - (SELECT retention FROM audit_policy));
    keep_from bigint;
    removed bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(1096107092);  -- the chain's append lock, "AUDT"
    SELECT min(id) INTO keep_from FROM audit_log WHERE at >= due;
    PERFORM set_config('healthiot.audit_cut', 'on', true);
    DELETE FROM audit_log WHERE keep_from IS NULL OR id < keep_from;
    GET DIAGNOSTICS removed = ROW_COUNT;
    PERFORM set_config('healthiot.audit_cut', 'off', true);
    RETURN removed;
END $$;
REVOKE ALL ON FUNCTION audit_log_cut(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_log_cut(timestamptz) TO healthiot_service;

-- Native partitions of segments (storage/partitioning.py): the maintenance job makes the
-- months ahead and drops those past retention, which only the table's owner may do.
CREATE FUNCTION segments_create_month(month timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp SET TimeZone = 'UTC' AS $$
DECLARE
    first timestamptz := date_trunc('month', month);
    name text := 'segments_' || to_char(date_trunc('month', month), 'YYYYMM');
BEGIN
    IF to_regclass('public.' || name) IS NOT NULL THEN
        RETURN 'exists';
    END IF;
    IF EXISTS (SELECT 1 FROM segments_default
               WHERE start_at >= first AND start_at < first + interval '1 month') THEN
        RETURN 'stray';  -- rows already in the default partition: the month stays there
    END IF;
    -- Qualified: pg_catalog comes first in search_path, and would be where it is created.
    EXECUTE format('CREATE TABLE public.%I PARTITION OF public.segments'
                   ' FOR VALUES FROM (%L) TO (%L)',
                   name, first, first + interval '1 month');
    RETURN 'made';
END $$;
REVOKE ALL ON FUNCTION segments_create_month(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION segments_create_month(timestamptz) TO healthiot_service;

-- Whole months (native) or chunks (TimescaleDB) that end before ``cutoff``. The services
-- may delete these rows anyway; this only does it the cheap way.
CREATE FUNCTION segments_drop_months_before(cutoff timestamptz) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp SET TimeZone = 'UTC' AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE 'SELECT count(*) FROM timescaledb_information.hypertables'
                ' WHERE hypertable_name = $1' INTO dropped USING 'segments';
        IF dropped > 0 THEN
            EXECUTE 'SELECT count(*) FROM drop_chunks(''public.segments'', older_than => $1)'
                INTO dropped USING cutoff;
            RETURN dropped;
        END IF;
    END IF;
    FOR part IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'public.segments'::regclass
                  AND c.relname ~ '^segments_[0-9]{6}$' LOOP
        IF to_timestamp(right(part.relname, 6), 'YYYYMM') + interval '1 month' <= cutoff THEN
            EXECUTE format('ALTER TABLE public.segments DETACH PARTITION public.%I', part.relname);
            EXECUTE format('DROP TABLE public.%I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;
REVOKE ALL ON FUNCTION segments_drop_months_before(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION segments_drop_months_before(timestamptz) TO healthiot_service;
