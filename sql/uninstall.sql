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

-- Capture by decoding: its slot (which would keep WAL forever) and its
-- publication. A gateway still reading the slot must be stopped first.
DO $do$
DECLARE
    s text;
BEGIN
    IF to_regclass('rtgw.decoding') IS NOT NULL THEN
        FOR s IN SELECT d.slot FROM rtgw.decoding d JOIN pg_replication_slots r ON r.slot_name = d.slot LOOP
            IF (SELECT active FROM pg_replication_slots WHERE slot_name = s) THEN
                RAISE EXCEPTION 'uninstall: a gateway is reading the capture slot %; stop the gateways first', s;
            END IF;
            PERFORM pg_drop_replication_slot(s);
        END LOOP;
    END IF;
END
$do$;
DROP PUBLICATION IF EXISTS rtgw;

-- CASCADE also removes any capture trigger left on a table that was tracked
-- without being recorded (triggers depend on rtgw.capture).
DROP SCHEMA IF EXISTS rtgw CASCADE;

COMMIT;
