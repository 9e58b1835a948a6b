package main

import (
	"testing"
	"time"
)

// The event log is pruned by age and size, by several replicas at once,
// always as a prefix; an id pruned from the log is expired on every replica,
// even one whose memory window still held it.
func TestRetentionPrunesAndReplicasAgree(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	prune := []string{"GATEWAY_RETENTION_EVENTS=5", "GATEWAY_PRUNE_INTERVAL=50ms", "GATEWAY_POLL_INTERVAL=50ms"}
	a := startGateway(t, db, prune...)
	b := startGateway(t, db, prune...)
	c := dialWS(t, a, "")

	const n = 40
	var ids []string
	for i := range n {
		db.insertFact(t, i, "2026-01-09")
		ids = append(ids, c.next(t, 10*time.Second).ID)
	}
	waitFor(t, 10*time.Second, "the log to be pruned to 5 events", func() bool {
		return db.queryInt(t, `SELECT count(*) FROM rtgw.event`) <= 5
	})
	// What is left is the newest transactions, with no hole.
	if holes := db.queryInt(t, `SELECT (max(seq) - min(seq) + 1) - count(*) FROM rtgw.tx`); holes != 0 {
		t.Fatalf("%d transactions missing inside the kept log", holes)
	}
	kept := db.queryInt(t, `SELECT count(*) FROM rtgw.event`)
	oldestKept := ids[n-int(kept)]

	for _, g := range []*gw{a, b} {
		// Both replicas' windows held the first id; after pruning, both say
		// expired (the window follows the log within a poll interval).
		waitFor(t, 10*time.Second, "the window to drop pruned events", func() bool {
			r := dialWS(t, g, "last_event_id="+ids[0])
			defer r.conn.Close()
			f := r.next(t, 10*time.Second)
			return f.Type == "reset" && f.field(t, "reason") == "expired"
		})
		// An id still in the log replays exactly what follows it.
		r := dialWS(t, g, "last_event_id="+oldestKept)
		got := r.take(t, int(kept)-1)
		for i, f := range got {
			if f.ID != ids[n-int(kept)+1+i] {
				t.Fatalf("replay from %s: frame %d is %s, want %s", oldestKept, i, f.ID, ids[n-int(kept)+1+i])
			}
		}
	}
}
