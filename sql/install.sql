-- Realtime gateway: install or upgrade. Idempotent: run it again after an upgrade.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/install.sql
--   psql "$DATABASE_URL" -c "SELECT rtgw.track('facts', 'budget_fact')"
--
-- Everything lives in the schema rtgw. The application's tables only get
-- statement-level triggers, added by rtgw.track and removed by rtgw.untrack.
--
-- How ordering works (see README, "Ordering"): a statement trigger copies the
-- changed rows into rtgw.event, tagged with the writer's transaction id. The
-- first event row of a transaction queues a deferred constraint trigger; it
-- runs at COMMIT, takes one transaction-scoped advisory lock and only then
-- draws the transaction's commit sequence number and writes its rtgw.tx row.
-- The lock is released after the commit is visible, so sequence numbers follow
-- commit order: a reader that has seen seq N has seen every transaction that
-- committed before.
BEGIN;

-- Serialise concurrent installs (several replicas running migrate at once).
SELECT pg_advisory_xact_lock(1920232, 1);

CREATE SCHEMA IF NOT EXISTS rtgw;
COMMENT ON SCHEMA rtgw IS 'realtime gateway: event log and change capture';

-- One row per writing transaction, written once at commit (by rtgw.stamp),
-- with seq in commit order. (Up to version 1 of the commit path the capture
-- trigger inserted the row with seq NULL and stamp updated it; such rows are
-- still stamped, see rtgw.stamp.)
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

-- Capture by logical decoding (GATEWAY_CAPTURE=decoding, see README,
-- "Capture"): instead of triggers writing rtgw.event in every writer's
-- transaction, a gateway reads the changes from a pgoutput replication slot
-- and writes them with rtgw.ingest, off the writers' path. One row while the
-- slot exists: its name, whether decoding is the capture in use (false while
-- a switch back to triggers drains it), and the end of the last transaction
-- ingested (what makes a transaction the slot sends again after a crash
-- between ingest and the slot's confirmation count once).
CREATE TABLE IF NOT EXISTS rtgw.decoding (
    id     boolean PRIMARY KEY DEFAULT true CHECK (id),
    slot   text    NOT NULL,
    active boolean NOT NULL DEFAULT true,
    lsn    pg_lsn  NOT NULL DEFAULT '0/0',
    -- set by a switch back to triggers: once everything the slot holds up to
    -- here is ingested, the gateway drops the slot and this row
    until  pg_lsn
);
-- Transactions below this id may have been captured by triggers too (they
-- wrote before the switch to decoding); rtgw.ingest looks for their rows.
ALTER TABLE rtgw.decoding ADD COLUMN IF NOT EXISTS overlap_below xid8;

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

    -- This function runs in every tracked write, and each SQL statement it
    -- runs costs several microseconds of executor start-up: the common case
    -- (every column, one INSERT ... SELECT) runs two, the lookup above and the
    -- INSERT below. A statement that changed no row inserts no event, and a
    -- transaction without events draws no seq (see the rtgw_stamp trigger).
    --
    -- With a column whitelist, every row of one statement has the same keys:
    -- work out once which to drop, then project each row with jsonb - text[].
    -- A delete carries the row as it was, projected like an insert: the
    -- whole key, and the columns subscriptions and visibility rules filter on
    -- (a delete carrying only its key could not be routed to the users who
    -- saw the row).
    IF cfg.columns IS NOT NULL OR (TG_OP = 'DELETE' AND cfg.batch_event IS NOT NULL) THEN
        IF TG_OP = 'DELETE' THEN
            SELECT to_jsonb(o) INTO sample FROM old_rows o LIMIT 1;
        ELSE
            SELECT to_jsonb(n) INTO sample FROM new_rows n LIMIT 1;
        END IF;
        IF sample IS NULL THEN
            RETURN NULL; -- the statement changed no row
        END IF;
    END IF;
    IF cfg.columns IS NOT NULL THEN
        keep := cfg.columns || cfg.pk;
        drops := ARRAY(SELECT k FROM jsonb_object_keys(sample) AS k WHERE k <> ALL (keep));
    ELSE
        drops := '{}';
    END IF;
    -- Values the backend set with SET LOCAL (its tab_origin_id, say); an
    -- unset or reset setting reads as '' and is sent as null.
    IF cfg.settings IS NOT NULL THEN
        SELECT jsonb_object_agg(k, nullif(current_setting(v, true), '')) INTO extra
        FROM jsonb_each_text(cfg.settings) AS s(k, v);
    END IF;
    ph := '{' || cfg.prefix_col || '}';

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
-- trigger on rtgw.event, queued by the transaction's first event row). Holding the lock from here to the
-- end of the commit is what makes seq follow commit order; it is the only
-- point where writers of tracked tables wait for each other.
--
-- Everything between the lock and the end of the commit is serialized across
-- all writers, so it is kept to one statement: one INSERT draws seq, reads the
-- previous commit time and writes the transaction's rtgw.tx row with its final
-- values. (Before, the capture trigger inserted the row with seq NULL and this
-- function updated it under the lock: a non-HOT update, since seq is indexed,
-- plus a separate read of the previous commit time; the row's NULL-seq index
-- entries were written outside the lock on the same index pages, so writers
-- still in their statements contended with the one holding the lock.) Nothing
-- outside the lock writes rtgw.tx any more, so the pages it touches are
-- touched by nobody else.
CREATE OR REPLACE FUNCTION rtgw.stamp() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    s    bigint;
    ignored text;
BEGIN
    -- The void calls are assigned, not PERFORMed: PL/pgSQL evaluates an
    -- assignment's simple expression directly, where PERFORM starts the
    -- executor for a SELECT (2-3 of the 20 microseconds this function spent
    -- under the lock, measured).
    ignored := pg_advisory_xact_lock(1920232, 2)::text;
    -- Commit times strictly increase with seq, even if the clock steps back:
    -- the long-poll fallback pages by time, and must not skip a commit. The
    -- previous commit is the last entry of the unique index on seq (under the
    -- lock nobody else can add one). (An infinite time written by hand is
    -- ignored: it would make every later commit time infinite too, and the
    -- gateway skips those rows.)
    -- ON CONFLICT: a row registered the old way (seq NULL, by a capture
    -- trigger of the previous version still running during an upgrade, or by
    -- hand as the tests do) gets its values; a row already stamped is kept
    -- (then s is NULL and nothing rings; its seq was drawn earlier).
    INSERT INTO rtgw.tx AS t (xid, seq, committed_at)
    SELECT NEW.xid, nextval('rtgw.tx_seq'),
           greatest(clock_timestamp(),
                    (SELECT CASE WHEN isfinite(p.committed_at) THEN p.committed_at END
                     FROM rtgw.tx p WHERE p.seq IS NOT NULL ORDER BY p.seq DESC LIMIT 1)
                    + interval '1 microsecond')
    ON CONFLICT (xid) DO UPDATE SET seq = excluded.seq, committed_at = excluded.committed_at
        WHERE t.seq IS NULL
    RETURNING t.seq INTO s;
    -- NOTIFY is only a doorbell: the gateway reads the table. If no gateway
    -- drains the queue (stopped, paused), a full queue would make this COMMIT
    -- fail, so stop ringing well before that; the gateway's poll catches up.
    IF s IS NOT NULL AND pg_notification_queue_usage() < 0.5 THEN
        ignored := pg_notify('rtgw', s::text)::text;
    END IF;
    RETURN NULL;
END
$fn$;

-- The stamp trigger is on rtgw.event since the second version of the commit
-- path; it was on rtgw.tx (fired by the capture trigger's INSERT of the
-- registration row). Upgrading moves it. Dropping the old one waits for
-- writers still holding rtgw.tx (their queued stamps run the old way before
-- this commits); a writer whose old capture trigger registers a row after
-- this commits has its event rows stamp it (the ON CONFLICT above).
--
-- The WHEN condition is true for the first event row a transaction writes and
-- false for the rest, so a transaction queues one deferred stamp however many
-- rows and statements it writes (a 10,000-row statement must not queue
-- 10,000). Constraint triggers evaluate WHEN as each row is inserted, not at
-- COMMIT. The mark is a transaction-local setting holding the transaction id:
-- it ends with the transaction, and a ROLLBACK TO SAVEPOINT that discards the
-- queued stamp also undoes the mark (settings roll back with
-- subtransactions), so the next event registers again. The capture trigger's
-- own SET search_path does not undo it at its exit: that only restores
-- search_path itself. A stray second stamp (the mark reset by hand) draws a
-- seq but changes nothing (ON CONFLICT ... WHERE t.seq IS NULL).
-- The condition is written out with built-in functions only: PostgreSQL
-- prepares a trigger's WHEN once per statement, and a SQL function in it
-- would be parsed and inlined again for every tracked statement (about 12
-- microseconds each, measured); CASE fixes the order of the two calls.
DO $do$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger
               WHERE tgrelid = 'rtgw.tx'::regclass AND tgname = 'rtgw_stamp') THEN
        DROP TRIGGER rtgw_stamp ON rtgw.tx;
    END IF;
    -- (A development version called a SQL function rtgw.first_event here.)
    IF EXISTS (SELECT 1 FROM pg_trigger
               WHERE tgrelid = 'rtgw.event'::regclass AND tgname = 'rtgw_stamp'
                 AND pg_get_triggerdef(oid) LIKE '%first_event%') THEN
        DROP TRIGGER rtgw_stamp ON rtgw.event;
    END IF;
    DROP FUNCTION IF EXISTS rtgw.first_event(xid8);
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'rtgw.event'::regclass AND tgname = 'rtgw_stamp') THEN
        CREATE CONSTRAINT TRIGGER rtgw_stamp AFTER INSERT ON rtgw.event
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
            WHEN (CASE WHEN pg_catalog.current_setting('rtgw.stamp_xid', true) OPERATOR(pg_catalog.=) NEW.xid::text
                       THEN false
                       ELSE pg_catalog.set_config('rtgw.stamp_xid', NEW.xid::text, true) IS NOT NULL END)
            EXECUTE FUNCTION rtgw.stamp();
    END IF;
END
$do$;

-- mark runs before each statement on a table tracked by decoding that has
-- settings or a batch event (the only two things the WAL does not hold):
-- it puts a transactional message in the slot, ahead of the statement's
-- rows, with the statement's kind and the settings' values as capture
-- would have read them. Arguments: the tracked table's oid and its settings.
CREATE OR REPLACE FUNCTION rtgw.mark() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    extra   text := 'null';
    ignored text;
BEGIN
    IF TG_ARGV[1] <> '' THEN
        SELECT coalesce(jsonb_object_agg(k, nullif(current_setting(v, true), '')), '{}')::text INTO extra
        FROM jsonb_each_text(TG_ARGV[1]::jsonb) AS s(k, v);
    END IF;
    ignored := pg_logical_emit_message(true, 'rtgw',
        '{"t":' || TG_ARGV[0] || ',"o":"' || left(TG_OP, 1) || '","s":' || extra || '}')::text;
    RETURN NULL;
END
$fn$;

-- capture_by switches how changes are captured: 'triggers' (the default)
-- or 'decoding', which needs wal_level = logical and a pgoutput slot named
-- slot in this database, created before the switch (gateway migrate does
-- both). Transactions that commit between the slot's creation and the
-- switch are both decoded and captured by triggers; rtgw.ingest keeps the
-- triggers' copy. Switching back blocks writers of the tracked tables
-- until the slot's reader (a gateway) has written everything committed
-- before (up to wait), then turns the triggers on; the reader then drops
-- the slot.
CREATE OR REPLACE FUNCTION rtgw.capture_by(mode text, slot text DEFAULT 'rtgw', wait interval DEFAULT '60 s')
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    t        rtgw.tracked;
    here     pg_lsn;
    deadline timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(1920232, 1);
    IF mode = 'decoding' THEN
        IF current_setting('wal_level') <> 'logical' THEN
            RAISE EXCEPTION 'rtgw.capture_by: decoding needs wal_level = logical (it is %); set it and restart PostgreSQL',
                current_setting('wal_level');
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_replication_slots s
                       WHERE s.slot_name = capture_by.slot AND s.database = current_database() AND s.plugin = 'pgoutput') THEN
            RAISE EXCEPTION 'rtgw.capture_by: no pgoutput slot % in this database; create it first: SELECT pg_create_logical_replication_slot(%L, ''pgoutput'')',
                slot, slot;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'rtgw') THEN
            CREATE PUBLICATION rtgw WITH (publish = 'insert, update, delete', publish_via_partition_root = true);
        END IF;
        INSERT INTO rtgw.decoding AS d (slot) VALUES (slot)
        ON CONFLICT (id) DO UPDATE SET active = true, until = NULL,
            slot = excluded.slot, lsn = CASE WHEN d.slot = excluded.slot THEN d.lsn ELSE '0/0' END;
    ELSIF mode = 'triggers' THEN
        IF NOT EXISTS (SELECT 1 FROM rtgw.decoding WHERE active) THEN
            RETURN;
        END IF;
        -- A trigger stamps its transaction at commit; a decoded transaction
        -- committed earlier but not yet written would get a later seq. So
        -- writers of tracked tables wait (readers do not) while the gateway
        -- reading the slot writes everything committed before here; only
        -- then do the triggers come back.
        FOR t IN SELECT * FROM rtgw.tracked WHERE to_regclass(tbl::text) IS NOT NULL LOOP
            EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', t.tbl);
        END LOOP;
        here := pg_current_wal_insert_lsn();
        deadline := clock_timestamp() + wait;
        LOOP
            EXIT WHEN (SELECT s.confirmed_flush_lsn >= here FROM pg_replication_slots s
                       JOIN rtgw.decoding d ON d.slot = s.slot_name);
            IF NOT EXISTS (SELECT 1 FROM pg_replication_slots s JOIN rtgw.decoding d ON d.slot = s.slot_name) THEN
                EXIT; -- the slot is gone: nothing to wait for
            END IF;
            IF clock_timestamp() > deadline THEN
                RAISE EXCEPTION 'rtgw.capture_by: the capture slot is not read up to % within %; a gateway (or gateway migrate) must be reading it to switch back',
                    here, wait;
            END IF;
            PERFORM pg_sleep(0.01);
        END LOOP;
        UPDATE rtgw.decoding SET active = false;
    ELSE
        RAISE EXCEPTION 'rtgw.capture_by: mode must be triggers or decoding, not %', mode;
    END IF;
    FOR t IN SELECT * FROM rtgw.tracked WHERE to_regclass(tbl::text) IS NOT NULL LOOP
        PERFORM rtgw.track(t.tbl, t.prefix, t.columns, t.settings, t.batch_event, t.batch_key);
    END LOOP;
    IF mode = 'decoding' THEN
        -- rtgw.track took each table's lock to drop its triggers, so every
        -- writer that had them has an id below the next one.
        UPDATE rtgw.decoding SET overlap_below = pg_snapshot_xmax(pg_current_snapshot());
    END IF;
    IF mode = 'triggers' THEN
        -- Whatever commits after this transaction is the triggers'; the
        -- reader drops the slot once it has confirmed here.
        FOR t IN SELECT * FROM rtgw.tracked LOOP
            IF EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                       WHERE p.pubname = 'rtgw' AND r.prrelid = t.tbl) THEN
                EXECUTE format('ALTER PUBLICATION rtgw DROP TABLE %s', t.tbl);
            END IF;
        END LOOP;
        UPDATE rtgw.decoding SET until = here;
    END IF;
END
$fn$;

-- full_xid gives a 32-bit transaction id its epoch: the one of next (the
-- next xid, as pg_snapshot_xmax gives it), or the one before when the id is
-- above next's low bits (it is older than next, so it wrapped).
CREATE OR REPLACE FUNCTION rtgw.full_xid(x bigint, next bigint) RETURNS xid8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT ((((next >> 32) - CASE WHEN x > (next & 4294967295) THEN 1 ELSE 0 END) << 32) | x)::text::xid8
$fn$;

-- ingest writes what a gateway decoded from the slot: a JSON array of
-- committed transactions in commit order, each
--   {"x": 32-bit xid, "f": LSN of its commit record, "l": end LSN, "c": commit time,
--    "g": [{"t": table oid, "o": "I"|"U"|"D", "m": after a mark, "s": settings, "r": [rows]}]}
-- where a row maps column names to their text (json and jsonb columns as
-- JSON). A transaction too large for one call comes in parts: elements
-- without "l" (the first with "first": true), then the last part with
-- "l" and "k": true; parts write their events, the last part the
-- transaction's rtgw.tx row, which is what makes them visible. It gives
-- the transactions their seqs under the commit lock, in that order,
-- projects the rows exactly as rtgw.capture does (through the table's row
-- type: the same to_jsonb), and returns the last seq drawn (NULL if none).
-- A transaction whose commit is below rtgw.decoding.lsn (the end of the
-- last one written: it is sent again after a crash) and one the triggers
-- captured (it has its rtgw.tx row) are skipped.
CREATE OR REPLACE FUNCTION rtgw.ingest(slot_name text, batch jsonb) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET jit = off AS $fn$
DECLARE
    done    pg_lsn;
    below   xid8;
    upto    pg_lsn;
    nxt     bigint;
    t       oid;
    x       xid8;
    pos     bigint;
    txs     bigint[];
    n       bigint;
    first   bigint;
    prev    timestamptz;
    ignored text;
BEGIN
    -- The stamps' lock: seqs drawn here follow those of any trigger-captured
    -- transaction committed before, and precede those after.
    ignored := pg_advisory_xact_lock(1920232, 2)::text;
    -- The gateway confirms the slot's position once this commits, and the
    -- server may save that position at once: the commit must be on disk by
    -- then, whatever the session's synchronous_commit (a setting of this
    -- transaction's; the function's own SET clauses do not touch it).
    ignored := set_config('synchronous_commit', 'on', true);
    SELECT d.lsn, d.overlap_below INTO done, below FROM rtgw.decoding d WHERE d.slot = slot_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'rtgw.ingest: % is not the capture slot (see rtgw.decoding)', slot_name;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM jsonb_array_elements(batch) v WHERE (v ->> 'f')::pg_lsn >= done) THEN
        RETURN NULL;
    END IF;
    SELECT max((v ->> 'l')::pg_lsn) INTO upto FROM jsonb_array_elements(batch) v;
    -- The slot names transactions by 32-bit xid; all of them are older than
    -- the next xid, which tells their epoch.
    nxt := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;

    IF to_regclass('pg_temp.rtgw_ingest') IS NULL THEN
        CREATE TEMP TABLE rtgw_ingest (
            tx int, xid xid8, g int, tbl oid, op "char", marked boolean,
            extra jsonb, ord int, gn int, r jsonb, j jsonb) ON COMMIT DELETE ROWS;
    END IF;
    -- Every statement here is planned once per session, when the log may
    -- have been empty: none of them may scan rtgw.event or rtgw.tx (a batch
    -- that did, read the whole log: ingest slowed as the log grew).
    INSERT INTO rtgw_ingest (tx, xid, g, tbl, op, marked, extra, ord, gn, r)
    SELECT x.n, rtgw.full_xid((x.v ->> 'x')::bigint, nxt),
           g.n, (g.v ->> 't')::oid, (g.v ->> 'o')::"char",
           coalesce((g.v ->> 'm')::boolean, false), nullif(g.v -> 's', 'null'), r.n,
           jsonb_array_length(g.v -> 'r'), r.v
    FROM jsonb_array_elements(batch) WITH ORDINALITY x(v, n)
    CROSS JOIN LATERAL jsonb_array_elements(x.v -> 'g') WITH ORDINALITY g(v, n)
    CROSS JOIN LATERAL jsonb_array_elements(g.v -> 'r') WITH ORDINALITY r(v, n)
    WHERE (x.v ->> 'f')::pg_lsn >= done;
    DELETE FROM rtgw_ingest i
    WHERE NOT EXISTS (SELECT 1 FROM rtgw.tracked c JOIN pg_class k ON k.oid = c.tbl WHERE c.tbl = i.tbl);
    -- Captured by the triggers too (committed just before the switch: then
    -- it has its rtgw.tx row)? Looked up one transaction at a time, by key.
    IF below IS NOT NULL AND EXISTS (SELECT 1 FROM rtgw_ingest i WHERE i.xid < below) THEN
        FOR x IN SELECT DISTINCT i.xid FROM rtgw_ingest i WHERE i.xid < below LOOP
            IF EXISTS (SELECT 1 FROM rtgw.tx y WHERE y.xid = x) THEN
                DELETE FROM rtgw_ingest i WHERE i.xid = x;
            END IF;
        END LOOP;
    END IF;
    -- The first part of a large transaction: parts an interrupted call
    -- wrote before are removed (they have no rtgw.tx row, so nobody saw them).
    FOR x IN SELECT rtgw.full_xid((v ->> 'x')::bigint, nxt) FROM jsonb_array_elements(batch) v
             WHERE (v ->> 'first')::boolean AND (v ->> 'f')::pg_lsn >= done LOOP
        IF NOT EXISTS (SELECT 1 FROM rtgw.tx y WHERE y.xid = x) THEN
            DELETE FROM rtgw.event e WHERE e.xid = x;
        END IF;
    END LOOP;

    -- Text to the table's row type and on to jsonb: the same projection as
    -- capture's to_jsonb(row). A value the type no longer reads (the column
    -- changed type since) keeps the row as text rather than stop the stream.
    FOR t IN SELECT DISTINCT i.tbl FROM rtgw_ingest i LOOP
        BEGIN
            EXECUTE format('UPDATE rtgw_ingest SET j = to_jsonb(jsonb_populate_record(NULL::%s, r)) WHERE tbl = $1',
                           t::regclass) USING t;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'rtgw.ingest: rows of % kept as text: %', t::regclass, SQLERRM;
            UPDATE rtgw_ingest SET j = r WHERE tbl = t;
        END;
    END LOOP;

    -- Events in transaction order, then the order of their statements, then
    -- of rows. set_config in the outer select, row by row after the sort,
    -- tells the stamp trigger's WHEN that each transaction is seen to: these
    -- transactions get their rtgw.tx rows below, not at this commit.
    INSERT INTO rtgw.event (xid, tbl, op, type, data)
    SELECT CASE WHEN set_config('rtgw.stamp_xid', e.xid::text, true) IS NOT NULL THEN e.xid END,
           e.tbl, e.op, e.type, e.data
    FROM (
        SELECT i.tx, i.g, i.ord AS o, i.xid, c.tbl::text AS tbl, i.op,
               rtgw.event_type(c, '{' || c.prefix_col || '}', i.j,
                               CASE i.op WHEN 'I' THEN '_created' WHEN 'U' THEN '_updated' ELSE '_deleted' END) AS type,
               CASE WHEN c.columns IS NULL THEN i.j
                    ELSE i.j - ARRAY(SELECT k FROM jsonb_object_keys(i.j) k WHERE k <> ALL (c.columns || c.pk)) END
               || coalesce(i.extra, (SELECT jsonb_object_agg(k, NULL) FROM jsonb_object_keys(c.settings) k), '{}') AS data
        FROM rtgw_ingest i JOIN rtgw.tracked c ON c.tbl = i.tbl
        WHERE NOT (i.op = 'D' AND i.marked AND c.batch_event IS NOT NULL AND i.gn > 1)
        UNION ALL
        -- A DELETE of several rows as capture sends it: one event per 1,000.
        SELECT b.tx, b.g, b.chunk * 1000, b.xid, c.tbl::text, 'D', c.batch_event,
               jsonb_build_object(coalesce(c.batch_key, 'ids'), b.ids, 'keys', b.keys, 'deleted_count', b.n)
               || coalesce(b.extra, (SELECT jsonb_object_agg(k, NULL) FROM jsonb_object_keys(c.settings) k), '{}')
        FROM (SELECT i.tx, i.g, (i.ord - 1) / 1000 AS chunk, i.xid, i.tbl, i.extra,
                     jsonb_agg(i.j -> c.pk[1] ORDER BY i.ord) AS ids,
                     jsonb_agg(i.j - ARRAY(SELECT k FROM jsonb_object_keys(i.j) k WHERE k <> ALL (c.pk)) ORDER BY i.ord) AS keys,
                     count(*) AS n
              FROM rtgw_ingest i JOIN rtgw.tracked c ON c.tbl = i.tbl
              WHERE i.op = 'D' AND i.marked AND c.batch_event IS NOT NULL AND i.gn > 1
              GROUP BY i.tx, i.g, (i.ord - 1) / 1000, i.xid, i.tbl, i.extra) b
        JOIN rtgw.tracked c ON c.tbl = b.tbl
        ORDER BY 1, 2, 3
    ) e;

    -- The transactions complete here (elements with "l") that have events:
    -- in this call, or, for the last part of a large one, in the log.
    txs := ARRAY(SELECT DISTINCT i.tx FROM rtgw_ingest i);
    FOR pos, x IN SELECT v.n, rtgw.full_xid((v.v ->> 'x')::bigint, nxt)
                FROM jsonb_array_elements(batch) WITH ORDINALITY v(v, n)
                WHERE (v.v ->> 'k')::boolean AND v.v ? 'l' AND (v.v ->> 'f')::pg_lsn >= done LOOP
        IF pos <> ALL (txs) AND EXISTS (SELECT 1 FROM rtgw.event e WHERE e.xid = x)
           AND NOT EXISTS (SELECT 1 FROM rtgw.tx y WHERE y.xid = x) THEN
            txs := txs || pos;
        END IF;
    END LOOP;
    -- One rtgw.tx row per such transaction, seqs consecutive in commit order
    -- (nobody else draws one while the lock is held); commit times strictly
    -- increase with seq, as stamp keeps them.
    SELECT count(*) INTO n FROM jsonb_array_elements(batch) WITH ORDINALITY v(v, n) WHERE v.n = ANY (txs) AND v.v ? 'l';
    IF n > 0 THEN
        first := nextval('rtgw.tx_seq');
        IF n > 1 THEN
            PERFORM setval('rtgw.tx_seq', first + n - 1);
        END IF;
        SELECT CASE WHEN isfinite(p.committed_at) THEN p.committed_at END INTO prev
        FROM rtgw.tx p WHERE p.seq IS NOT NULL ORDER BY p.seq DESC LIMIT 1;
        INSERT INTO rtgw.tx (xid, seq, committed_at)
        SELECT d.xid, first + d.k - 1,
               greatest(max(d.at - d.k * interval '1 microsecond') OVER (ORDER BY d.k),
                        prev) + d.k * interval '1 microsecond'
        FROM (SELECT rtgw.full_xid((v.v ->> 'x')::bigint, nxt) AS xid, (v.v ->> 'c')::timestamptz AS at,
                     row_number() OVER (ORDER BY v.n) AS k
              FROM jsonb_array_elements(batch) WITH ORDINALITY v(v, n)
              WHERE v.n = ANY (txs) AND v.v ? 'l') d;
    END IF;
    IF upto IS NOT NULL AND upto > done THEN
        UPDATE rtgw.decoding SET lsn = upto;
    END IF;
    IF n > 0 AND pg_notification_queue_usage() < 0.5 THEN
        ignored := pg_notify('rtgw', (first + n - 1)::text)::text;
    END IF;
    RETURN CASE WHEN n > 0 THEN first + n - 1 END;
END
$fn$;

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
    decoding boolean;
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

    decoding := coalesce((SELECT d.active FROM rtgw.decoding d), false);
    FOR part IN SELECT relid FROM pg_partition_tree(tbl) UNION SELECT tbl LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS rtgw_mark ON %s', part);
        FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'rtgw_' || op, part);
            CONTINUE WHEN decoding;
            EXECUTE format(
                'CREATE TRIGGER %I AFTER %s ON %s REFERENCING %s FOR EACH STATEMENT EXECUTE FUNCTION rtgw.capture(%L)',
                'rtgw_' || op, upper(op), part,
                CASE op WHEN 'insert' THEN 'NEW TABLE AS new_rows'
                        WHEN 'update' THEN 'OLD TABLE AS old_rows NEW TABLE AS new_rows'
                        ELSE 'OLD TABLE AS old_rows' END,
                tbl::oid);
        END LOOP;
        IF decoding THEN
            -- The slot must carry whole rows: a delete's (routing filters on
            -- its columns) and an update's unchanged TOASTed values, which
            -- the new row does not repeat.
            EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', part);
            -- Only what the WAL does not hold needs a trigger: settings
            -- (SET LOCAL values) and, for batch deletes, where a statement
            -- starts. The mark is a transactional message in the slot, read
            -- before the statement's rows.
            IF settings IS NOT NULL OR batch_event IS NOT NULL THEN
                EXECUTE format(
                    'CREATE TRIGGER rtgw_mark BEFORE INSERT OR UPDATE OR DELETE ON %s FOR EACH STATEMENT EXECUTE FUNCTION rtgw.mark(%L, %L)',
                    part, tbl::oid, coalesce(settings::text, ''));
            END IF;
        END IF;
    END LOOP;
    IF decoding AND NOT EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                                WHERE p.pubname = 'rtgw' AND r.prrelid = tbl) THEN
        EXECUTE format('ALTER PUBLICATION rtgw ADD TABLE %s', tbl);
    END IF;
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
        FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete', 'mark'] LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'rtgw_' || op, part);
        END LOOP;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
               WHERE p.pubname = 'rtgw' AND r.prrelid = tbl) THEN
        EXECUTE format('ALTER PUBLICATION rtgw DROP TABLE %s', tbl);
    END IF;
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
