package notify_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/budget-rt/gateway/config"
	"github.com/budget-rt/gateway/notify"
	"github.com/budget-rt/gateway/notify/pgtest"
)

// An install of the previous commit path (the capture trigger registered each
// transaction in rtgw.tx and a trigger there stamped it) upgrades in place by
// running install.sql again, even while a writer of the old version is
// between its write and its commit: every transaction, before, during and
// after the upgrade, gets one seq in commit order and a strictly later commit
// time, and the commit trigger ends up on rtgw.event alone.
// testdata/install-before-stamp.sql is that previous install.sql, verbatim.
func TestUpgradeFromPreviousCommitPath(t *testing.T) {
	t.Parallel()
	old, err := os.ReadFile("testdata/install-before-stamp.sql")
	if err != nil {
		t.Fatal(err)
	}
	url := pgtest.NewDatabase(t)
	admin := connect(t, url)
	mustExec(t, admin, `CREATE TABLE facts (id serial PRIMARY KEY, amount int)`)
	mustExec(t, admin, string(old))
	mustExec(t, admin, `SELECT rtgw.track('facts', 'budget_fact')`)
	mustExec(t, admin, `INSERT INTO facts (amount) VALUES (1)`)

	// A writer of the old version, mid-transaction: its row in rtgw.tx
	// (seq NULL) and its queued commit trigger are the old path's.
	writer := connect(t, url)
	tx, err := writer.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(t.Context(), `INSERT INTO facts (amount) VALUES (2)`); err != nil {
		t.Fatal(err)
	}

	upgraded := make(chan error, 1)
	go func() {
		conn, err := pgx.Connect(context.Background(), url)
		if err != nil {
			upgraded <- err
			return
		}
		defer conn.Close(context.Background())
		upgraded <- notify.Install(context.Background(), conn, []config.Track{{Table: "facts", Prefix: "budget_fact"}})
	}()
	// The upgrade waits for the writer (it drops a trigger on a table the
	// writer has written): wait until it is blocked on a lock, then commit.
	waitForLockWait(t, admin)
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatalf("commit the old writer: %v", err)
	}
	select {
	case err := <-upgraded:
		if err != nil {
			t.Fatalf("upgrade: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("upgrade did not finish within a minute of the writer's commit")
	}

	mustExec(t, admin, `INSERT INTO facts (amount) VALUES (3)`)
	mustExec(t, admin, `BEGIN; INSERT INTO facts (amount) VALUES (4); INSERT INTO facts (amount) VALUES (5); COMMIT`)

	got := events(t, admin)
	want := []string{
		`budget_fact_created {"id": 1, "amount": 1}`,
		`budget_fact_created {"id": 2, "amount": 2}`,
		`budget_fact_created {"id": 3, "amount": 3}`,
		`budget_fact_created {"id": 4, "amount": 4}`,
		`budget_fact_created {"id": 5, "amount": 5}`,
	}
	if len(got) != len(want) {
		t.Fatalf("events = %q; want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("event %d = %q; want %q (all: %q)", i, got[i], want[i], got)
		}
	}

	var txs, stamped, ordered int
	if err := admin.QueryRow(t.Context(), `
SELECT count(*), count(seq),
       count(*) FILTER (WHERE committed_at > lag)
FROM (SELECT seq, committed_at, lag(committed_at) OVER (ORDER BY seq) AS lag FROM rtgw.tx) t`).Scan(&txs, &stamped, &ordered); err != nil {
		t.Fatal(err)
	}
	if txs != 4 || stamped != 4 || ordered != 3 {
		t.Fatalf("rtgw.tx: %d transactions, %d with a seq, %d later than the one before; want 4, 4, 3", txs, stamped, ordered)
	}

	var onTx, onEvent int
	if err := admin.QueryRow(t.Context(), `
SELECT count(*) FILTER (WHERE tgrelid = 'rtgw.tx'::regclass), count(*) FILTER (WHERE tgrelid = 'rtgw.event'::regclass)
FROM pg_trigger WHERE tgname = 'rtgw_stamp'`).Scan(&onTx, &onEvent); err != nil {
		t.Fatal(err)
	}
	if onTx != 0 || onEvent != 1 {
		t.Fatalf("rtgw_stamp triggers: %d on rtgw.tx, %d on rtgw.event; want 0 and 1", onTx, onEvent)
	}
}

// waitForLockWait returns once some session of the database waits for a
// lock: the readiness signal that the upgrade reached the writer's table.
func waitForLockWait(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		var waiting bool
		if err := conn.QueryRow(t.Context(), `
SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock')`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the upgrade never waited for the writer's lock")
}
