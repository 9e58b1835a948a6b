package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// garbage is what something other than the gateway's triggers may put on
// its channel and in its log: payloads that are not a commit sequence, and
// rows the gateway cannot use, each written in a transaction of its own
// that gets a commit sequence and rings the doorbell like a real one.
var garbage = []string{
	`NOTIFY rtgw`,
	`SELECT pg_notify('rtgw', 'not a number')`,
	`SELECT pg_notify('rtgw', '-1')`,
	`SELECT pg_notify('rtgw', repeat('7', 7999))`,
	`SELECT pg_notify('rtgw', '9223372036854775807')`,
	`SELECT pg_notify('rtgw', 'hb nothex 1')`,
	badLogRow("public.facts", "I", "bad type", `{"id": 1, "amount": -1}`),
	badLogRow("public.facts", "I", "budget_fact_created", `[{"id": 1, "amount": -1}]`),
	badLogRow("public.facts", "I", "budget_fact_created", `"amount -1"`),
	badLogRow("public.facts", "X", "budget_fact_created", `{"id": 1, "amount": -1}`),
	badLogRow("no (such", "I", "budget_fact_created", `{"id": 1, "amount": -1}`),
	badLogRow("public.facts", "I", "x\nevent: budget_fact_created\ndata: {}", `{"id": 1, "amount": -1}`),
}

func badLogRow(tbl, op, typ, data string) string {
	q := func(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
	return fmt.Sprintf(`BEGIN;
INSERT INTO rtgw.tx (xid) VALUES (pg_current_xact_id()) ON CONFLICT (xid) DO NOTHING;
INSERT INTO rtgw.event (xid, tbl, op, type, data) VALUES (pg_current_xact_id(), %s, %s, %s, %s::jsonb);
COMMIT`, q(tbl), q(op), q(typ), q(data))
}

// While garbage is NOTIFYed on the gateway's channel and bad rows are
// written into its log, WebSocket and SSE clients keep receiving every
// committed row, once, in order, and nothing else; with the safety poll an
// hour away, the doorbell is what brings them. A client resuming from the
// first event, older than the replay window, gets the rest from the log,
// bad rows skipped.
func TestBadInputDoesNotStopTheStream(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	db.exec(t, `ALTER TABLE rtgw.event DROP CONSTRAINT event_op_check`) // lets a bad op in
	g := startGateway(t, db, "GATEWAY_POLL_INTERVAL=1h", "GATEWAY_REPLAY_EVENTS=10")
	ws := dialWS(t, g, "")
	sse := dialSSE(t, g, "", nil)

	const rows = 120
	var (
		done sync.WaitGroup
		stop atomic.Bool
		bad  atomic.Int64
	)
	done.Add(1)
	go func() { // more garbage, concurrently, until the rows are in
		defer done.Done()
		for i := 0; !stop.Load(); i++ {
			if _, err := db.pool.Exec(context.Background(), garbage[i%len(garbage)]); err != nil {
				t.Errorf("garbage %q: %v", garbage[i%len(garbage)], err)
				return
			}
			bad.Add(1)
		}
	}()
	for i := range rows {
		db.exec(t, `INSERT INTO facts (amount, fact_date) VALUES ($1, '2026-01-10')`, i)
		db.exec(t, garbage[i%len(garbage)]) // and some between every two rows
		bad.Add(1)
	}
	stop.Store(true)
	done.Wait()
	t.Logf("%d pieces of garbage written among %d rows", bad.Load(), rows)

	wsGot := ws.take(t, rows)
	faultCheckAmounts(t, wsGot, 0)
	faultCheckAmounts(t, faultSSEFrames(t, sse.take(t, rows)), 0)

	// Garbage after the last row changes nothing: the next row is next.
	for _, sql := range garbage {
		db.exec(t, sql)
	}
	db.exec(t, `INSERT INTO facts (amount, fact_date) VALUES ($1, '2026-01-10')`, rows)
	faultCheckAmounts(t, ws.take(t, 1), rows)
	faultCheckAmounts(t, faultSSEFrames(t, sse.take(t, 1)), rows)

	// Resume from the first row: beyond the window of 10, so from the log.
	again := dialWS(t, g, "last_event_id="+wsGot[0].ID)
	faultCheckAmounts(t, again.take(t, rows), 1)
	g.waitReady(t)
}
