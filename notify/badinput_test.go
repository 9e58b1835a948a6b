package notify_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/budget-rt/gateway/config"
	"github.com/budget-rt/gateway/notify"
	"github.com/budget-rt/gateway/notify/pgtest"
)

// logBuffer collects JSON log lines from goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the records whose message contains msg.
func (b *logBuffer) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if strings.Contains(rec["msg"].(string), msg) {
			out = append(out, rec)
		}
	}
	return out
}

// badStep is one piece of garbage written while good events stream: SQL run
// in its own transaction, with the kind it must be counted as.
type badStep struct {
	name string
	kind string // BadRow* or BadNotify*
	sql  string
	// good is the event a step also commits, if any (a transaction that
	// mixes good and bad rows).
	good []string
}

// A bad row in the log is written as the capture trigger would, in a
// transaction registered in rtgw.tx, so it gets a commit sequence and rings
// the doorbell; only its content is wrong.
func badRow(tbl, op, typ, data string) string {
	return fmt.Sprintf(`
INSERT INTO rtgw.tx (xid) VALUES (pg_current_xact_id()) ON CONFLICT (xid) DO NOTHING;
INSERT INTO rtgw.event (xid, tbl, op, type, data) VALUES (pg_current_xact_id(), %s, %s, %s, %s::jsonb)`,
		quote(tbl), quote(op), quote(typ), quote(data))
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// A transaction whose commit time is missing or infinite: written with the
// triggers off (as a restore or a hand repair might), drawing its sequence
// under the commit lock as the stamp trigger does, and ringing by hand.
func badTime(at string) string {
	return `
SET LOCAL session_replication_role = replica;
SELECT pg_advisory_xact_lock(1920232, 2);
INSERT INTO rtgw.tx (xid, seq, committed_at) VALUES (pg_current_xact_id(), nextval('rtgw.tx_seq'), ` + at + `);
INSERT INTO rtgw.event (xid, tbl, op, type, data) VALUES (pg_current_xact_id(), 'public.articles', 'I', 'article_created', '{"id": 0}');
SELECT pg_notify('rtgw', currval('rtgw.tx_seq')::text)`
}

func badSteps() []badStep {
	return []badStep{
		{name: "empty payload", kind: notify.BadNotifyEmpty, sql: `NOTIFY rtgw`},
		{name: "empty payload again", kind: notify.BadNotifyEmpty, sql: `SELECT pg_notify('rtgw', '')`},
		{name: "word", kind: notify.BadNotifyMalformed, sql: `SELECT pg_notify('rtgw', 'hello')`},
		{name: "negative", kind: notify.BadNotifyMalformed, sql: `SELECT pg_notify('rtgw', '-5')`},
		{name: "leading zero", kind: notify.BadNotifyMalformed, sql: `SELECT pg_notify('rtgw', '007')`},
		{name: "fraction", kind: notify.BadNotifyMalformed, sql: `SELECT pg_notify('rtgw', '1.5')`},
		{name: "over int64", kind: notify.BadNotifyMalformed, sql: `SELECT pg_notify('rtgw', '99999999999999999999')`},
		{name: "bad heartbeat", kind: notify.BadNotifyMalformed, sql: `SELECT pg_notify('rtgw', 'hb zz 1')`},
		{name: "heartbeat 0", kind: notify.BadNotifyMalformed, sql: `SELECT pg_notify('rtgw', 'hb 00000000000000ab 0')`},
		{name: "huge", kind: notify.BadNotifyOversized, sql: `SELECT pg_notify('rtgw', repeat('9', 7999))`},
		{name: "huge text", kind: notify.BadNotifyOversized, sql: `SELECT pg_notify('rtgw', repeat('garbage ', 900))`},
		{name: "future", kind: notify.BadNotifyFuture, sql: `SELECT pg_notify('rtgw', '9000000000000000000')`},
		{name: "future again", kind: notify.BadNotifyFuture, sql: `SELECT pg_notify('rtgw', (SELECT last_value + 1000 FROM rtgw.tx_seq)::text)`},

		{name: "type with a space", kind: notify.BadRowType, sql: badRow("public.articles", "I", "bad type", `{"id": 1}`)},
		{name: "type with a newline", kind: notify.BadRowType, sql: badRow("public.articles", "I", "x\nevent: forged", `{"id": 1}`)},
		{name: "empty type", kind: notify.BadRowType, sql: badRow("public.articles", "I", "", `{"id": 1}`)},
		{name: "long type", kind: notify.BadRowType, sql: badRow("public.articles", "I", strings.Repeat("t", 256), `{"id": 1}`)},
		{name: "array data", kind: notify.BadRowData, sql: badRow("public.articles", "I", "article_created", `[1, 2]`)},
		{name: "string data", kind: notify.BadRowData, sql: badRow("public.articles", "I", "article_created", `"text"`)},
		{name: "null data", kind: notify.BadRowData, sql: badRow("public.articles", "U", "article_updated", `null`)},
		{name: "number data", kind: notify.BadRowData, sql: badRow("public.articles", "D", "article_deleted", `42`)},
		{name: "table syntax", kind: notify.BadRowTable, sql: badRow("no such (table", "I", "article_created", `{"id": 1}`)},
		{name: "empty table", kind: notify.BadRowTable, sql: badRow("", "I", "article_created", `{"id": 1}`)},
		{name: "too many dots", kind: notify.BadRowTable, sql: badRow("a.b.c.d", "I", "article_created", `{"id": 1}`)},
		{name: "unknown op", kind: notify.BadRowOp, sql: badRow("public.articles", "X", "article_created", `{"id": 1}`)},
		{name: "id zero", kind: notify.BadRowID, sql: `
INSERT INTO rtgw.tx (xid) VALUES (pg_current_xact_id()) ON CONFLICT (xid) DO NOTHING;
INSERT INTO rtgw.event (xid, id, tbl, op, type, data) OVERRIDING SYSTEM VALUE
VALUES (pg_current_xact_id(), 0, 'public.articles', 'I', 'article_created', '{"id": 1}')`},
		{name: "no commit time", kind: notify.BadRowTime, sql: badTime("NULL")},
		{name: "infinite commit time", kind: notify.BadRowTime, sql: badTime("'infinity'")},
		{name: "good, bad, good in one transaction", kind: notify.BadRowType, good: []string{"mixed-a", "mixed-b"}, sql: `
INSERT INTO articles (name) VALUES ('mixed-a');
` + badRow("public.articles", "I", "not-a-name", `{"id": 1}`) + `;
INSERT INTO articles (name) VALUES ('mixed-b')`},
	}
}

// Anything else that NOTIFYs on the gateway's channel, and rows of the log
// the gateway cannot use, are counted, logged once per kind with what
// finds them, and skipped; every good event is still published, in commit
// order, and through the doorbell (the safety poll is an hour away).
func TestFollowerSkipsBadInput(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	url := pgtest.NewDatabase(t)
	admin := connect(t, url)
	mustExec(t, admin, `CREATE TABLE articles (id serial PRIMARY KEY, name text)`)
	if err := notify.Install(ctx, admin, []config.Track{{Table: "articles", Prefix: "article"}}); err != nil {
		t.Fatal(err)
	}
	// Unknown ops need the check gone: a schema changed by hand.
	mustExec(t, admin, `ALTER TABLE rtgw.event DROP CONSTRAINT event_op_check`)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)

	var logs logBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	store := &notify.Store{Pool: pool, Logger: logger, MaxRowBytes: 100}
	var (
		mu        sync.Mutex
		published []notify.Event
	)
	f := &notify.Follower{
		Store:        store,
		Logger:       logger,
		PollInterval: time.Hour, // only the doorbell may bring events in time
		Connect:      func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, url) },
		Publish: func(evs []notify.Event) {
			mu.Lock()
			published = append(published, evs...)
			mu.Unlock()
		},
	}
	runFollower(t, f)

	// published up to n events: wait for the next one, so each good event is
	// shown to arrive after the garbage before it, not only at the end.
	waitPublished := func(n int) []notify.Event {
		t.Helper()
		waitFor(t, fmt.Sprintf("%d events published", n), func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(published) >= n
		})
		mu.Lock()
		defer mu.Unlock()
		return append([]notify.Event(nil), published...)
	}

	var want []string
	wantBad := map[string]uint64{}
	good := func(name string) {
		mustExec(t, admin, `INSERT INTO articles (name) VALUES ($1)`, name)
		want = append(want, name)
		waitPublished(len(want))
	}
	for i, step := range badSteps() {
		good(fmt.Sprintf("good-%d", i))
		tx, err := admin.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, step.sql); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatalf("%s: commit: %v", step.name, err)
		}
		want = append(want, step.good...)
		wantBad[step.kind]++
	}
	// A row of a table that is not tracked (nor exists), over the size
	// limit: usable, so it is published, cut to its (unknown, so empty) key.
	mustExec(t, admin, badRow(`"no such"."ta""ble"`, "I", "odd_created", `{"payload": "`+strings.Repeat("x", 200)+`"}`))
	good("last")

	got := waitPublished(len(want) + 1)
	var names []string
	for i, e := range got {
		if i > 0 && e.Pos.Compare(got[i-1].Pos) <= 0 {
			t.Fatalf("event %s published after %s", e.Pos, got[i-1].Pos)
		}
		if e.Type == "odd_created" {
			if !e.Truncated || string(e.Data) != "{}" || e.Table != `"no such"."ta""ble"` {
				t.Fatalf("untracked large row published as %+v", e)
			}
			names = append(names, "odd")
			continue
		}
		var row struct{ Name string }
		if e.Type != "article_created" || e.Op != notify.Insert || json.Unmarshal(e.Data, &row) != nil {
			t.Fatalf("published a bad row: %+v (data %s)", e, e.Data)
		}
		names = append(names, row.Name)
	}
	wantNames := append(want[:len(want)-1:len(want)-1], "odd", "last")
	if fmt.Sprint(names) != fmt.Sprint(wantNames) {
		t.Fatalf("published\n%q\nwant\n%q", names, wantNames)
	}

	// Every bad item is counted once, by kind.
	waitFor(t, "bad input counted", func() bool {
		st := f.Stats()
		all := maps.Clone(st.BadNotifications)
		maps.Copy(all, st.BadRows)
		return maps.Equal(all, wantBad)
	})
	// One warning per kind, with what finds the culprit; the rest at debug.
	for kind := range wantBad {
		var warned []map[string]any
		for _, rec := range logs.lines(t, "") {
			if rec["kind"] == kind && rec["level"] == "WARN" {
				warned = append(warned, rec)
			}
		}
		if len(warned) != 1 {
			t.Errorf("%d warnings of kind %s, want 1: %v", len(warned), kind, warned)
			continue
		}
		keys := []string{"seq", "id", "table", "detail"}
		if strings.HasPrefix(warned[0]["msg"].(string), "ignoring") {
			keys = []string{"channel", "payload", "sender_pid"}
		}
		for _, k := range keys {
			if _, ok := warned[0][k]; !ok {
				t.Errorf("warning for %s lacks %s: %v", kind, k, warned[0])
			}
		}
	}

	// Replays and the window skip the same rows (without counting them:
	// this store is another process's).
	other := &notify.Store{Pool: pool, Logger: slog.New(slog.DiscardHandler), MaxRowBytes: 100}
	head := got[len(got)-1].Pos
	var replayed []notify.Event
	if err := other.Replay(ctx, notify.Position{}, head, func(evs []notify.Event) error {
		replayed = append(replayed, evs...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !samePositions(replayed, got) {
		t.Fatalf("replay from the start gave %d events, want the %d published", len(replayed), len(got))
	}
	// A page of bad rows only must not end a replay: one transaction per page.
	other.PageTx = 1
	replayed = nil
	if err := other.Replay(ctx, got[0].Pos, head, func(evs []notify.Event) error {
		replayed = append(replayed, evs...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !samePositions(replayed, got[1:]) {
		t.Fatalf("replay one transaction per page gave %d events, want %d", len(replayed), len(got)-1)
	}
	if n := other.BadRows(); len(n) != 0 {
		t.Fatalf("replays counted bad rows: %v", n)
	}
	window, wHead, complete, err := other.Latest(ctx, 1000)
	if err != nil || !complete || wHead != head || !samePositions(window, got) {
		t.Fatalf("Latest: %d events, head %s, complete %v, err %v; want %d, %s, true", len(window), wHead, complete, err, len(got), head)
	}
	// A follower reading one transaction per page meets pages with no good
	// event: it must read on at once, not wait for the next ring or poll.
	paged := &notify.Store{Pool: pool, Logger: slog.New(slog.DiscardHandler), MaxRowBytes: 100, PageTx: 1}
	var (
		pmu   sync.Mutex
		pgot  []notify.Event
		pdone = make(chan error, 1)
	)
	pf := &notify.Follower{
		Store: paged, Logger: slog.New(slog.DiscardHandler), PollInterval: time.Hour,
		Connect: func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, url) },
		Publish: func(evs []notify.Event) {
			pmu.Lock()
			pgot = append(pgot, evs...)
			pmu.Unlock()
		},
	}
	pctx, pcancel := context.WithCancel(ctx)
	go func() { pdone <- pf.Run(pctx) }()
	waitFor(t, "a paging follower to catch up", func() bool {
		pmu.Lock()
		defer pmu.Unlock()
		return len(pgot) >= len(got)
	})
	pcancel()
	if err := <-pdone; err != nil {
		t.Fatal(err)
	}
	if !samePositions(pgot, got) {
		t.Fatalf("paging follower published %d events, want the %d published", len(pgot), len(got))
	}

	// The newest rows bad: the head is the newest row, so a follower
	// starting there does not read them again.
	mustExec(t, admin, badRow("public.articles", "I", "bad type", `{}`))
	window, wHead, complete, err = other.Latest(ctx, 1)
	if err != nil || len(window) != 0 || complete || wHead.Compare(head) <= 0 {
		t.Fatalf("Latest over a bad row: %d events, head %s, complete %v, err %v", len(window), wHead, complete, err)
	}
	if n := other.BadRows()[notify.BadRowType]; n != wantBad[notify.BadRowType]+1 {
		t.Fatalf("the window loads counted %d bad types, want %d", n, wantBad[notify.BadRowType]+1)
	}
}

func samePositions(a, b []notify.Event) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Pos != b[i].Pos || !bytes.Equal(a[i].Data, b[i].Data) {
			return false
		}
	}
	return true
}

// runFollower runs f until the test ends, and returns once it is ready.
func runFollower(t *testing.T, f *notify.Follower) {
	t.Helper()
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("follower: %v", err)
		}
	})
	waitFor(t, "follower ready", func() bool { return f.Status().Ready() })
}

// waitFor polls cond for up to 20 s, for what no signal announces but its
// effects show: the follower has handled a notification, the capture has
// counted a batch.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
