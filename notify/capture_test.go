package notify_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/budget-rt/gateway/config"
	"github.com/budget-rt/gateway/notify"
	"github.com/budget-rt/gateway/notify/pgtest"
)

// decodingDB returns a database whose tracked tables (created by schema,
// tracked as tracks) are captured by logical decoding, and the slot's name.
// The slot is dropped before the database.
func decodingDB(t testing.TB, schema string, tracks []config.Track) (string, string) {
	t.Helper()
	dbURL := pgtest.NewDatabase(t)
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	slot := "rtgw_" + strings.TrimPrefix(u.Path, "/")
	admin := connect(t, dbURL)
	var level string
	if err := admin.QueryRow(t.Context(), `SHOW wal_level`).Scan(&level); err != nil {
		t.Fatal(err)
	}
	if level != "logical" {
		t.Fatalf("capture by decoding needs wal_level = logical; the test server has %s (the cluster the tests start has it)", level)
	}
	mustExec(t, admin, schema)
	if err := notify.Install(t.Context(), admin, tracks); err != nil {
		t.Fatal(err)
	}
	if err := notify.CaptureByDecoding(t.Context(), admin, slot); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Registered after NewDatabase's, so it runs before the drop, which
		// a slot would refuse. The capture, stopped before, may still be
		// leaving it.
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			t.Errorf("connect to drop slot: %v", err)
			return
		}
		defer conn.Close(ctx)
		if err := notify.DropSlot(ctx, conn, slot); err != nil {
			t.Error(err)
		}
	})
	return dbURL, slot
}

// startCapture runs a capture service on dbURL until the test ends (or
// stop is called).
func startCapture(t testing.TB, dbURL string, tune func(*notify.Capture)) (c *notify.Capture, stop func()) {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := notify.ReplicationConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	c = &notify.Capture{
		Pool:    pool,
		Connect: func(ctx context.Context) (*pgconn.PgConn, error) { return pgconn.ConnectConfig(ctx, cfg) },
		Logger:  testLogger(t),
		Idle:    50 * time.Millisecond,
	}
	if tune != nil {
		tune(c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("capture: %v", err)
			}
			pool.Close()
		})
	}
	t.Cleanup(stop)
	return c, stop
}

// logged returns "table op type data" of every logged event in commit order.
func logged(t *testing.T, conn *pgx.Conn) []string {
	t.Helper()
	rows, err := conn.Query(t.Context(), `
SELECT e.tbl || ' ' || e.op::text || ' ' || e.type || ' ' || e.data::text
FROM rtgw.tx t JOIN rtgw.event e ON e.xid = t.xid ORDER BY t.seq, e.id`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitLogged waits until the log holds n transactions, and fails the test
// if it does not within a generous bound or holds more.
func waitLogged(t testing.TB, conn *pgx.Conn, n int) {
	t.Helper()
	got := waitLog(t, conn, 30*time.Second+time.Duration(n)*time.Millisecond, func(got int) bool { return got >= n })
	if got != n {
		t.Fatalf("log holds %d transactions, want %d", got, n)
	}
}

// waitLog counts the log's transactions each time its doorbell (NOTIFY
// rtgw, rung by every commit that adds one) rings on conn, until enough
// says so or the time is up, and returns the last count.
func waitLog(t testing.TB, conn *pgx.Conn, bound time.Duration, enough func(int) bool) int {
	t.Helper()
	// Listening before the first count: a commit after it rings.
	if _, err := conn.Exec(t.Context(), `LISTEN rtgw`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), bound)
	defer cancel()
	for {
		var got int
		if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM rtgw.tx WHERE seq IS NOT NULL`).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if enough(got) || ctx.Err() != nil {
			return got
		}
		if _, err := conn.WaitForNotification(ctx); err != nil && ctx.Err() == nil {
			t.Fatal(err)
		}
	}
}

const captureSchema = `
CREATE TABLE kinds (id bigint PRIMARY KEY, n int, amount numeric(12,2), name text, ok bool,
                    at timestamptz, d date, doc jsonb, j json, tags int[], big text, note text);
CREATE TABLE parts (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE parts_a PARTITION OF parts FOR VALUES IN ('a');
CREATE TABLE parts_b PARTITION OF parts FOR VALUES IN ('b');
CREATE TABLE ledger (id int PRIMARY KEY, record_type text NOT NULL, amount int, secret text);
CREATE TABLE other (id int PRIMARY KEY);
`

var captureTracks = []config.Track{
	{Table: "kinds", Prefix: "kind"},
	{Table: "parts", Prefix: "part"},
	{Table: "ledger", Prefix: "{record_type}", Columns: []string{"record_type", "amount"},
		Settings: map[string]string{"tab_origin_id": "app.tab"}, BatchEvent: "ledger_batch_deleted", BatchKey: "ledger_ids"},
}

// captureScript is a series of transactions covering what capture must
// render: every kind of value, TOASTed values left unchanged, partitions
// (a row moving between them), column lists, settings, batch deletes in
// 1,000-row chunks, savepoints, rollbacks and untracked tables.
var captureScript = []string{
	`INSERT INTO kinds VALUES
	 (1, 1, 12.50, 'O"Brien \ é ☃', true, '2026-01-02 03:04:05.678901+02', '2026-02-03', '{"a": [1, 2.5, null], "b": "x"}',
	  '{"z": 1,  "a": 2}', '{1,2,3}', repeat('big', 50000), NULL),
	 (2, NULL, -0.01, '', false, 'infinity', '-infinity', 'null', '[]', '{}', repeat('x', 9000), 'n'),
	 (3, 3, 0, E'tab\there\nline', NULL, NULL, NULL, '"s"', '"s"', NULL, NULL, NULL)`,
	`UPDATE kinds SET n = n + 1 WHERE id = 1`,
	`UPDATE kinds SET big = 'small', note = 'changed' WHERE id = 2`,
	`DELETE FROM kinds WHERE id = 3`,
	`INSERT INTO parts VALUES (1, 'a', 'x'), (2, 'a', 'y')`,
	`UPDATE parts SET region = 'b' WHERE id = 1`,
	`INSERT INTO parts_b VALUES (3, 'b', 'z')`,
	`UPDATE parts SET v = v || '!'`,
	`BEGIN; SET LOCAL app.tab = 'tab-1';
	 INSERT INTO ledger VALUES (1, 'fact', 10, 's1'), (2, 'plan', 20, 's2'), (3, 'fact', 30, 's3'); COMMIT`,
	`UPDATE ledger SET amount = amount + 1`,
	`DELETE FROM ledger WHERE id = 1`,
	`BEGIN; SET LOCAL app.tab = 'tab-2'; DELETE FROM ledger; COMMIT`,
	`BEGIN; INSERT INTO kinds (id, name) VALUES (10, 'kept'); SAVEPOINT s;
	 INSERT INTO kinds (id, name) VALUES (11, 'rolled back'); ROLLBACK TO s;
	 INSERT INTO ledger VALUES (5, 'fact', 5, NULL); UPDATE kinds SET name = 'kept!' WHERE id = 10; COMMIT`,
	`BEGIN; INSERT INTO kinds (id) VALUES (20); ROLLBACK`,
	`INSERT INTO other VALUES (1)`,
	`INSERT INTO kinds (id, n) SELECT g, g FROM generate_series(1000, 3500) g`,
	`INSERT INTO ledger (id, record_type, amount) SELECT g, 'fact', g FROM generate_series(100, 2599) g`,
	`BEGIN; SET LOCAL app.tab = 'tab-3'; DELETE FROM ledger WHERE id >= 100; DELETE FROM kinds WHERE id >= 3000; COMMIT`,
	`UPDATE ledger SET id = 6 WHERE id = 5`,
}

// Capture by decoding logs, transaction for transaction and event for
// event, what the triggers log for the same writes.
func TestDecodingLogsWhatTriggersLog(t *testing.T) {
	t.Parallel()
	t.Run("whole", func(t *testing.T) {
		t.Parallel()
		decodingLogsWhatTriggersLog(t, 0)
	})
	// The 2,500-row transactions go in parts of 1,000 rows (the batch
	// deletes' chunks fall on the same rows, so the events are the same).
	t.Run("in parts", func(t *testing.T) {
		t.Parallel()
		decodingLogsWhatTriggersLog(t, 1000)
	})
}

func decodingLogsWhatTriggersLog(t *testing.T, maxBatch int) {
	byTriggers := connect(t, pgtest.NewDatabase(t))
	mustExec(t, byTriggers, captureSchema)
	if err := notify.Install(t.Context(), byTriggers, captureTracks); err != nil {
		t.Fatal(err)
	}
	dbURL, _ := decodingDB(t, captureSchema, captureTracks)
	byDecoding := connect(t, dbURL)
	var triggers int
	if err := byDecoding.QueryRow(t.Context(), `
SELECT count(*) FROM pg_trigger WHERE tgname IN ('rtgw_insert', 'rtgw_update', 'rtgw_delete')`).Scan(&triggers); err != nil {
		t.Fatal(err)
	}
	if triggers != 0 {
		t.Fatalf("%d capture triggers left on the tables captured by decoding", triggers)
	}
	c, _ := startCapture(t, dbURL, func(c *notify.Capture) { c.MaxBatch = maxBatch })

	for _, conn := range []*pgx.Conn{byTriggers, byDecoding} {
		for _, sql := range captureScript {
			mustExec(t, conn, sql)
		}
	}
	var want int
	if err := byTriggers.QueryRow(t.Context(), `SELECT count(*) FROM rtgw.tx`).Scan(&want); err != nil {
		t.Fatal(err)
	}
	if want != len(captureScript)-2 { // the rollback and the untracked table
		t.Fatalf("triggers logged %d transactions, want %d", want, len(captureScript)-2)
	}
	waitLogged(t, byDecoding, want)
	a, b := logged(t, byTriggers), logged(t, byDecoding)
	if len(a) != len(b) {
		t.Errorf("triggers logged %d events, decoding %d", len(a), len(b))
	}
	diffs := 0
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			t.Errorf("event %d differs:\ntriggers: %.300s\ndecoding: %.300s", i, a[i], b[i])
			if diffs++; diffs == 5 {
				break
			}
		}
	}
	// Spot checks that the comparison compares what it should.
	for _, want := range []string{
		`public.parts U part_updated {"v": "x", "id": 1, "region": "b"}`,
		`public.ledger D ledger_batch_deleted {"keys": [{"id": 2}, {"id": 3}], "ledger_ids": [2, 3], "deleted_count": 2, "tab_origin_id": "tab-2"}`,
		`public.ledger I plan_created {"id": 2, "amount": 20, "record_type": "plan", "tab_origin_id": "tab-1"}`,
	} {
		if !slices.Contains(b, want) {
			t.Errorf("decoding did not log %s", want)
		}
	}
	if t.Failed() {
		for _, e := range b[:min(len(b), 30)] {
			t.Logf("decoding logged: %.200s", e)
		}
	}

	if parts := c.Stats().Parts; (maxBatch > 0) != (parts > 0) {
		t.Errorf("%d parts written with MaxBatch %d", parts, maxBatch)
	}

	// Commit times strictly increase with seq, as the stamps keep them.
	var bad int
	if err := byDecoding.QueryRow(t.Context(), `
SELECT count(*) FROM (SELECT committed_at <= lag(committed_at) OVER (ORDER BY seq) AS back FROM rtgw.tx) s WHERE back`).Scan(&bad); err != nil {
		t.Fatal(err)
	}
	if bad != 0 {
		t.Errorf("%d commit times do not increase with seq", bad)
	}
}

// A capture that loses its connection (or its replica) at any point logs
// each transaction exactly once, in commit order, whichever replica reads
// the slot next; the server is told positions only every hour here, so
// every reconnect is sent again all it had sent.
func TestDecodingExactlyOnceAcrossReconnectsAndReplicas(t *testing.T) {
	t.Parallel()
	dbURL, slot := decodingDB(t, `CREATE TABLE kinds (id bigint PRIMARY KEY, n int)`, []config.Track{{Table: "kinds", Prefix: "kind"}})
	conn := connect(t, dbURL)
	slow := func(c *notify.Capture) { c.StatusInterval = time.Hour; c.MaxBatch = 7 }
	first, stopFirst := startCapture(t, dbURL, slow)
	second, stopSecond := startCapture(t, dbURL, slow)

	const rounds, per = 8, 50
	const n = rounds * per
	kill := connect(t, dbURL)
	var stopped *notify.Capture
	for r := range rounds {
		for i := r * per; i < (r+1)*per; i++ {
			if i%3 == 0 {
				mustExec(t, conn, fmt.Sprintf(`INSERT INTO kinds VALUES (%d, 0)`, i))
			} else {
				mustExec(t, conn, fmt.Sprintf(`BEGIN; INSERT INTO kinds VALUES (%d, 0); UPDATE kinds SET n = 1 WHERE id = %[1]d; COMMIT`, i))
			}
		}
		// Everything so far is in the log, and the server was never told.
		waitLogged(t, conn, (r+1)*per)
		if r == rounds/2 {
			// The replica reading the slot goes away (its last word tells the
			// server how far it got); the other takes over.
			if first.Stats().Streaming {
				stopped = first
				stopFirst()
			} else {
				stopped = second
				stopSecond()
			}
			continue
		}
		// The reader's connection is cut: the next reader is sent again
		// everything after the position last confirmed.
		mustExec(t, kill, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active`, slot)
	}
	var resent uint64
	for _, c := range []*notify.Capture{first, second} {
		resent += c.Stats().Transactions
	}
	t.Logf("transactions written by the two replicas (with those sent again): %d of %d", resent, n)
	if resent <= n {
		t.Errorf("no transaction was sent again: the test did not test what it should")
	}
	if other := map[*notify.Capture]*notify.Capture{first: second, second: first}[stopped]; other.Stats().Transactions == 0 {
		t.Errorf("the other replica never took over")
	}
	var ids []int
	rows, err := conn.Query(t.Context(), `
SELECT (e.data->>'id')::int FROM rtgw.tx t JOIN rtgw.event e ON e.xid = t.xid WHERE e.op = 'I' ORDER BY t.seq, e.id`)
	if err != nil {
		t.Fatal(err)
	}
	if ids, err = pgx.CollectRows(rows, pgx.RowTo[int]); err != nil {
		t.Fatal(err)
	}
	if len(ids) != n {
		t.Fatalf("%d inserts logged, want %d", len(ids), n)
	}
	for i, id := range ids {
		if id != i {
			t.Fatalf("insert %d logged as the %dth (duplicated, lost or out of commit order)", id, i)
		}
	}
	var updates int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM rtgw.event WHERE op = 'U'`).Scan(&updates); err != nil {
		t.Fatal(err)
	}
	if want := n - (n+2)/3; updates != want {
		t.Errorf("%d updates logged, want %d", updates, want)
	}
}

// Going back to triggers loses nothing and repeats nothing: writes before
// the switch come through the slot, writes after through the triggers, and
// the gateway drops the slot once it is drained.
func TestDecodingSwitchesBackToTriggers(t *testing.T) {
	t.Parallel()
	dbURL, slot := decodingDB(t, `CREATE TABLE kinds (id bigint PRIMARY KEY, n int)`, []config.Track{{Table: "kinds", Prefix: "kind"}})
	conn := connect(t, dbURL)
	c, stop := startCapture(t, dbURL, func(c *notify.Capture) { c.StatusInterval = 20 * time.Millisecond })
	writer := connect(t, dbURL)
	// The writer goes on through the switch and for 200 commits after it.
	switched := make(chan struct{})
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		after := -1
		for i := range 100000 {
			if _, err := writer.Exec(context.Background(), `INSERT INTO kinds VALUES ($1, 0)`, i); err != nil {
				done <- result{i, err}
				return
			}
			select {
			case <-switched:
				if after < 0 {
					after = i + 200
				}
			default:
			}
			if i == after {
				done <- result{i + 1, nil}
				return
			}
		}
		done <- result{100000, errors.New("the switch did not end")}
	}()
	waitAtLeast(t, conn, 50)
	// The decoding capture wrote those (the triggers were off): its own
	// count says so once its call has returned. The log shows a batch as it
	// commits, a moment before; stopping in between fails the call, and the
	// switch below logs nothing twice either way.
	waitFor(t, "the capture to count what it wrote", func() bool { return c.Stats().Transactions > 0 })
	// The gateway stops: the switch reads what the slot still holds itself.
	stop()
	if err := notify.CaptureByTriggers(t.Context(), conn, dbURL, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	close(switched)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	n := r.n
	waitLogged(t, conn, n)
	// CaptureByTriggers returns once the slot's reader has dropped it.
	var slots, left int
	if err := conn.QueryRow(t.Context(), `
SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1), (SELECT count(*) FROM rtgw.decoding)`, slot).Scan(&slots, &left); err != nil {
		t.Fatal(err)
	}
	if slots != 0 || left != 0 {
		t.Fatalf("after the switch back: %d slots, %d rows in rtgw.decoding; want none", slots, left)
	}
	mustExec(t, conn, `INSERT INTO kinds VALUES ($1, 0)`, n)
	waitLogged(t, conn, n+1)
	var ids []int
	rows, err := conn.Query(t.Context(), `
SELECT (e.data->>'id')::int FROM rtgw.tx t JOIN rtgw.event e ON e.xid = t.xid ORDER BY t.seq, e.id`)
	if err != nil {
		t.Fatal(err)
	}
	if ids, err = pgx.CollectRows(rows, pgx.RowTo[int]); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if id != i {
			t.Fatalf("row %d logged as the %dth of %d (duplicated, lost or out of order)", id, i, len(ids))
		}
	}
}

// waitAtLeast waits until the log holds at least n transactions.
func waitAtLeast(t *testing.T, conn *pgx.Conn, n int) {
	t.Helper()
	if got := waitLog(t, conn, 30*time.Second, func(got int) bool { return got >= n }); got < n {
		t.Fatalf("log holds %d transactions, want at least %d", got, n)
	}
}

// testLogger logs through t.Log, so a failing test shows what the capture
// said.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// BenchmarkCaptureIngest measures how fast capture by decoding writes the
// log: b.N one-row transactions are committed with no reader, then a
// capture starts and the time until all are in the log is measured (the
// walsender's decoding included; both share the machine). Run:
//
//	go test ./notify -run '^$' -bench CaptureIngest -benchtime 20000x
func BenchmarkCaptureIngest(b *testing.B) {
	dbURL, _ := decodingDB(b, `CREATE TABLE facts (id bigint PRIMARY KEY, amount int, fact_date date, description text)`,
		[]config.Track{{Table: "facts", Prefix: "budget_fact"}})
	conn := connect(b, dbURL)
	mustExec(b, conn, `CREATE PROCEDURE fill(n int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..n LOOP
        INSERT INTO facts VALUES (i, i, '2026-01-01', 'bench'); COMMIT;
    END LOOP;
END $$`)
	mustExec(b, conn, `CALL fill($1)`, b.N)
	var self0 syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &self0); err != nil {
		b.Fatal(err)
	}
	// The log's doorbell says how far it is (counting the log while it
	// grows would cost the run a core).
	listen := connect(b, dbURL)
	mustExec(b, listen, `LISTEN rtgw`)
	b.ResetTimer()
	c, _ := startCapture(b, dbURL, nil)
	for last := 0; last < b.N; {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		n, err := listen.WaitForNotification(ctx)
		cancel()
		if err != nil {
			b.Fatalf("wait for the log: %v", err)
		}
		if last, err = strconv.Atoi(n.Payload); err != nil {
			b.Fatalf("doorbell %q: %v", n.Payload, err)
		}
	}
	b.StopTimer()
	waitLogged(b, conn, b.N)
	// Where the CPU went, per transaction: the walsender decoding, the
	// backends running rtgw.ingest, and this process (the capture and the
	// test's polling). Processes of the server are found by their roles;
	// their CPU since they started is all spent on this run.
	var self1 syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &self1); err != nil {
		b.Fatal(err)
	}
	var walsender, backends float64
	rows, err := conn.Query(context.Background(), `
SELECT pid, backend_type = 'walsender' FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()`)
	if err != nil {
		b.Fatal(err)
	}
	var pid int
	var isSender bool
	_, err = pgx.ForEachRow(rows, []any{&pid, &isSender}, func() error {
		if isSender {
			walsender += procCPU(b, pid)
		} else {
			backends += procCPU(b, pid)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	self := time.Duration(syscall.TimevalToNsec(self1.Utime) + syscall.TimevalToNsec(self1.Stime) -
		syscall.TimevalToNsec(self0.Utime) - syscall.TimevalToNsec(self0.Stime)).Seconds()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tx/s")
	b.ReportMetric(float64(b.N)/float64(max(c.Stats().Batches, 1)), "tx/batch")
	b.ReportMetric(walsender*1e6/float64(b.N), "walsender-µs/tx")
	b.ReportMetric(backends*1e6/float64(b.N), "ingest-µs/tx")
	b.ReportMetric(self*1e6/float64(b.N), "gateway-µs/tx")
}

// procCPU returns the user and system CPU seconds process pid has used.
func procCPU(tb testing.TB, pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Logf("cpu of %d: %v", pid, err)
		return 0
	}
	// Fields after the command (which may hold spaces), from the 3rd.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

// A large transaction is written in parts; only its last part makes it
// visible. Sent again after a crash between parts, its first part removes
// what the interrupted attempt wrote: each row is logged once. A last part
// with no rows of its own still completes it, and a transaction the log
// already has is not written again.
func TestDecodingIngestsPartsOnce(t *testing.T) {
	t.Parallel()
	dbURL, slot := decodingDB(t, `CREATE TABLE kinds (id bigint PRIMARY KEY, n int)`, []config.Track{{Table: "kinds", Prefix: "kind"}})
	conn := connect(t, dbURL)
	var xid uint32
	var oid uint32
	var commit, end string
	// A real transaction id and positions (nothing reads the slot here).
	if err := conn.QueryRow(t.Context(), `
SELECT (pg_current_xact_id()::text::bigint & 4294967295), 'kinds'::regclass::oid,
       pg_current_wal_lsn()::text, (pg_current_wal_lsn() + 100)::text`).Scan(&xid, &oid, &commit, &end); err != nil {
		t.Fatal(err)
	}
	part := func(first bool, ids ...int) string {
		var rows []string
		for _, id := range ids {
			rows = append(rows, fmt.Sprintf(`{"id": "%d", "n": "0"}`, id))
		}
		p := fmt.Sprintf(`{"x": %d, "f": %q, "g": [{"t": %d, "o": "I", "r": [%s]}]`, xid, commit, oid, strings.Join(rows, ","))
		if first {
			p += `, "first": true`
		}
		return p + "}"
	}
	last := fmt.Sprintf(`{"x": %d, "f": %q, "l": %q, "c": "2026-12-03T00:00:00Z", "k": true, "g": []}`, xid, commit, end)
	ingest := func(elems ...string) {
		t.Helper()
		mustExec(t, conn, `SELECT rtgw.ingest($1, $2::jsonb)`, slot, "["+strings.Join(elems, ",")+"]")
	}
	count := func(sql string) int {
		t.Helper()
		var n int
		if err := conn.QueryRow(t.Context(), sql).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// Its commit is durable whatever the session says: the slot's position
	// is confirmed after it.
	var sc string
	if err := pgx.BeginFunc(t.Context(), conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(t.Context(), `SET LOCAL synchronous_commit = off`); err != nil {
			return err
		}
		if _, err := tx.Exec(t.Context(), `SELECT rtgw.ingest($1, '[]')`, slot); err != nil {
			return err
		}
		return tx.QueryRow(t.Context(), `SHOW synchronous_commit`).Scan(&sc)
	}); err != nil {
		t.Fatal(err)
	}
	if sc != "on" {
		t.Fatalf("synchronous_commit at ingest's commit: %s, want on", sc)
	}

	ingest(part(true, 1, 2))
	ingest(part(false, 3, 4))
	if n := count(`SELECT count(*) FROM rtgw.tx`); n != 0 {
		t.Fatalf("a part made its transaction visible: %d rtgw.tx rows", n)
	}
	// The reader lost its connection; the slot sends the transaction again.
	ingest(part(true, 1, 2))
	ingest(part(false, 3, 4))
	ingest(last)
	if n, d := count(`SELECT count(*) FROM rtgw.event`), count(`SELECT count(DISTINCT data->>'id') FROM rtgw.event`); n != 4 || d != 4 {
		t.Fatalf("%d events, %d distinct rows; want 4 and 4", n, d)
	}
	if n := count(`SELECT count(*) FROM rtgw.tx WHERE seq IS NOT NULL`); n != 1 {
		t.Fatalf("%d rtgw.tx rows, want 1", n)
	}
	// And once more, all of it: the log has it.
	ingest(part(true, 1, 2))
	ingest(part(false, 3, 4))
	ingest(last)
	if n, tx := count(`SELECT count(*) FROM rtgw.event`), count(`SELECT count(*) FROM rtgw.tx`); n != 4 || tx != 1 {
		t.Fatalf("after a repeat: %d events, %d transactions; want 4 and 1", n, tx)
	}
}

// Uninstalling drops the capture slot (which would keep WAL for ever) and
// the publication, and refuses while a gateway reads the slot.
func TestDecodingUninstall(t *testing.T) {
	t.Parallel()
	dbURL, slot := decodingDB(t, `CREATE TABLE kinds (id bigint PRIMARY KEY, n int)`, []config.Track{{Table: "kinds", Prefix: "kind"}})
	conn := connect(t, dbURL)
	c, stop := startCapture(t, dbURL, nil)
	mustExec(t, conn, `INSERT INTO kinds VALUES (1, 1)`)
	waitLogged(t, conn, 1)
	if !c.Stats().Streaming {
		t.Fatal("the capture is not reading the slot")
	}
	if err := notify.Uninstall(t.Context(), conn); err == nil || !strings.Contains(err.Error(), "stop the gateways first") {
		t.Fatalf("uninstall while the slot is read: %v, want a refusal", err)
	}
	stop()
	// The walsender leaves the slot just after the capture stops.
	var err error
	for range 50 {
		if err = notify.Uninstall(t.Context(), conn); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	var slots, pubs int
	if err := conn.QueryRow(t.Context(), `
SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1), (SELECT count(*) FROM pg_publication WHERE pubname = 'rtgw')`,
		slot).Scan(&slots, &pubs); err != nil {
		t.Fatal(err)
	}
	if slots != 0 || pubs != 0 {
		t.Fatalf("after uninstall: %d slots, %d publications", slots, pubs)
	}
}

// Under load, one rtgw.ingest call (a commit, a WAL flush) serves the
// transactions of a Linger, however often the walsender sends keepalives:
// a keepalive's position waits for the batch instead of cutting it.
func TestDecodingBatchesUnderLoad(t *testing.T) {
	t.Parallel()
	dbURL, _ := decodingDB(t, `CREATE TABLE kinds (id bigint PRIMARY KEY, n int)`, []config.Track{{Table: "kinds", Prefix: "kind"}})
	conn := connect(t, dbURL)
	const linger = 20 * time.Millisecond
	c, _ := startCapture(t, dbURL, func(c *notify.Capture) { c.Linger = linger })
	// The capture reads a stream, not a backlog: it reads the slot before
	// the first commit, and the commits come one per millisecond.
	mustExec(t, conn, `INSERT INTO kinds VALUES (-1, 0)`)
	waitLogged(t, conn, 1)
	before := c.Stats().Batches
	start := time.Now()
	const n = 1500
	pace := time.NewTicker(time.Millisecond)
	defer pace.Stop()
	for i := range n {
		<-pace.C
		mustExec(t, conn, `INSERT INTO kinds VALUES ($1, 0)`, i)
	}
	waitLogged(t, conn, n+1)
	elapsed := time.Since(start)
	batches := c.Stats().Batches - before
	if most := uint64(elapsed/linger) + 2; batches > most {
		t.Fatalf("%d transactions in %d batches over %v; with a linger of %v at most %d", n, batches, elapsed, linger, most)
	}
	t.Logf("%d transactions in %d batches over %v", n, batches, elapsed)
}
