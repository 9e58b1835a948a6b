package main

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// The LISTEN connection dialled while the window loads: the follower's
// first connect gets it, later ones dial; an early dial that failed is
// made again; and a gateway that stops before following closes it.
func TestPredialedListenConnection(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	ctx := t.Context()
	dials := 0 // only the early dial's goroutine and connect, in turn, touch it
	dial := func(ctx context.Context) (*pgx.Conn, error) {
		dials++
		cc, err := pgx.ParseConfig(db.url)
		if err != nil {
			return nil, err
		}
		cc.RuntimeParams["application_name"] = "rtgw-predial-test"
		return pgx.ConnectConfig(ctx, cc)
	}
	open := func() int64 {
		return db.queryInt(t, `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'rtgw-predial-test'`)
	}

	p := predial(ctx, dial)
	first, err := p.connect(ctx)
	if err != nil || dials != 1 {
		t.Fatalf("first connect: %v after %d dials, want the early connection", err, dials)
	}
	second, err := p.connect(ctx)
	if err != nil || dials != 2 || second == first {
		t.Fatalf("second connect: %v after %d dials, want a new connection", err, dials)
	}
	_ = first.Close(ctx)
	_ = second.Close(ctx)

	failing := true
	p = predial(ctx, func(ctx context.Context) (*pgx.Conn, error) {
		if failing {
			failing = false
			return nil, errors.New("the database is not up yet")
		}
		return dial(ctx)
	})
	c, err := p.connect(ctx)
	if err != nil {
		t.Fatalf("connect after a failed early dial: %v, want a new dial", err)
	}
	_ = c.Close(ctx)

	p = predial(ctx, dial)
	p.discard()
	// A backend ends shortly after its client closes, with no signal to
	// wait on: poll.
	for deadline := time.Now().Add(10 * time.Second); open() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open 10 s after discard", open())
		}
	}
}
