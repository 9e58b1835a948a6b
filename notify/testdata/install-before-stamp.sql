-- Realtime gateway: install or upgrade. Idempotent: run it again after an upgrade.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/install.sql
--   psql "$DATABASE_URL" -c "SELECT rtgw.track('facts', 'budget_fact')"
--
-- Everything lives in the schema rtgw. The application's tables only get
-- statement-level triggers, added by rtgw.track and removed by rtgw.untrack.
--
-- How ordering works (see README, "Ordering"): a statement trigger copies the
-- changed rows into rtgw.event, tagged with the writer's transaction id, and
-- registers the transaction in rtgw.tx. A deferred constraint trigger on
-- rtgw.tx runs at COMMIT, takes one transaction-scoped advisory lock and only
-- then draws the transaction's commit sequence number. The lock is released
-- after the commit is visible, so sequence numbers follow commit order: a
-- reader that has seen seq N has seen every transaction that committed before.
BEGIN;

-- Serialise concurrent installs (several replicas running migrate at once).
SELECT pg_advisory_xact_lock(1920232, 1);

CREATE SCHEMA IF NOT EXISTS rtgw;
COMMENT ON SCHEMA rtgw IS 'realtime gateway: event log and change capture';

-- One row per writing transaction; seq is set at commit, in commit order.
CREATE TABLE IF NOT EXISTS rtgw.tx (
    xid          xid8 PRIMARY KEY,
    seq          bigint UNIQUE,
    committed_at timestamptz
);

CREATE SEQUENCE IF NOT EXISTS rtgw.tx_seq;

-- One row per changed application row. id orders the events of one
-- transaction; across transactions the order is rtgw.tx.seq.
CREATE TABLE IF NOT EXISTS rtgw.event (
    xid  xid8   NOT NULL,
    id   bigint GENERATED ALWAYS AS IDENTITY,
    tbl  text   NOT NULL,
    op   "char" NOT NULL CHECK (op IN ('I', 'U', 'D')),
    type text   NOT NULL,
    data jsonb  NOT NULL,
    PRIMARY KEY (xid, id)
);

-- Which tables are tracked, and how their events are named and shaped.
CREATE TABLE IF NOT EXISTS rtgw.tracked (
    tbl     regclass PRIMARY KEY,
    prefix  text     NOT NULL,
    columns text[],            -- NULL: every column; else only these (plus the key)
    pk      text[]   NOT NULL  -- primary key columns: what a delete carries
);
-- Added after the first release; IF NOT EXISTS keeps upgrades idempotent.
ALTER TABLE rtgw.tracked
    ADD COLUMN IF NOT EXISTS prefix_col  text,   -- the column named by {col} in prefix
    ADD COLUMN IF NOT EXISTS settings    jsonb,  -- data key -> transaction-local setting
    ADD COLUMN IF NOT EXISTS batch_event text,   -- event for a DELETE of several rows
    ADD COLUMN IF NOT EXISTS batch_key   text;   -- its key for the list of ids
ALTER TABLE rtgw.tracked DROP CONSTRAINT IF EXISTS tracked_prefix_check;
ALTER TABLE rtgw.tracked ADD CONSTRAINT tracked_prefix_check
    CHECK (prefix ~ '^([A-Za-z_]|\{[A-Za-z_][A-Za-z0-9_]*\})([A-Za-z0-9_]|\{[A-Za-z_][A-Za-z0-9_]*\})*$'
           AND prefix !~ '\}.*\{');
ALTER TABLE rtgw.tracked DROP CONSTRAINT IF EXISTS tracked_batch_check;
ALTER TABLE rtgw.tracked ADD CONSTRAINT tracked_batch_check
    CHECK (batch_event IS NULL OR batch_event ~ '^[A-Za-z_][A-Za-z0-9_]*$');

-- event_type names an event: the prefix, with {col} replaced by the row's
-- value of col (letters, digits and _ only), then the suffix.
CREATE OR REPLACE FUNCTION rtgw.event_type(cfg rtgw.tracked, ph text, j jsonb, suffix text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT CASE WHEN cfg.prefix_col IS NULL THEN cfg.prefix
                ELSE replace(cfg.prefix, ph, coalesce(regexp_replace(j ->> cfg.prefix_col, '[^A-Za-z0-9_]', '_', 'g'), ''))
           END || suffix
$fn$;

-- capture runs once per statement on a tracked table (and on each of its
-- partitions, for writes that name a partition directly). Working on the
-- transition tables keeps a 10,000-row DELETE one INSERT ... SELECT.
CREATE OR REPLACE FUNCTION rtgw.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    cfg    rtgw.tracked;
    me     xid8 := pg_current_xact_id();
    sample jsonb;
    keep   text[];
    drops  text[];
    kdrops text[];
    extra  jsonb := '{}';
    ph     text;
    suffix text := CASE TG_OP WHEN 'INSERT' THEN '_created' WHEN 'UPDATE' THEN '_updated' ELSE '_deleted' END;
BEGIN
    SELECT * INTO cfg FROM rtgw.tracked WHERE tbl = TG_ARGV[0]::oid::regclass;
    IF NOT FOUND THEN
        RETURN NULL; -- untracked while a statement was running
    END IF;

    -- Every row of one statement has the same keys: work out once which to
    -- drop, then project each row with jsonb - text[].
    -- A delete carries the row as it was, projected like an insert: the
    -- whole key, and the columns subscriptions and visibility rules filter on
    -- (a delete carrying only its key could not be routed to the users who
    -- saw the row).
    IF TG_OP = 'DELETE' THEN
        SELECT to_jsonb(o) INTO sample FROM old_rows o LIMIT 1;
    ELSE
        SELECT to_jsonb(n) INTO sample FROM new_rows n LIMIT 1;
    END IF;
    IF sample IS NULL THEN
        RETURN NULL; -- the statement changed no row
    END IF;
    keep := CASE WHEN cfg.columns IS NULL THEN NULL ELSE cfg.columns || cfg.pk END;
    drops := ARRAY(SELECT k FROM jsonb_object_keys(sample) AS k
                   WHERE keep IS NOT NULL AND k <> ALL (keep));
    -- Values the backend set with SET LOCAL (its tab_origin_id, say); an
    -- unset or reset setting reads as '' and is sent as null.
    IF cfg.settings IS NOT NULL THEN
        SELECT jsonb_object_agg(k, nullif(current_setting(v, true), '')) INTO extra
        FROM jsonb_each_text(cfg.settings) AS s(k, v);
    END IF;
    ph := '{' || cfg.prefix_col || '}';

    INSERT INTO rtgw.tx (xid) VALUES (me) ON CONFLICT (xid) DO NOTHING;

    IF TG_OP = 'DELETE' AND cfg.batch_event IS NOT NULL THEN
        -- (nested: old_rows may only be named where it exists)
        IF (SELECT count(*) > 1 FROM old_rows) THEN
        -- A batch lists keys only: up to 1,000 whole rows would make frames
        -- too large to send.
        kdrops := ARRAY(SELECT k FROM jsonb_object_keys(sample) AS k WHERE k <> ALL (cfg.pk));
        -- One event per 1,000 rows instead of one per row: a 10,000-row
        -- DELETE costs 10 frames per socket. It lists the first key column
        -- (the app's fact_ids) and the whole keys.
        INSERT INTO rtgw.event (xid, tbl, op, type, data)
        SELECT me, cfg.tbl::text, 'D', cfg.batch_event,
               jsonb_build_object(coalesce(cfg.batch_key, 'ids'), jsonb_agg(j -> cfg.pk[1] ORDER BY ord),
                                  'keys', jsonb_agg(j - kdrops ORDER BY ord),
                                  'deleted_count', count(*)) || extra
        FROM (SELECT to_jsonb(o) AS j, row_number() OVER () - 1 AS ord FROM old_rows o) r
        GROUP BY ord / 1000
        ORDER BY ord / 1000;
        RETURN NULL;
        END IF;
    END IF;

    -- A row moved to another partition is in the UPDATE's transition tables:
    -- PostgreSQL runs it as DELETE + INSERT on the partitions but reports it
    -- to the parent's statement trigger as an UPDATE, so it is one event.
    -- The transition table a trigger does not have cannot even be named, so
    -- DELETE reads old_rows and the others new_rows, through one projection.
    IF TG_OP = 'DELETE' THEN
        INSERT INTO rtgw.event (xid, tbl, op, type, data)
        SELECT me, cfg.tbl::text, 'D', rtgw.event_type(cfg, ph, j, suffix), (j - drops) || extra
        FROM (SELECT to_jsonb(r) AS j FROM old_rows r) rows;
    ELSE
        INSERT INTO rtgw.event (xid, tbl, op, type, data)
        SELECT me, cfg.tbl::text, left(TG_OP, 1), rtgw.event_type(cfg, ph, j, suffix), (j - drops) || extra
        FROM (SELECT to_jsonb(r) AS j FROM new_rows r) rows;
    END IF;
    RETURN NULL;
END
$fn$;

-- stamp runs at COMMIT, once per writing transaction (deferred constraint
-- trigger on rtgw.tx). Holding the lock from here to the end of the commit is
-- what makes seq follow commit order; it is the only point where writers of
-- tracked tables wait for each other.
CREATE OR REPLACE FUNCTION rtgw.stamp() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    s    bigint;
    prev timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(1920232, 2);
    s := nextval('rtgw.tx_seq');
    -- Commit times strictly increase with seq, even if the clock steps back:
    -- the long-poll fallback pages by time, and must not skip a commit.
    -- (An infinite time written by hand is ignored: it would make every
    -- later commit time infinite too, and the gateway skips those rows.)
    SELECT committed_at INTO prev FROM rtgw.tx WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1;
    IF NOT isfinite(prev) THEN
        prev := NULL;
    END IF;
    UPDATE rtgw.tx SET seq = s, committed_at = greatest(clock_timestamp(), prev + interval '1 microsecond')
    WHERE xid = NEW.xid;
    -- NOTIFY is only a doorbell: the gateway reads the table. If no gateway
    -- drains the queue (stopped, paused), a full queue would make this COMMIT
    -- fail, so stop ringing well before that; the gateway's poll catches up.
    IF pg_notification_queue_usage() < 0.5 THEN
        PERFORM pg_notify('rtgw', s::text);
    END IF;
    RETURN NULL;
END
$fn$;

DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'rtgw.tx'::regclass AND tgname = 'rtgw_stamp') THEN
        CREATE CONSTRAINT TRIGGER rtgw_stamp AFTER INSERT ON rtgw.tx
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION rtgw.stamp();
    END IF;
END
$do$;

-- track starts (or re-configures) tracking of a table. Events are named
-- <prefix>_created, <prefix>_updated and <prefix>_deleted; a prefix may take
-- one column's value, as in '{record_type}' (fact_created, plan_created).
--   columns      limits what created and updated events carry (the primary
--                key is always included); NULL: every column.
--   settings     adds data keys from transaction-local settings the backend
--                may SET LOCAL, e.g. '{"tab_origin_id": "budget.tab_origin_id"}'.
--   batch_event  names one event that a DELETE of several rows sends per
--                1,000 rows instead of one per row, listing the first key
--                column under batch_key (default 'ids') and the whole keys
--                under 'keys', with 'deleted_count'.
-- Re-run it after adding partitions that the application writes to
-- directly; writes through the parent are always captured.
DROP FUNCTION IF EXISTS rtgw.track(regclass, text, text[]);
CREATE OR REPLACE FUNCTION rtgw.track(tbl regclass, prefix text, columns text[] DEFAULT NULL,
                                      settings jsonb DEFAULT NULL, batch_event text DEFAULT NULL,
                                      batch_key text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    key  text[];
    col  text;
    part regclass;
    op   text;
BEGIN
    IF (SELECT relispartition FROM pg_class WHERE oid = tbl) THEN
        RAISE EXCEPTION 'rtgw.track: % is a partition; track its parent table', tbl;
    END IF;
    key := ARRAY(SELECT a.attname::text
                 FROM pg_index i
                 JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                 WHERE i.indrelid = tbl AND i.indisprimary
                 ORDER BY k.ord);
    IF cardinality(key) = 0 THEN
        RAISE EXCEPTION 'rtgw.track: % has no primary key; deletes could not say which row went', tbl;
    END IF;
    col := substring(prefix FROM '\{([A-Za-z_][A-Za-z0-9_]*)\}');
    IF EXISTS (
        SELECT 1 FROM unnest(coalesce(columns, '{}') || coalesce(col, '')) c
        WHERE c <> '' AND NOT EXISTS (SELECT 1 FROM pg_attribute
                          WHERE attrelid = tbl AND attname = c AND attnum > 0 AND NOT attisdropped)) THEN
        RAISE EXCEPTION 'rtgw.track: % lacks a column among %', tbl, coalesce(columns, '{}') || coalesce(col, '');
    END IF;
    IF settings IS NOT NULL AND (jsonb_typeof(settings) <> 'object' OR EXISTS (
        SELECT 1 FROM jsonb_each(settings) s WHERE jsonb_typeof(s.value) <> 'string'
                                               OR s.value #>> '{}' !~ '^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_.]*$')) THEN
        RAISE EXCEPTION 'rtgw.track: settings must map data keys to setting names such as "app.tab_origin_id", got %', settings;
    END IF;

    INSERT INTO rtgw.tracked AS t (tbl, prefix, columns, pk, prefix_col, settings, batch_event, batch_key)
    VALUES (tbl, prefix, columns, key, col, settings, batch_event, batch_key)
    ON CONFLICT ON CONSTRAINT tracked_pkey
    DO UPDATE SET prefix = excluded.prefix, columns = excluded.columns, pk = excluded.pk,
                  prefix_col = excluded.prefix_col, settings = excluded.settings,
                  batch_event = excluded.batch_event, batch_key = excluded.batch_key;

    FOR part IN SELECT relid FROM pg_partition_tree(tbl) UNION SELECT tbl LOOP
        FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'rtgw_' || op, part);
            EXECUTE format(
                'CREATE TRIGGER %I AFTER %s ON %s REFERENCING %s FOR EACH STATEMENT EXECUTE FUNCTION rtgw.capture(%L)',
                'rtgw_' || op, upper(op), part,
                CASE op WHEN 'insert' THEN 'NEW TABLE AS new_rows'
                        WHEN 'update' THEN 'OLD TABLE AS old_rows NEW TABLE AS new_rows'
                        ELSE 'OLD TABLE AS old_rows' END,
                tbl::oid);
        END LOOP;
    END LOOP;
END
$fn$;

-- untrack stops tracking a table; events already logged stay for replay.
CREATE OR REPLACE FUNCTION rtgw.untrack(tbl regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    part regclass;
    op   text;
BEGIN
    FOR part IN SELECT relid FROM pg_partition_tree(tbl) UNION SELECT tbl LOOP
        FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'rtgw_' || op, part);
        END LOOP;
    END LOOP;
    DELETE FROM rtgw.tracked t WHERE t.tbl = untrack.tbl;
END
$fn$;

-- prune removes the oldest transactions (and their events) that are older
-- than max_age or lie beyond the newest max_events events, at most max_tx
-- per call; it returns how many it removed. It only ever removes a prefix of
-- the log, so every position still in it can be resumed from and everything
-- older is reported as expired. Several gateways may call it at once: one
-- prunes, the others return 0 at once. Writers are never blocked: only rows
-- of long-committed transactions are deleted.
CREATE OR REPLACE FUNCTION rtgw.prune(max_age interval, max_events bigint, max_tx int DEFAULT 1000)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    -- Event ids are issued in write order; the newest max_events of them are
    -- kept (about: ids of rolled-back writes count too).
    cutoff_id bigint := coalesce(pg_sequence_last_value(pg_get_serial_sequence('rtgw.event', 'id')), 0) - max_events + 1;
    cutoff_at timestamptz := now() - max_age;
    upto      bigint;
    t         record;
    n         bigint := 0;
BEGIN
    IF NOT pg_try_advisory_xact_lock(1920232, 3) THEN
        RETURN 0; -- another gateway is pruning
    END IF;
    FOR t IN SELECT x.xid, x.seq, x.committed_at FROM rtgw.tx x
             WHERE x.seq IS NOT NULL ORDER BY x.seq LIMIT max_tx LOOP
        EXIT WHEN t.committed_at >= cutoff_at
              AND coalesce((SELECT max(e.id) FROM rtgw.event e WHERE e.xid = t.xid), 0) >= cutoff_id;
        upto := t.seq;
        n := n + 1;
    END LOOP;
    IF upto IS NOT NULL THEN
        DELETE FROM rtgw.event e USING rtgw.tx x WHERE e.xid = x.xid AND x.seq <= upto;
        DELETE FROM rtgw.tx WHERE seq <= upto;
    END IF;
    RETURN n;
END
$fn$;

COMMIT;
