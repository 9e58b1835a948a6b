package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/budget-rt/gateway/notify"
)

// Fault tests: the guarantees that must hold when things go wrong around the
// gateway (its LISTEN session dies, it restarts, clients resume from ids it
// cannot serve, rows are huge, clients connect mid-stream).

// faultPoll evaluates cond every 10ms until it holds or timeout passes, and
// reports whether it held. It is the bounded wait for conditions that have no
// signal the test could block on (rows in pg_stat_activity).
func faultPoll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// faultListenPID returns the pid of a session of the gateway on db's database
// that has run its LISTEN, skipping the pids in not; 0 when there is none.
func faultListenPID(t testing.TB, db *testDB, not []int64) int64 {
	t.Helper()
	if not == nil {
		not = []int64{}
	}
	return db.queryInt(t, `SELECT coalesce(min(pid), 0) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'rtgw-listen'
  AND query ILIKE 'listen %' AND pid <> ALL ($1::int[])`, not)
}

// faultGatewaySessions counts the sessions any gateway holds on db's database.
func faultGatewaySessions(t testing.TB, db *testDB) int64 {
	t.Helper()
	return db.queryInt(t, `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE 'rtgw-%'`)
}

// faultLogEntry is one event of the log as the database holds it.
type faultLogEntry struct {
	ID   string // "<seq>-<id>", as frames carry it
	Type string
	Fact int64 // data->>'id'
}

// faultLog reads the whole event log in commit order, straight from the tables.
func faultLog(t testing.TB, db *testDB) []faultLogEntry {
	t.Helper()
	rows, err := db.pool.Query(context.Background(), `
SELECT t.seq::text || '-' || e.id::text, e.type, coalesce((e.data->>'id')::bigint, 0)
FROM rtgw.tx t JOIN rtgw.event e ON e.xid = t.xid
WHERE t.seq IS NOT NULL ORDER BY t.seq, e.id`)
	if err != nil {
		t.Fatalf("read event log: %v", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (faultLogEntry, error) {
		var e faultLogEntry
		return e, r.Scan(&e.ID, &e.Type, &e.Fact)
	})
	if err != nil {
		t.Fatalf("read event log: %v", err)
	}
	return out
}

// faultLogAfter returns the ids of the log after the event id last.
func faultLogAfter(t testing.TB, db *testDB, last string) []string {
	t.Helper()
	log := faultLog(t, db)
	for i, e := range log {
		if e.ID == last {
			out := make([]string, 0, len(log)-i-1)
			for _, e := range log[i+1:] {
				out = append(out, e.ID)
			}
			return out
		}
	}
	t.Fatalf("event %s is not in the log", last)
	return nil
}

// faultFrameOf decodes the data of an SSE message into the frame it carries
// and checks the SSE id and event name agree with it.
func faultFrameOf(t testing.TB, ev sseEvent) frame {
	t.Helper()
	var f frame
	if err := json.Unmarshal([]byte(ev.Data), &f); err != nil {
		t.Fatalf("SSE data %q: %v", ev.Data, err)
	}
	if ev.ID != f.ID || ev.Event != f.Type {
		t.Fatalf("SSE message id %q event %q, but its frame says id %q type %q", ev.ID, ev.Event, f.ID, f.Type)
	}
	return f
}

func faultSSEFrames(t testing.TB, evs []sseEvent) []frame {
	t.Helper()
	out := make([]frame, len(evs))
	for i, ev := range evs {
		out[i] = faultFrameOf(t, ev)
	}
	return out
}

// faultNum returns a numeric field of a frame's row.
func faultNum(t testing.TB, f frame, name string) int64 {
	t.Helper()
	v, ok := f.field(t, name).(float64)
	if !ok {
		t.Fatalf("frame %s %s: field %q is %v, want a number (data %.200s)", f.ID, f.Type, name, f.field(t, name), f.Data)
	}
	return int64(v)
}

// faultCheckAmounts checks that fs are budget_fact_created frames for the
// amounts first, first+1, ... in that order, with increasing ids: every row
// exactly once, in commit order (each test's writer commits them in order).
func faultCheckAmounts(t testing.TB, fs []frame, first int64) {
	t.Helper()
	var prev notify.Position
	for i, f := range fs {
		if f.Type != "budget_fact_created" {
			t.Fatalf("frame %d: %s %s %.200s, want budget_fact_created", i, f.ID, f.Type, f.Data)
		}
		p, err := notify.ParsePosition(f.ID)
		if err != nil {
			t.Fatalf("frame %d: id %q: %v", i, f.ID, err)
		}
		if p.Compare(prev) <= 0 {
			t.Fatalf("frame %d: id %s not after %s", i, f.ID, prev)
		}
		prev = p
		if got, want := faultNum(t, f, "amount"), first+int64(i); got != want {
			t.Fatalf("frame %d (%s): amount %d, want %d: a row was lost, repeated or reordered", i, f.ID, got, want)
		}
	}
}

// TestFaultListenLossLosesNothing: with the safety poll pushed out to an
// hour, only the LISTEN doorbell and the catch-up after each reconnect can
// deliver. Killing the LISTEN session repeatedly while rows are committed
// must lose, repeat or reorder nothing, including rows committed while the
// session is provably down with no later commit to ring the doorbell.
func TestFaultListenLossLosesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := newTestDB(t)
	g := startGateway(t, db, "GATEWAY_POLL_INTERVAL=1h")
	c := dialWS(t, g, "")

	pid := faultListenPID(t, db, nil)
	if pid == 0 {
		t.Fatal("the gateway has no LISTEN session although /readyz said ready")
	}
	seen := []int64{pid}

	// The writer commits rows, amount 0..rows-1, one per transaction. At each
	// of kills points it hands over to the test, which terminates the LISTEN
	// session, and goes on writing while the gateway reconnects.
	const rows, kills = 300, 5
	var written atomic.Int64
	reached := make(chan struct{})
	killed := make(chan struct{}, 1)
	quit := make(chan struct{}) // the test ended early
	writerDone := make(chan struct{})
	defer func() { close(quit); <-writerDone }()
	go func() {
		defer close(writerDone)
		stage := 0
		for i := range rows {
			if stage < kills && i == (stage+1)*rows/(kills+1) {
				select {
				case reached <- struct{}{}:
				case <-quit:
					return
				}
				select {
				case <-killed:
				case <-quit:
					return
				}
				stage++
			}
			select {
			case <-quit:
				return
			default:
			}
			ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := db.pool.Exec(ictx, `INSERT INTO facts (amount, fact_date, description) VALUES ($1, '2026-01-20', 'listen loss')`, i)
			cancel()
			if err != nil {
				t.Errorf("writer: insert %d: %v", i, err)
				return
			}
			written.Add(1)
		}
	}()

	for k := range kills {
		select {
		case <-reached:
		case <-writerDone:
			t.Fatalf("writer stopped before kill %d", k)
		case <-time.After(30 * time.Second):
			t.Fatalf("writer did not reach kill %d within 30s", k)
		}
		start := time.Now()
		var ok bool
		if err := db.pool.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, pid).Scan(&ok); err != nil || !ok {
			t.Fatalf("terminate LISTEN session %d: %v %v", pid, ok, err)
		}
		atKill := written.Load()
		killed <- struct{}{}
		var next int64
		up := faultPoll(10*time.Second, func() bool {
			next = faultListenPID(t, db, seen)
			return next != 0
		})
		took := time.Since(start)
		if !up {
			t.Fatalf("kill %d: no new LISTEN session 10s after terminating %d", k, pid)
		}
		t.Logf("kill %d: LISTEN session %d terminated; %d listening after %s; %d rows committed meanwhile",
			k, pid, next, took.Round(time.Millisecond), written.Load()-atKill)
		if took > 5*time.Second {
			t.Errorf("kill %d: reconnecting took %s, want well under 5s (target about 1s)", k, took)
		}
		pid = next
		seen = append(seen, next)
	}
	select {
	case <-writerDone:
	case <-time.After(60 * time.Second):
		t.Fatal("writer did not finish within 60s")
	}
	if n := written.Load(); n != rows {
		t.Fatalf("writer committed %d rows, want %d", n, rows)
	}

	// The tail: refuse new sessions to the database, terminate the LISTEN
	// session and wait until it is gone, then commit. No doorbell can ring for
	// these rows and none will ring after them, so only the catch-up after
	// the reconnect can deliver them.
	var dbname string
	if err := db.pool.QueryRow(ctx, `SELECT current_database()`).Scan(&dbname); err != nil {
		t.Fatal(err)
	}
	conn, err := db.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	// A database cannot refuse connections from inside itself: ask from the
	// maintenance database.
	admin, err := pgx.ParseConfig(db.url)
	if err != nil {
		t.Fatal(err)
	}
	admin.Database = "postgres"
	adminConn, err := pgx.ConnectConfig(ctx, admin)
	if err != nil {
		t.Fatalf("connect to the postgres database: %v", err)
	}
	defer adminConn.Close(ctx)
	allow := func(on bool) error {
		_, err := adminConn.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s ALLOW_CONNECTIONS %t", pgx.Identifier{dbname}.Sanitize(), on))
		return err
	}
	if err := allow(false); err != nil {
		t.Fatalf("refuse connections: %v", err)
	}
	allowed := false
	defer func() {
		if !allowed {
			_ = allow(true)
		}
	}()
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_terminate_backend($1, 5000)`, pid).Scan(&ok); err != nil || !ok {
		t.Fatalf("terminate LISTEN session %d: %v %v", pid, ok, err)
	}
	const tail = 20
	for i := range tail {
		if _, err := conn.Exec(ctx, `INSERT INTO facts (amount, fact_date, description) VALUES ($1, '2026-01-20', 'tail')`, rows+i); err != nil {
			t.Fatalf("insert tail row %d: %v", i, err)
		}
	}
	var n int64
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'rtgw-listen'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d LISTEN sessions exist although connections are refused: the tail was not written while it was down", n)
	}
	start := time.Now()
	if err := allow(true); err != nil {
		t.Fatalf("allow connections: %v", err)
	}
	allowed = true
	if !faultPoll(10*time.Second, func() bool { return faultListenPID(t, db, seen) != 0 }) {
		t.Fatal("no LISTEN session 10s after connections were allowed again")
	}
	t.Logf("tail: %d rows committed while LISTEN was down; listening again %s after connections were allowed",
		tail, time.Since(start).Round(time.Millisecond))

	faultCheckAmounts(t, c.take(t, rows+tail), 0)
	// Exactly once: the next frame is the next commit, not a repeat.
	db.exec(t, `INSERT INTO articles (name) VALUES ('end')`)
	if f := c.next(t, 10*time.Second); f.Type != "article_created" {
		t.Fatalf("after every row got %s %s %.200s, want the end marker", f.ID, f.Type, f.Data)
	}
}

// TestFaultResumeAcrossRestart: a client of gateway A resumes on gateway B
// after A stopped and rows were committed with no gateway running; it gets
// exactly the rows it missed, then live ones. Once from B's memory, once
// from the event log (the window is smaller than what was missed); over
// WebSocket (?last_event_id=) and SSE (Last-Event-ID header).
func TestFaultResumeAcrossRestart(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		env  []string
	}{
		{"ring", nil},
		{"database", []string{"GATEWAY_REPLAY_EVENTS=5"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := newTestDB(t)
			a := startGateway(t, db)
			c := dialWS(t, a, "")
			const k, m = 10, 200
			for i := range k {
				db.exec(t, `INSERT INTO facts (amount, fact_date) VALUES ($1, '2026-02-01')`, i)
			}
			got := c.take(t, k)
			faultCheckAmounts(t, got, 0)
			last := got[k-1].ID

			a.stop(t)
			if !faultPoll(10*time.Second, func() bool { return faultGatewaySessions(t, db) == 0 }) {
				t.Fatalf("gateway A still has %d database sessions 10s after it stopped", faultGatewaySessions(t, db))
			}

			// With no gateway running, writes neither fail nor block.
			start := time.Now()
			for i := range m {
				ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := db.pool.Exec(ictx, `INSERT INTO facts (amount, fact_date) VALUES ($1, '2026-02-02')`, k+i)
				cancel()
				if err != nil {
					t.Fatalf("insert %d with no gateway running: %v", i, err)
				}
			}
			t.Logf("%d commits with no gateway running took %s", m, time.Since(start).Round(time.Millisecond))
			want := faultLogAfter(t, db, last)
			if len(want) != m {
				t.Fatalf("the log holds %d events after %s, want %d", len(want), last, m)
			}

			b := startGateway(t, db, tc.env...)
			w := dialWS(t, b, "last_event_id="+url.QueryEscape(last))
			h := http.Header{}
			h.Set("Last-Event-ID", last)
			s := dialSSE(t, b, "", h)
			for name, fs := range map[string][]frame{"websocket": w.take(t, m), "sse": faultSSEFrames(t, s.take(t, m))} {
				if !slices.Equal(ids(fs), want) {
					t.Fatalf("%s resume from %s replayed\n%v\nwant\n%v", name, last, ids(fs), want)
				}
				faultCheckAmounts(t, fs, k)
			}

			// Then live events, and nothing before them.
			db.exec(t, `INSERT INTO facts (amount, fact_date) VALUES ($1, '2026-02-03')`, k+m)
			live := faultLog(t, db)
			wantLive := live[len(live)-1].ID
			fw := w.next(t, 10*time.Second)
			fs := faultFrameOf(t, s.next(t))
			for name, f := range map[string]frame{"websocket": fw, "sse": fs} {
				if f.ID != wantLive || faultNum(t, f, "amount") != k+m {
					t.Fatalf("%s: after the replay got %s %s %.200s, want the live commit %s", name, f.ID, f.Type, f.Data, wantLive)
				}
			}
		})
	}
}

// TestFaultResumeResets: ids that cannot be resumed from get a reset frame
// with the right reason and the current head, then live events; an id at the
// head replays nothing.
func TestFaultResumeResets(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, "GATEWAY_REPLAY_EVENTS=3")
	watch := dialWS(t, g, "")

	for i := range 10 {
		db.exec(t, `INSERT INTO facts (amount, fact_date) VALUES ($1, '2026-03-01')`, i)
	}
	first := watch.take(t, 10)
	faultCheckAmounts(t, first, 0)
	head := first[9].ID
	pos := func(id string) notify.Position {
		p, err := notify.ParsePosition(id)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	// Prune the five oldest transactions, as a retention job would.
	pruned := pos(first[4].ID).Seq
	db.exec(t, `DELETE FROM rtgw.event WHERE xid IN (SELECT xid FROM rtgw.tx WHERE seq <= $1)`, pruned)
	db.exec(t, `DELETE FROM rtgw.tx WHERE seq <= $1`, pruned)

	// live commits a row and returns its frame as the watcher saw it: every
	// client attached before the commit must get exactly it next.
	n := 100
	live := func() frame {
		n++
		db.exec(t, `INSERT INTO facts (amount, fact_date) VALUES ($1, '2026-03-02')`, n)
		f := watch.next(t, 10*time.Second)
		if f.Type != "budget_fact_created" || faultNum(t, f, "amount") != int64(n) {
			t.Fatalf("watcher: got %s %s %.200s, want the live row %d", f.ID, f.Type, f.Data, n)
		}
		head = f.ID
		return f
	}
	checkReset := func(name string, f frame, reason string) {
		t.Helper()
		if f.Type != "reset" || f.Event != "reset" {
			t.Fatalf("%s: first frame %s %s %.200s, want a reset", name, f.ID, f.Type, f.Data)
		}
		if got := f.field(t, "reason"); got != reason {
			t.Fatalf("%s: reset reason %v, want %s", name, got, reason)
		}
		if f.ID != head {
			t.Fatalf("%s: reset carries id %q, want the head %s", name, f.ID, head)
		}
	}
	// checkLive commits a live row and checks next returns it.
	checkLive := func(name string, next func() frame) {
		t.Helper()
		want := live()
		if got := next(); got.ID != want.ID || got.Type != want.Type {
			t.Fatalf("%s: after the reset got %s %s %.200s, want the live commit %s", name, got.ID, got.Type, got.Data, want.ID)
		}
	}
	wsCase := func(name, last, reason string) {
		t.Helper()
		c := dialWS(t, g, "last_event_id="+url.QueryEscape(last))
		checkReset(name, c.next(t, 10*time.Second), reason)
		checkLive(name, func() frame { return c.next(t, 10*time.Second) })
	}

	p6 := pos(first[6].ID)
	wsCase("pruned, oldest", first[0].ID, "expired")
	wsCase("pruned, newest", first[4].ID, "expired")
	// The oldest id left resumes from the log: exactly what follows it.
	want := faultLogAfter(t, db, first[5].ID)
	if got := dialWS(t, g, "last_event_id="+url.QueryEscape(first[5].ID)).take(t, len(want)); !slices.Equal(ids(got), want) {
		t.Fatalf("resume from the oldest id kept, %s: got %v, want %v", first[5].ID, ids(got), want)
	}
	wsCase("never issued, after the head", "999999-1", "unknown")
	wsCase("never issued, inside the log", fmt.Sprintf("%d-%d", p6.Seq, p6.ID+100000), "unknown")
	hp := pos(head)
	wsCase("never issued, inside the window", fmt.Sprintf("%d-%d", hp.Seq, hp.ID-1), "unknown")
	for _, bad := range []string{"abc", "1-", "-1-2", "1-2-3", "0-1", "01-1"} {
		wsCase("garbage "+bad, bad, "invalid")
	}

	// At the head: nothing is replayed, the next frame is the next commit.
	c := dialWS(t, g, "last_event_id="+url.QueryEscape(head))
	wsNext := func() frame { return c.next(t, 10*time.Second) }
	checkLive("at the head", wsNext)
	// Just behind the head, from memory: exactly the head, then live.
	prev := head
	f := live()
	c = dialWS(t, g, "last_event_id="+url.QueryEscape(prev))
	if got := wsNext(); got.ID != f.ID {
		t.Fatalf("one behind the head: got %s %s, want %s", got.ID, got.Type, f.ID)
	}
	checkLive("one behind the head, then live", wsNext)

	// SSE: the Last-Event-ID header and the query parameter.
	h := http.Header{}
	h.Set("Last-Event-ID", first[2].ID)
	s := dialSSE(t, g, "", h)
	sseNext := func() frame { return faultFrameOf(t, s.next(t)) }
	checkReset("sse header, pruned", sseNext(), "expired")
	checkLive("sse header, pruned", sseNext)
	s = dialSSE(t, g, "last_event_id=abc", nil)
	checkReset("sse query, garbage", sseNext(), "invalid")
	checkLive("sse query, garbage", sseNext)

	// A new gateway, whose memory holds the whole log that is left, still
	// knows the pruned id from the unknown.
	g.stop(t)
	g = startGateway(t, db)
	watch = dialWS(t, g, "")
	wsCase("after restart, pruned", first[3].ID, "expired")
	wsCase("after restart, never issued", "999999-1", "unknown")
}

// TestFaultLargeRows: a 100 KB row arrives whole under the default limit;
// over GATEWAY_MAX_ROW_BYTES it arrives as its primary key, marked
// truncated, whether live, loaded at start or replayed from the log.
func TestFaultLargeRows(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	full := startGateway(t, db)
	limited := startGateway(t, db, "GATEWAY_MAX_ROW_BYTES=65536")
	fc := dialWS(t, full, "")
	cc := dialWS(t, limited, "")
	cs := dialSSE(t, limited, "", nil)

	// Quotes, control characters and multi-byte runes, so that escaping is
	// exercised too, cut to at least 100 KB at a rune boundary.
	unit := "large \"row\"\tline\n\\ é ü 漢 "
	big := strings.Repeat(unit, 100*1024/len(unit)+1)
	cut := 100 * 1024
	for !utf8.RuneStart(big[cut]) {
		cut++
	}
	big = big[:cut]

	small := db.insertFact(t, 1, "2026-01-02")
	id := db.queryInt(t, `INSERT INTO facts (amount, fact_date, description) VALUES (2, '2026-01-03', $1) RETURNING id`, big)
	db.exec(t, `UPDATE facts SET amount = 3 WHERE id = $1`, id)
	db.exec(t, `UPDATE facts SET amount = 4 WHERE id = $1`, small)

	key := fmt.Sprintf(`{"id":%d,"fact_date":"2026-01-03"}`, id)
	checkSmall := func(name string, f frame) {
		t.Helper()
		if f.Truncated || faultNum(t, f, "id") != small || f.field(t, "description") != nil {
			t.Fatalf("%s: small row arrived as %s %s truncated=%v %.200s", name, f.ID, f.Type, f.Truncated, f.Data)
		}
	}
	checkWhole := func(name string, f frame, typ string, amount int64) {
		t.Helper()
		d, _ := f.field(t, "description").(string)
		if f.Type != typ || f.Truncated || faultNum(t, f, "amount") != amount || len(d) != len(big) || d != big {
			t.Fatalf("%s: %s %s truncated=%v amount %v description of %d bytes, want %s amount %d and all %d bytes",
				name, f.ID, f.Type, f.Truncated, f.field(t, "amount"), len(d), typ, amount, len(big))
		}
	}
	checkCut := func(name string, f frame, typ string) {
		t.Helper()
		if f.Type != typ || !f.Truncated || !jsonEqual(t, f.Data, key) {
			t.Fatalf("%s: %s %s truncated=%v %.300s, want %s with only %s and truncated", name, f.ID, f.Type, f.Truncated, f.Data, typ, key)
		}
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(f.Data, &raw); err != nil || len(raw) != 2 {
			t.Fatalf("%s: data %s has %d keys, want exactly id and fact_date", name, f.Data, len(raw))
		}
	}

	got := fc.take(t, 4)
	checkSmall("full, insert", got[0])
	checkWhole("full, insert", got[1], "budget_fact_created", 2)
	checkWhole("full, update", got[2], "budget_fact_updated", 3)
	checkSmall("full, small update", got[3])
	t.Logf("whole frame of the large row: %d bytes of data", len(got[1].Data))

	// capped checks frames of a capped gateway against got[from:].
	capped := func(name string, fs []frame, from int) {
		t.Helper()
		if !slices.Equal(ids(fs), ids(got[from:])) {
			t.Fatalf("%s: ids %v, want %v", name, ids(fs), ids(got[from:]))
		}
		for i, f := range fs {
			switch i + from {
			case 0, 3:
				checkSmall(name, f)
			case 1:
				checkCut(name+", insert", f, "budget_fact_created")
			case 2:
				checkCut(name+", update", f, "budget_fact_updated")
			}
		}
	}
	capped("capped, websocket", cc.take(t, 4), 0)
	capped("capped, sse", faultSSEFrames(t, cs.take(t, 4)), 0)

	// Capped gateways started now: one loads the rows into memory at start,
	// the other (window of one event) replays them from the log. Clients
	// resuming from the first row get the others cut the same way.
	loaded := startGateway(t, db, "GATEWAY_MAX_ROW_BYTES=65536")
	capped("capped, loaded at start", dialWS(t, loaded, "last_event_id="+url.QueryEscape(got[0].ID)).take(t, 3), 1)
	replayed := startGateway(t, db, "GATEWAY_MAX_ROW_BYTES=65536", "GATEWAY_REPLAY_EVENTS=1")
	capped("capped, replayed from the log", dialWS(t, replayed, "last_event_id="+url.QueryEscape(got[0].ID)).take(t, 3), 1)
}

// TestFaultConnectMidStream: clients that connect while rows are being
// committed miss nothing committed after their handshake completed. Each
// client, right after its handshake, commits a marker row; what it then
// receives must be a gap-free stretch of the log, in commit order, ending at
// the last commit, that holds its marker and every row whose id was drawn
// after the marker's (such a row was inserted, so committed, after the
// handshake, even if it committed before the marker).
func TestFaultConnectMidStream(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := newTestDB(t)
	g := startGateway(t, db)

	stop := make(chan struct{})
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }) }
	writerDone := make(chan struct{})
	var written atomic.Int64
	go func() {
		defer close(writerDone)
		for i := range 20000 {
			select {
			case <-stop:
				return
			default:
			}
			ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := db.pool.Exec(ictx, `INSERT INTO facts (amount, fact_date, description) VALUES ($1, '2026-01-25', 'stream')`, i)
			cancel()
			if err != nil {
				t.Errorf("writer: insert %d: %v", i, err)
				return
			}
			written.Add(1)
		}
	}()
	defer func() { halt(); <-writerDone }()

	type sub struct {
		name   string
		next   func() frame
		marker int64 // fact id of the marker committed right after the handshake
	}
	var subs []*sub
	for i := range 8 {
		at := written.Load() + 15
		if !faultPoll(20*time.Second, func() bool { return written.Load() >= at }) {
			t.Fatalf("writer stalled at %d rows", written.Load())
		}
		s := &sub{}
		if i%2 == 0 {
			c := dialWS(t, g, "")
			s.name = fmt.Sprintf("websocket %d", i)
			s.next = func() frame { return c.next(t, 20*time.Second) }
		} else {
			c := dialSSE(t, g, "", nil)
			s.name = fmt.Sprintf("sse %d", i)
			s.next = func() frame { return faultFrameOf(t, c.next(t)) }
		}
		s.marker = db.queryInt(t, `INSERT INTO facts (amount, fact_date, description) VALUES (-1, '2026-01-25', $1) RETURNING id`, s.name)
		subs = append(subs, s)
	}
	at := written.Load() + 15
	if !faultPoll(20*time.Second, func() bool { return written.Load() >= at }) {
		t.Fatalf("writer stalled at %d rows", written.Load())
	}
	halt()
	<-writerDone
	end := db.queryInt(t, `INSERT INTO facts (amount, fact_date, description) VALUES (-2, '2026-01-25', 'end') RETURNING id`)

	log := faultLog(t, db)
	if last := log[len(log)-1]; last.Fact != end {
		t.Fatalf("the log ends with %+v, want the end marker %d", last, end)
	}
	index := map[string]int{}
	for i, e := range log {
		index[e.ID] = i
	}
	for _, s := range subs {
		var got []frame
		for {
			f := s.next()
			got = append(got, f)
			if f.Type == "budget_fact_created" && faultNum(t, f, "id") == end {
				break
			}
			if len(got) > len(log) {
				t.Fatalf("%s: more frames than the log has events", s.name)
			}
		}
		start, ok := index[got[0].ID]
		if !ok {
			t.Fatalf("%s: first frame %s %s is not in the log", s.name, got[0].ID, got[0].Type)
		}
		want := log[start:]
		if len(got) != len(want) {
			t.Fatalf("%s: got %d frames from %s to the end, the log has %d: a gap or a repeat", s.name, len(got), got[0].ID, len(want))
		}
		delivered := map[int64]bool{}
		before := -1
		for i, f := range got {
			if f.ID != want[i].ID || f.Type != want[i].Type {
				t.Fatalf("%s: frame %d is %s %s, the log has %s %s: a gap, a repeat or a reorder", s.name, i, f.ID, f.Type, want[i].ID, want[i].Type)
			}
			fact := faultNum(t, f, "id")
			delivered[fact] = true
			if fact == s.marker {
				before = i
			}
		}
		if before < 0 {
			t.Fatalf("%s: its marker row %d, committed after the handshake, never arrived", s.name, s.marker)
		}
		for _, e := range log {
			if e.Fact > s.marker && !delivered[e.Fact] {
				t.Fatalf("%s: row %d (%s), inserted after the marker %d, never arrived", s.name, e.Fact, e.ID, s.marker)
			}
		}
		t.Logf("%s: %d frames, %d of them before its marker", s.name, len(got), before)
	}
	t.Logf("%d rows written while 8 clients connected", written.Load())
}

// A read of the event log that hangs (here: on a lock, as it would on a dead
// connection or a frozen server) fails after GATEWAY_LOG_READ_TIMEOUT: /readyz
// says why while it lasts, and once the log is readable the stream goes on
// with nothing lost. Without the deadline the read would wait, and /readyz
// would answer ready, for as long as the lock (or TCP) let it.
func TestFaultStuckLogReadTimesOut(t *testing.T) {
	db := newTestDB(t)
	g := startGateway(t, db, "GATEWAY_POLL_INTERVAL=100ms", "GATEWAY_LOG_READ_TIMEOUT=300ms")
	c := dialWS(t, g, "")

	readyz := func() (int, string) {
		resp, err := http.Get(g.base + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		var body struct {
			Reason string `json:"reason"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body.Reason
	}

	lock, err := db.pool.Begin(t.Context())
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	defer lock.Rollback(context.Background())
	if _, err := lock.Exec(t.Context(), `LOCK TABLE rtgw.tx, rtgw.event IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatalf("lock the log: %v", err)
	}
	var reason string
	if !faultPoll(10*time.Second, func() bool {
		var code int
		code, reason = readyz()
		return code == http.StatusServiceUnavailable && strings.Contains(reason, "deadline")
	}) {
		t.Fatalf("/readyz while every read of the log hangs: last reason %q, want 503 naming the read deadline", reason)
	}
	t.Logf("/readyz while the log is locked: %s", reason)

	// A writer queues behind the lock; once it is released the write commits
	// and reaches the client.
	type result struct {
		id  int64
		err error
	}
	wrote := make(chan result, 1)
	go func() {
		var r result
		r.err = db.pool.QueryRow(context.Background(),
			`INSERT INTO facts (amount, fact_date) VALUES (42, '2026-03-01') RETURNING id`).Scan(&r.id)
		wrote <- r
	}()
	if err := lock.Rollback(t.Context()); err != nil {
		t.Fatalf("release the lock: %v", err)
	}
	r := <-wrote
	if r.err != nil {
		t.Fatalf("write after the lock: %v", r.err)
	}
	want := r.id
	f := c.next(t, 10*time.Second)
	if f.Type != "budget_fact_created" || faultNum(t, f, "id") != want {
		t.Fatalf("after the lock: got %s %v, want budget_fact_created of row %d", f.Type, f.Data, want)
	}
	g.waitReady(t)
}
