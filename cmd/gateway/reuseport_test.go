package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/budget-rt/gateway/config"
	"github.com/budget-rt/gateway/gateway"
)

// A restart without a gap (GATEWAY_REUSE_PORT): a new gateway starts on
// the address of one that is serving, becomes ready there, and when the old
// one stops, its client comes back with its last id to the new one and
// misses nothing, duplicates nothing. A gateway without the setting cannot
// take the address meanwhile.
func TestRestartWithoutGap(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	addr := freeAddr(t)
	old := startServingOn(t, db, addr, "GATEWAY_REUSE_PORT=true")
	old.waitReady(t) // only the old one listens yet
	c := dialWS(t, old, "")
	db.insertFact(t, 1, "2026-01-02")
	first := c.next(t, 10*time.Second)
	if first.Type != "budget_fact_created" {
		t.Fatalf("got %s, want budget_fact_created", first.Type)
	}

	// The new one: its readiness on a metrics listener of its own, since
	// the kernel may hand a /readyz on the shared address to either.
	metrics := freeAddr(t)
	next := startServingOn(t, db, addr, "GATEWAY_REUSE_PORT=true", "GATEWAY_METRICS_ADDR="+metrics)
	waitFor(t, 20*time.Second, "the new gateway to be ready", func() bool {
		resp, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(body), "\nrtgw_ready 1\n")
	})

	cfg, err := config.Load(db.environ("GATEWAY_ADDR=" + addr))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	err = serve(ctx, cfg, testLogger(), nil)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("a gateway without GATEWAY_REUSE_PORT on the shared address: serve returned %v, want address already in use", err)
	}

	old.cancel()
	if ce := c.waitClose(t, 10*time.Second); ce == nil || ce.Code != gateway.CloseGoingAway {
		t.Fatalf("the old gateway's client closed with %v, want %d", ce, gateway.CloseGoingAway)
	}
	select {
	case err := <-old.done:
		close(old.done)
		if err != nil {
			t.Fatalf("the old gateway's serve returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the old gateway did not stop within 10 s")
	}
	db.insertFact(t, 2, "2026-01-02") // while the client is away
	back := dialWS(t, next, "last_event_id="+first.ID)
	db.insertFact(t, 3, "2026-01-02")
	for _, want := range []float64{2, 3} {
		f := back.next(t, 10*time.Second)
		if f.Type != "budget_fact_created" || f.field(t, "amount") != want {
			t.Fatalf("after the restart got %s %s, want the fact of amount %v", f.Type, f.Data, want)
		}
	}
}

// startServingOn runs serve on addr, opening the address itself (as the
// command does), without waiting for readiness.
func startServingOn(t *testing.T, db *testDB, addr string, extra ...string) *gw {
	t.Helper()
	cfg, err := config.Load(db.environ(append(extra, "GATEWAY_ADDR="+addr)...))
	if err != nil {
		t.Fatalf("load config: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &gw{base: "http://" + addr, cancel: cancel, done: make(chan error, 1)}
	go func() { g.done <- serve(ctx, cfg, testLogger(), nil) }()
	t.Cleanup(func() { g.stop(t) })
	return g
}
