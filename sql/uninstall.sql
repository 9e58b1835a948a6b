-- Realtime gateway: remove everything install.sql created. The application's
-- tables and data are left as they were; only the rtgw triggers on them go.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/uninstall.sql
BEGIN;
SELECT pg_advisory_xact_lock(1920232, 1);

DO $do$
DECLARE
    t regclass;
BEGIN
    IF to_regclass('rtgw.tracked') IS NOT NULL THEN
        FOR t IN SELECT tbl FROM rtgw.tracked WHERE to_regclass(tbl::text) IS NOT NULL LOOP
            PERFORM rtgw.untrack(t);
        END LOOP;
    END IF;
END
$do$;

-- CASCADE also removes any capture trigger left on a table that was tracked
-- without being recorded (triggers depend on rtgw.capture).
DROP SCHEMA IF EXISTS rtgw CASCADE;

COMMIT;
