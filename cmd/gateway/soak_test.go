package main

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestSoak holds thousands of connections under steady writes for a while
// and checks that memory and goroutines stay flat. It runs only when asked:
//
//	GATEWAY_SOAK=10m GATEWAY_SOAK_CONNS=3000 go test ./cmd/gateway -run TestSoak -v -timeout 30m
//
// Figures are logged every 30 s (heap in use, goroutines, deliveries) and
// the test fails if, after the first minute's warm-up, the heap grows by
// more than half or the goroutines by more than 5 %. Gateway and clients
// share the process; both are constant in number, so growth is a leak.
// On Linux it also fails if fewer than 90 % of the WebSockets have their
// reader parked: the clients send nothing but the keepalive pongs, and a
// reader that stays after one is a goroutine per connection come back.
func TestSoak(t *testing.T) {
	spec := os.Getenv("GATEWAY_SOAK")
	if spec == "" {
		t.Skip("set GATEWAY_SOAK=10m to run the soak test")
	}
	dur, err := time.ParseDuration(spec)
	if err != nil {
		t.Fatalf("GATEWAY_SOAK=%q: %v", spec, err)
	}
	conns := 2000
	if s := os.Getenv("GATEWAY_SOAK_CONNS"); s != "" {
		if _, err := fmt.Sscan(s, &conns); err != nil {
			t.Fatalf("GATEWAY_SOAK_CONNS=%q: %v", s, err)
		}
	}
	db := newTestDB(t)
	g := startGateway(t, db, "GATEWAY_MAX_CONNECTIONS=100000", "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS=100000",
		"GATEWAY_RETENTION_EVENTS=20000", "GATEWAY_PRUNE_INTERVAL=10s")

	// Light clients: a reader goroutine each, counting frames (the harness's
	// wsClient buffers far too much for thousands of them).
	var delivered atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range conns {
		conn, _, err := websocket.DefaultDialer.Dial(g.wsURL(""), nil)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { conn.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if _, _, err := conn.ReadMessage(); err != nil {
					select {
					case <-stop:
					default:
						t.Errorf("client read: %v", err)
					}
					return
				}
				delivered.Add(1)
			}
		}()
	}
	// Steady writes: 20 commits a second, until the end.
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
				db.insertFact(t, i, "2026-01-12")
			}
		}
	}()

	sample := func() (heap uint64, gr int) {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse, runtime.NumGoroutine()
	}
	end := time.Now().Add(dur)
	warm := time.Now().Add(min(time.Minute, dur/4))
	var baseHeap uint64
	var baseGR int
	tick := time.NewTicker(min(30*time.Second, dur/8))
	defer tick.Stop()
	for now := range tick.C {
		heap, gr := sample()
		parked, _ := scrapeMetrics(t, g.base+"/metrics").value("rtgw_ws_readers_parked")
		t.Logf("%s: %d connections, heap in use %.1f MiB, %d goroutines, %d deliveries, %.0f readers parked",
			now.Format(time.TimeOnly), conns, float64(heap)/(1<<20), gr, delivered.Load(), parked)
		if runtime.GOOS == "linux" && parked < float64(conns)*0.9 {
			t.Errorf("%.0f of %d idle WebSockets have their reader parked, want at least 90%%", parked, conns)
		}
		if baseHeap == 0 && now.After(warm) {
			baseHeap, baseGR = heap, gr
		}
		if baseHeap != 0 {
			if heap > baseHeap*3/2 {
				t.Errorf("heap grew from %d to %d bytes", baseHeap, heap)
			}
			if gr > baseGR+baseGR/20 {
				t.Errorf("goroutines grew from %d to %d", baseGR, gr)
			}
		}
		if now.After(end) {
			break
		}
	}
	close(stop)
	g.stop(t) // closes every socket, which ends the readers
	wg.Wait()
	if delivered.Load() == 0 {
		t.Fatal("nothing was delivered")
	}
}
