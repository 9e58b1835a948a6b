package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/budget-rt/gateway/notify"
)

// Guarantee 1: every committed change reaches every connected client once,
// in commit order; a rolled-back transaction delivers nothing.
func TestEveryCommitReachesEveryClientOnceInOrder(t *testing.T) {
	t.Parallel()
	t.Run("triggers", func(t *testing.T) {
		t.Parallel()
		everyCommitOnceInOrder(t, newTestDB(t))
	})
	// The same guarantees when the database captures by logical decoding
	// (the gateway writes the log from the slot).
	t.Run("decoding", func(t *testing.T) {
		t.Parallel()
		everyCommitOnceInOrder(t, newDecodingDB(t))
	})
}

func everyCommitOnceInOrder(t *testing.T, db *testDB) {
	g := startGateway(t, db)
	clients := []*wsClient{dialWS(t, g, ""), dialWS(t, g, ""), dialWS(t, g, "")}
	sse := dialSSE(t, g, "", nil)

	// Four writers, each committing its own sequence of transactions; a
	// fifth rolls back. A writer's commits are causally ordered, so each
	// must arrive in its own order, and all clients must agree on one order.
	const writers, perWriter = 4, 25
	concurrently(writers+1, func(w int) {
		for i := range perWriter {
			if w == writers {
				tx, err := db.pool.Begin(context.Background())
				if err != nil {
					t.Error(err)
					return
				}
				_, err = tx.Exec(context.Background(), `INSERT INTO facts (amount, fact_date, description) VALUES ($1, '2026-01-10', 'rolled back')`, i)
				if err != nil {
					t.Error(err)
				}
				_ = tx.Rollback(context.Background())
				continue
			}
			_, err := db.pool.Exec(context.Background(),
				`INSERT INTO facts (amount, fact_date, description) VALUES ($1, '2026-01-10', $2)`, i, fmt.Sprintf("w%d", w))
			if err != nil {
				t.Error(err)
			}
		}
	})
	// A last commit, after all others, marks the end: nothing may follow it.
	db.exec(t, `INSERT INTO articles (name) VALUES ('end')`)
	const total = writers*perWriter + 1

	first := clients[0].take(t, total)
	for i, c := range clients {
		got := first
		if i > 0 {
			got = c.take(t, total)
		}
		if !slices.Equal(ids(got), ids(first)) {
			t.Fatalf("client %d order differs from client 0:\n%v\n%v", i, ids(got), ids(first))
		}
		if last := got[total-1]; last.Type != "article_created" {
			t.Fatalf("client %d: last frame %s %s, want the end marker article_created", i, last.ID, last.Type)
		}
	}
	next := map[string]float64{}
	seen := map[float64]bool{}
	var prev notify.Position
	for _, f := range first[:total-1] {
		p, err := notify.ParsePosition(f.ID)
		if err != nil {
			t.Fatalf("frame id %q: %v", f.ID, err)
		}
		if p.Compare(prev) <= 0 {
			t.Fatalf("id %s not after %s", f.ID, prev)
		}
		prev = p
		if f.Type != "budget_fact_created" || f.Event != f.Type {
			t.Fatalf("frame %s: type %q event %q", f.ID, f.Type, f.Event)
		}
		desc, _ := f.field(t, "description").(string)
		if desc == "rolled back" {
			t.Fatalf("a rolled-back insert was delivered: %s", f.Data)
		}
		amount := f.field(t, "amount").(float64)
		if amount != next[desc] {
			t.Fatalf("writer %s: got amount %v, want %v (its commits out of order)", desc, amount, next[desc])
		}
		next[desc]++
		id := f.field(t, "id").(float64)
		if seen[id] {
			t.Fatalf("row %v delivered twice", id)
		}
		seen[id] = true
		if _, err := time.Parse(time.RFC3339Nano, f.Timestamp); err != nil {
			t.Fatalf("timestamp %q: %v", f.Timestamp, err)
		}
	}
	if len(seen) != writers*perWriter {
		t.Fatalf("delivered %d distinct rows, want %d", len(seen), writers*perWriter)
	}
	if n := db.queryInt(t, `SELECT count(*) FROM facts`); n != writers*perWriter {
		t.Fatalf("table has %d rows, want %d", n, writers*perWriter)
	}

	// The SSE stream carries the same events with the same ids.
	evs := sse.take(t, total)
	for i, ev := range evs {
		var f frame
		if err := json.Unmarshal([]byte(ev.Data), &f); err != nil {
			t.Fatalf("SSE data %q: %v", ev.Data, err)
		}
		if ev.ID != first[i].ID || f.ID != ev.ID || ev.Event != first[i].Type {
			t.Fatalf("SSE event %d: id %q (data id %q) event %q, want %q %q", i, ev.ID, f.ID, ev.Event, first[i].ID, first[i].Type)
		}
	}
}

// Guarantee 2: transactions that commit in another order than they wrote are
// delivered in commit order, and neither is skipped. A log read by "ids
// after the last one seen" would skip the first writer here.
func TestCommitOrderBeatsWriteOrder(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db)
	c := dialWS(t, g, "")
	ctx := context.Background()

	first, err := db.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Rollback(ctx)
	if _, err := first.Exec(ctx, `INSERT INTO facts (amount, fact_date, description) VALUES (1, '2026-01-05', 'first writer')`); err != nil {
		t.Fatal(err)
	}
	second, err := db.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Rollback(ctx)
	if _, err := second.Exec(ctx, `INSERT INTO facts (amount, fact_date, description) VALUES (2, '2026-01-05', 'second writer')`); err != nil {
		t.Fatal(err)
	}
	if err := second.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// The second writer's event is out before the first commits.
	got := c.next(t, 10*time.Second)
	if d := got.field(t, "description"); d != "second writer" {
		t.Fatalf("first delivered: %v, want second writer", d)
	}
	if err := first.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got2 := c.next(t, 10*time.Second)
	if d := got2.field(t, "description"); d != "first writer" {
		t.Fatalf("then delivered: %v, want first writer", d)
	}

	// The race really happened: the first writer's log row has the smaller
	// write-order id, below the id already delivered.
	p1, _ := notify.ParsePosition(got2.ID)
	p2, _ := notify.ParsePosition(got.ID)
	if !(p1.ID < p2.ID && p1.Seq > p2.Seq) {
		t.Fatalf("positions %s (first writer) and %s (second): want smaller write id, larger commit seq", got2.ID, got.ID)
	}
}

// Updates, deletes and partition moves have the right names and payloads;
// a delete carries the row as it was (so filters can route it).
func TestChangeKinds(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db)
	c := dialWS(t, g, "")

	id := db.insertFact(t, 10, "2026-01-15")
	db.exec(t, `UPDATE facts SET amount = 11 WHERE id = $1`, id)
	db.exec(t, `UPDATE facts SET fact_date = '2026-02-20' WHERE id = $1`, id) // moves partition
	db.exec(t, `DELETE FROM facts WHERE id = $1`, id)
	db.exec(t, `INSERT INTO facts_2026_03 (amount, fact_date) VALUES (7, '2026-03-03')`) // names a partition
	db.exec(t, `INSERT INTO articles (name) VALUES ('food')`)
	db.exec(t, `UPDATE articles SET name = 'groceries'`)
	db.exec(t, `DELETE FROM articles`)
	db.exec(t, `UPDATE facts SET amount = 1 WHERE false`) // no row: no event

	want := []struct {
		typ  string
		data string
	}{
		{"budget_fact_created", fmt.Sprintf(`{"id":%d,"article_id":1,"amount":10,"fact_date":"2026-01-15","description":null,"record_type":"fact"}`, id)},
		{"budget_fact_updated", fmt.Sprintf(`{"id":%d,"article_id":1,"amount":11,"fact_date":"2026-01-15","description":null,"record_type":"fact"}`, id)},
		{"budget_fact_updated", fmt.Sprintf(`{"id":%d,"article_id":1,"amount":11,"fact_date":"2026-02-20","description":null,"record_type":"fact"}`, id)},
		{"budget_fact_deleted", fmt.Sprintf(`{"id":%d,"article_id":1,"amount":11,"fact_date":"2026-02-20","description":null,"record_type":"fact"}`, id)},
		{"budget_fact_created", ""},
		{"article_created", `{"id":1,"name":"food","type":"expense","is_active":true}`},
		{"article_updated", `{"id":1,"name":"groceries","type":"expense","is_active":true}`},
		{"article_deleted", `{"id":1,"name":"groceries","type":"expense","is_active":true}`},
	}
	got := c.take(t, len(want))
	for i, w := range want {
		if got[i].Type != w.typ {
			t.Fatalf("frame %d: type %s, want %s (all: %v)", i, got[i].Type, w.typ, got)
		}
		if w.data != "" && !jsonEqual(t, got[i].Data, w.data) {
			t.Fatalf("frame %d (%s): data %s, want %s", i, w.typ, got[i].Data, w.data)
		}
	}
	// Nothing else: the next frame is the next commit.
	db.exec(t, `INSERT INTO articles (name) VALUES ('marker')`)
	if f := c.next(t, 10*time.Second); f.Type != "article_created" {
		t.Fatalf("after the changes got %s %s, want the marker", f.Type, f.Data)
	}
}

func jsonEqual(t testing.TB, a json.RawMessage, b string) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("decode %s: %v", a, err)
	}
	if err := json.Unmarshal([]byte(b), &y); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}

// A statement far larger than a connection's queue reaches fast clients in
// full, without disconnecting them: they pull the burst from the window.
func TestBurstLargerThanQueue(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, "GATEWAY_SEND_QUEUE=4")
	ws := dialWS(t, g, "")
	sse := dialSSE(t, g, "", nil)

	const n = 2000
	db.exec(t, `INSERT INTO facts (amount, fact_date) SELECT i, '2026-01-02' FROM generate_series(0, $1 - 1) i`, n)
	db.exec(t, `INSERT INTO articles (name) VALUES ('after the burst')`)
	got := ws.take(t, n+1)
	for i, f := range got[:n] {
		if f.Type != "budget_fact_created" || f.field(t, "amount") != float64(i) {
			t.Fatalf("websocket frame %d: %s amount %v", i, f.Type, f.field(t, "amount"))
		}
	}
	if got[n].Type != "article_created" {
		t.Fatalf("websocket frame %d: %s, want the marker", n, got[n].Type)
	}
	evs := sse.take(t, n+1)
	for i, ev := range evs {
		if ev.ID != got[i].ID {
			t.Fatalf("SSE event %d: id %s, want %s", i, ev.ID, got[i].ID)
		}
	}
}
