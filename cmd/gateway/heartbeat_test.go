package main

import (
	"syscall"
	"testing"
	"time"
)

// A LISTEN connection that goes silent without closing (here: its backend
// is frozen with SIGSTOP, as a cut network would leave it) is noticed by the
// heartbeat and replaced, and nothing committed meanwhile is lost.
func TestSilentListenConnectionIsReplaced(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, "GATEWAY_POLL_INTERVAL=100ms")
	c := dialWS(t, g, "")

	listenPID := func() int64 {
		return db.queryInt(t, `SELECT coalesce(max(pid), 0) FROM pg_stat_activity
WHERE application_name = 'rtgw-listen' AND datname = current_database() AND query ILIKE 'listen%'`)
	}
	old := listenPID()
	if old == 0 {
		t.Fatal("no LISTEN backend")
	}
	if err := syscall.Kill(int(old), syscall.SIGSTOP); err != nil {
		t.Fatalf("stop backend %d: %v", old, err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(int(old), syscall.SIGCONT)
		}
	}
	defer resume()
	start := time.Now()

	db.insertFact(t, 1, "2026-01-20") // committed while the LISTEN connection hears nothing
	waitFor(t, 15*time.Second, "a new LISTEN backend", func() bool {
		p := listenPID()
		return p != 0 && p != old
	})
	t.Logf("silent LISTEN connection replaced after %s", time.Since(start).Round(time.Millisecond))
	resume()
	db.insertFact(t, 2, "2026-01-20")
	for want := 1.0; want <= 2; want++ {
		f := c.next(t, 10*time.Second)
		if f.Type != "budget_fact_created" || f.field(t, "amount") != want {
			t.Fatalf("got %s amount %v, want budget_fact_created amount %v", f.Type, f.field(t, "amount"), want)
		}
	}
	g.waitReady(t)
}
