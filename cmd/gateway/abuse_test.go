package main

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/budget-rt/gateway/gateway"
)

// abuseAddr is the X-Forwarded-For of the i-th connection of a group: 20
// connections per address, the per-address limit of the test's gateway
// (the test's own loopback peer is a trusted proxy by default).
func abuseAddr(group, i int) string { return fmt.Sprintf("10.%d.%d.%d", group, i/20/250, i/20%250) }

// rawRequest opens a TCP connection with a small receive buffer and sends
// a GET of path from addr; with upgrade, a WebSocket handshake.
func rawRequest(g *gw, path, addr string, upgrade bool) (net.Conn, error) {
	conn, err := dialRawErr(g, 4096)
	if err != nil {
		return nil, err
	}
	req := "GET " + path + " HTTP/1.1\r\nHost: gateway\r\nX-Forwarded-For: " + addr + "\r\n"
	if upgrade {
		req += "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	}
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// rawStatus reads the status of the answer's header, and nothing more.
func rawStatus(conn net.Conn) (int, error) {
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 256), nil)
	if err != nil {
		return 0, err
	}
	return resp.StatusCode, nil
}

// inParallel runs fn(i) for i in [0, n) on 16 goroutines and returns the
// first error.
func inParallel(n int, fn func(i int) error) error {
	var next atomic.Int64
	var mu sync.Mutex
	var first error
	concurrently(16, func(int) {
		for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
			if err := fn(i); err != nil {
				mu.Lock()
				first = cmp.Or(first, err)
				mu.Unlock()
				return
			}
		}
	})
	return first
}

// The abuse test: thousands of connections that never read, never finish
// their headers, or upgrade and never send, plus garbage (binary frames,
// invalid JSON, oversized messages, floods), while one healthy client
// keeps receiving a steady stream of commits. It gets every event, in
// order; the gateway cuts every abuser it should, by the limit meant for
// it; its memory grows by a bounded amount per abusive connection and comes
// back once they are gone.
//
// Not parallel: it needs most of the process's 20,000 file descriptors
// (both ends of every connection are in this process) and measures the
// process's heap, so it runs alone.
func TestAbuse(t *testing.T) {
	db := newTestDB(t)
	const (
		neverReadN = 1500 // WebSockets that never read a frame
		muteN      = 300  // WebSockets that read but never send, not even a pong
		partialN   = 500  // connections that stop in the middle of their headers
		trickleN   = 250  // connections that trickle their headers a byte at a time
		silentN    = 250  // connections that send nothing at all
		sseN       = 150  // SSE streams never read
		pollN      = 150  // long-polls whose answer is never read
		junkN      = 30   // WebSockets per kind of garbage (five kinds)
		timeout    = 15 * time.Second
		perAddr    = 20
	)
	g := startGateway(t, db, "GATEWAY_MAX_CONNECTIONS=20000", fmt.Sprintf("GATEWAY_MAX_CONNECTIONS_PER_ADDRESS=%d", perAddr),
		"GATEWAY_MAX_SSE_CLIENTS=1000", "GATEWAY_MAX_POLLERS=1000",
		"GATEWAY_HEADER_TIMEOUT="+timeout.String(), "GATEWAY_WRITE_TIMEOUT="+timeout.String(), "GATEWAY_IDLE_TIMEOUT=5s",
		"GATEWAY_SEND_QUEUE=16", "GATEWAY_REPLAY_EVENTS=1000", "GATEWAY_SOCKET_SEND_BUFFER=16384",
		"GATEWAY_MESSAGE_RATE=1", "GATEWAY_MESSAGE_BURST=10")

	// The healthy client, and a writer committing about 50 events a second
	// for the whole test.
	healthy, err := dialLight(g, nil, nil)
	if err != nil {
		t.Fatalf("dial the healthy client: %v", err)
	}
	defer healthy.close()
	stopWriter := make(chan struct{})
	writerDone := make(chan error, 1)
	var written atomic.Int64
	go func() {
		desc := strings.Repeat("x", 500)
		for i := 0; ; i++ {
			select {
			case <-stopWriter:
				writerDone <- nil
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := db.pool.Exec(t.Context(), `INSERT INTO facts (amount, fact_date, description) VALUES ($1, '2026-01-08', $2)`, i, desc); err != nil {
				writerDone <- err
				return
			}
			written.Add(1)
		}
	}()
	waitHealthy := func(what string) {
		t.Helper()
		n := written.Load()
		waitFor(t, 30*time.Second, "the healthy client to have every event "+what, func() bool {
			ids, _, err := healthy.snapshot()
			if err != nil {
				t.Fatalf("healthy client: connection ended %s: %v", what, err)
			}
			return int64(len(ids)) >= n
		})
	}
	waitHealthy("before the abuse")
	heap0, stack0 := heapNow()
	goroutines0 := runtime.NumGoroutine()

	started := time.Now()
	since := func() time.Duration { return time.Since(started).Round(time.Millisecond) }
	var mu sync.Mutex
	var conns []net.Conn // every raw connection, closed at the end
	keep := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	upgrade := func(group, i int) (net.Conn, error) {
		c, err := rawRequest(g, "/api/v1/budget/ws", abuseAddr(group, i), true)
		if err != nil {
			return nil, err
		}
		keep(c)
		if code, err := rawStatus(c); code != http.StatusSwitchingProtocols {
			return nil, fmt.Errorf("websocket %d from %s: status %d %v", i, abuseAddr(group, i), code, err)
		}
		return c, nil
	}

	// Garbage: binary frames and invalid JSON are ignored (the socket
	// still answers a ping, and stays); an oversized message closes with
	// 1009; a flood of messages or of control pings closes with 1008.
	until := func(c *websocket.Conn, typ string) error { // reads until a frame of type typ, or the end
		_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
		defer c.SetReadDeadline(time.Time{})
		for {
			_, msg, err := c.ReadMessage()
			if err != nil {
				return err
			}
			if bytes.Contains(msg, []byte(`"type":"`+typ+`"`)) {
				return nil
			}
		}
	}
	closedWith := func(c *websocket.Conn, code int) error {
		err := until(c, "never")
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != code {
			return fmt.Errorf("ended with %v, want close %d", err, code)
		}
		return nil
	}
	kinds := []struct {
		name  string
		stays bool
		abuse func(c *websocket.Conn) error
	}{
		{"binary frames", true, func(c *websocket.Conn) error {
			for range 5 {
				if err := c.WriteMessage(websocket.BinaryMessage, []byte{0xff, 0, 1, 2}); err != nil {
					return err
				}
			}
			_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`))
			return until(c, "pong")
		}},
		{"invalid JSON", true, func(c *websocket.Conn) error {
			for _, m := range []string{`{"type":`, `not json`, "\x00\x01", `{"type":"ping"`, `[[[[[[[[`} {
				if err := c.WriteMessage(websocket.TextMessage, []byte(m)); err != nil {
					return err
				}
			}
			_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`))
			return until(c, "pong")
		}},
		{"oversized message", false, func(c *websocket.Conn) error {
			_ = c.WriteMessage(websocket.TextMessage, bytes.Repeat([]byte("a"), 64*1024))
			return closedWith(c, gateway.CloseTooBig)
		}},
		{"message flood", false, func(c *websocket.Conn) error {
			for range 100 {
				if c.WriteMessage(websocket.TextMessage, []byte(`{"type":"check_online"}`)) != nil {
					break // closed under it
				}
			}
			return closedWith(c, gateway.ClosePolicy)
		}},
		{"control ping flood", false, func(c *websocket.Conn) error {
			for range 100 {
				if c.WriteControl(websocket.PingMessage, nil, time.Now().Add(time.Second)) != nil {
					break
				}
			}
			return closedWith(c, gateway.ClosePolicy)
		}},
	}
	junkConns := make([]*websocket.Conn, len(kinds)*junkN)
	if err := inParallel(len(junkConns), func(i int) error {
		kind := kinds[i%len(kinds)]
		c, _, err := lightDial.Dial(g.wsURL(""), xff(abuseAddr(5, i)))
		if err != nil {
			return fmt.Errorf("dial a %s websocket: %w", kind.name, err)
		}
		junkConns[i] = c
		if err := kind.abuse(c); err != nil {
			return fmt.Errorf("%s websocket: %w", kind.name, err)
		}
		if kind.stays {
			go func() { // it reads on, as a healthy client would
				for {
					if _, _, err := c.ReadMessage(); err != nil {
						return
					}
				}
			}()
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d garbage websockets done after %v", len(junkConns), since())

	// WebSockets that never read, opened late so that most are still open
	// when memory is measured (once the events fill their sockets, the write
	// timeout cuts them); SSE streams and long-polls likewise, below.
	neverRead := make([]net.Conn, neverReadN)
	if err := inParallel(neverReadN, func(i int) error {
		c, err := upgrade(1, i)
		neverRead[i] = c
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d never-reading websockets open after %v", neverReadN, since())

	// WebSockets that read everything and never send, not even a pong
	// (melody closes those 60 s after their last pong); their addresses are
	// full, so one more from any of them is refused.
	if err := inParallel(muteN, func(i int) error {
		c, err := upgrade(2, i)
		if err == nil {
			go func() { _, _ = io.Copy(io.Discard, c) }()
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < muteN; i += 5 * perAddr {
		if code := protoDialRefused(t, g, "", xff(abuseAddr(2, i))); code != http.StatusForbidden {
			t.Fatalf("websocket %d from %s: %d, want 403", perAddr+1, abuseAddr(2, i), code)
		}
	}
	t.Logf("%d mute websockets open after %v", muteN, since())

	// SSE streams and long-polls never read.
	streams := make([]net.Conn, sseN)
	if err := inParallel(sseN, func(i int) error {
		c, err := rawRequest(g, "/api/v1/budget/events", abuseAddr(3, i), false)
		if err != nil {
			return err
		}
		keep(c)
		if code, err := rawStatus(c); code != http.StatusOK {
			return fmt.Errorf("SSE stream %d: status %d %v", i, code, err)
		}
		streams[i] = c
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	polls := make([]net.Conn, pollN)
	if err := inParallel(pollN, func(i int) error {
		c, err := rawRequest(g, "/api/v1/budget/poll?since=0&timeout=30", abuseAddr(4, i), false)
		if err == nil {
			keep(c)
			polls[i] = c
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d SSE streams and %d long-polls open after %v", sseN, pollN, since())

	// Slowloris, opened last and quickly, so that they are open when memory
	// is measured: partial headers, headers a byte at a time, nothing.
	partial := "GET /api/v1/budget/ws HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nX-Pad: "
	slow := make([]net.Conn, partialN+trickleN+silentN)
	slowAt := time.Now()
	if err := inParallel(len(slow), func(i int) error {
		c, err := dialRawErr(g, 4096)
		if err != nil {
			return err
		}
		keep(c)
		slow[i] = c
		if i < partialN+trickleN {
			_, err = io.WriteString(c, partial)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	stopTrickle := make(chan struct{})
	trickleDone := make(chan struct{})
	go func(trickle []net.Conn) {
		defer close(trickleDone)
		for {
			select {
			case <-stopTrickle:
				return
			case <-time.After(200 * time.Millisecond):
			}
			for _, c := range trickle {
				_ = c.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = c.Write([]byte("y"))
			}
		}
	}(slow[partialN : partialN+trickleN])
	var stopOnce sync.Once
	endTrickle := func() { stopOnce.Do(func() { close(stopTrickle); <-trickleDone }) }
	defer endTrickle()
	t.Logf("%d slowloris connections open after %v", len(slow), since())

	heap1, stack1 := heapNow()
	goroutines1 := runtime.NumGoroutine()
	abusive := muteN + len(junkConns) + neverReadN + sseN + pollN + len(slow)
	growth := (heap1 + stack1) - min(heap1+stack1, heap0+stack0)
	perConn := growth / uint64(abusive)
	// On a slow machine the write timeout may have cut never-readers
	// before this point; the log says how many the gateway still held.
	ws, _ := protoWSStatus(t, g, protoNoAuth)["total_connections"].(float64)
	t.Logf("%d abusive connections open, %v after the slowloris ones began; the gateway held %v websockets, %v SSE streams, %v long-polls",
		abusive, time.Since(slowAt).Round(time.Millisecond), ws-1, limitReady(t, g, "streams"), limitReady(t, g, "polls"))
	t.Logf("heap %s -> %s, stacks %s -> %s, goroutines %d -> %d: %d bytes per abusive connection, both ends",
		mib(heap0), mib(heap1), mib(stack0), mib(stack1), goroutines0, goroutines1, perConn)
	if perConn > 64*1024 {
		t.Errorf("memory grew by %d bytes per abusive connection, want at most 64 KiB", perConn)
	}

	// closedByGateway reads each connection to its end, which must come
	// before deadline: the gateway closed it.
	closedByGateway := func(what string, cs []net.Conn, deadline time.Time) {
		t.Helper()
		if err := inParallel(len(cs), func(i int) error {
			_ = cs[i].SetReadDeadline(deadline)
			_, err := io.Copy(io.Discard, cs[i])
			if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
				return fmt.Errorf("%s %d still open %v after the abuse began", what, i, since())
			}
			return nil // the end, or a reset: closed by the gateway
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("every %s closed by the gateway %v after the abuse began", what, since())
	}
	// The gateway cuts every slowloris connection at the header timeout,
	closedByGateway("slowloris connection", slow, slowAt.Add(timeout+60*time.Second))
	endTrickle()
	// and every stalled reader (WebSocket, SSE, long-poll) once its socket
	// is full: by the flow control (4008) or the write timeout; a long-poll
	// whose answer fitted in the socket buffers, by the idle timeout. The
	// gateway's counts say when (the mute websockets, opened after the
	// never-reading ones, are all still there); only then does the test read
	// them, as reading earlier would make a stalled client a healthy one.
	waitFor(t, timeout+60*time.Second, "the gateway to release the never-reading clients", func() bool {
		n, _ := protoWSStatus(t, g, protoNoAuth)["total_connections"].(float64)
		return n <= float64(muteN+2*junkN+1) && limitReady(t, g, "streams") == 0 && limitReady(t, g, "polls") == 0
	})
	deadline := time.Now().Add(30 * time.Second)
	closedByGateway("never-reading websocket", neverRead, deadline)
	closedByGateway("never-read SSE stream", streams, deadline)
	closedByGateway("never-read long-poll", polls, deadline)

	// The rest go away; what is left is the healthy client.
	mu.Lock()
	for _, c := range conns {
		c.Close()
	}
	conns, neverRead, slow, streams, polls = nil, nil, nil, nil, nil
	mu.Unlock()
	for _, c := range junkConns {
		c.Close()
	}
	junkConns = nil
	waitFor(t, 30*time.Second, "every abusive connection to be released", func() bool {
		return protoWSStatus(t, g, protoNoAuth)["total_connections"] == 1.0
	})
	waitHealthy("after the abuse")

	// Goroutines end as their connections do; a few stragglers (timers,
	// the HTTP client's) are allowed.
	waitFor(t, 30*time.Second, "the goroutines to end", func() bool { return runtime.NumGoroutine() <= goroutines0+50 })
	heap2, stack2 := heapNow()
	t.Logf("heap after: %s (before %s, during %s); stacks after %s (before %s, during %s); goroutines %d",
		mib(heap2), mib(heap0), mib(heap1), mib(stack2), mib(stack0), mib(stack1), runtime.NumGoroutine())
	if after, before := heap2+stack2, heap0+stack0; after > before+max(16<<20, growth/4) {
		t.Errorf("memory did not come back: %s after, %s before", mib(after), mib(before))
	}

	// The healthy client got every event, in commit order, nothing lost.
	close(stopWriter)
	if err := <-writerDone; err != nil {
		t.Fatalf("writer: %v", err)
	}
	waitHealthy("at the end")
	var want []string
	for _, e := range faultLog(t, db) {
		want = append(want, e.ID)
	}
	got, lat, err := healthy.snapshot()
	if err != nil {
		t.Fatalf("healthy client: connection ended: %v", err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("healthy client: %s", chaosDiff(got, want))
	}
	t.Logf("the healthy client got all %d events in order; delivery latency p50 %v p99 %v max %v", len(got),
		quantile(lat, 0.5).Round(100*time.Microsecond), quantile(lat, 0.99).Round(100*time.Microsecond), slices.Max(lat).Round(time.Millisecond))
}
