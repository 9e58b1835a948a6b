package notify_test

import (
	"fmt"
	"log/slog"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/budget-rt/gateway/config"
	"github.com/budget-rt/gateway/notify"
	"github.com/budget-rt/gateway/notify/pgtest"
)

// TestLatestIsTheLogsTail: the window a starting gateway loads is exactly
// the newest n events in commit order, for every n, also where n cuts a
// transaction (its newest events are kept), with transactions of one and
// of many rows, on two tables, and committed out of their start order.
func TestLatestIsTheLogsTail(t *testing.T) {
	ctx := t.Context()
	url := pgtest.NewDatabase(t)
	admin := connect(t, url)
	mustExec(t, admin, `CREATE TABLE facts (id serial PRIMARY KEY, amount bigint NOT NULL)`)
	mustExec(t, admin, `CREATE TABLE articles (id serial PRIMARY KEY, name text NOT NULL)`)
	if err := notify.Install(ctx, admin, []config.Track{
		{Table: "facts", Prefix: "budget_fact"}, {Table: "articles", Prefix: "budget_article"},
	}); err != nil {
		t.Fatal(err)
	}
	// A transaction that starts first and commits last.
	late := connect(t, url)
	mustExec(t, late, `BEGIN`)
	mustExec(t, late, `INSERT INTO facts (amount) SELECT i FROM generate_series(1, 4) i`)
	for i, rows := range []int{1, 3, 1, 5, 2} {
		mustExec(t, admin, `BEGIN`)
		mustExec(t, admin, `INSERT INTO facts (amount) SELECT i FROM generate_series(1, $1) i`, rows)
		mustExec(t, admin, `INSERT INTO articles (name) VALUES ($1)`, fmt.Sprint("a", i))
		mustExec(t, admin, `COMMIT`)
	}
	mustExec(t, late, `COMMIT`)
	mustExec(t, admin, `INSERT INTO articles (name) VALUES ('last')`)

	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store := &notify.Store{Pool: pool, Logger: slog.New(slog.DiscardHandler)}
	var all []notify.Event
	_, head, _, err := store.Latest(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Replay(ctx, notify.Position{}, head, func(evs []notify.Event) error {
		all = append(all, evs...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(all) != 4+(1+3+1+5+2)+5+1 {
		t.Fatalf("the log holds %d events", len(all))
	}
	for n := 1; n <= len(all)+1; n++ {
		got, gotHead, complete, err := store.Latest(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		want := all[max(0, len(all)-n):]
		if !samePositions(got, want) || gotHead != head || complete != (n > len(all)) {
			t.Fatalf("Latest(%d): %d events from %v, head %s, complete %v; want %d from %v, head %s, complete %v",
				n, len(got), firstPos(got), gotHead, complete, len(want), firstPos(want), head, n > len(all))
		}
	}
}

func firstPos(evs []notify.Event) string {
	if len(evs) == 0 {
		return "none"
	}
	return evs[0].Pos.String()
}
