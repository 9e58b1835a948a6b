package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/budget-rt/gateway/gateway"
)

// limitHTTP keeps no idle connections: every request is its own, so a
// refusal never depends on a pooled connection's state.
var limitHTTP = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// limitGet sends GET u with header h. The caller closes the body.
func limitGet(t testing.TB, u string, h http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := limitHTTP.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	return resp
}

// limitRefused checks that GET u with h is refused with code, Retry-After
// and a JSON detail containing want.
func limitRefused(t testing.TB, u string, h http.Header, code int, want string) {
	t.Helper()
	resp := limitGet(t, u, h)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != code {
		t.Fatalf("GET %s (%v): %d %s, want %d", u, h, resp.StatusCode, b, code)
	}
	if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
		if ra := resp.Header.Get("Retry-After"); ra != "5" {
			t.Errorf("GET %s: %d with Retry-After %q, want 5", u, code, ra)
		}
	}
	var body struct{ Detail string }
	if err := json.Unmarshal(b, &body); err != nil || !strings.Contains(body.Detail, want) {
		t.Errorf("GET %s: body %s, want a JSON detail containing %q", u, b, want)
	}
}

// limitStream opens an SSE stream with h, which must be accepted; closing
// the returned function ends it.
func limitStream(t testing.TB, g *gw, query string, h http.Header) func() {
	t.Helper()
	u := g.base + "/api/v1/budget/events"
	if query != "" {
		u += "?" + query
	}
	resp := limitGet(t, u, h)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("GET %s (%v): %d %s, want 200", u, h, resp.StatusCode, b)
	}
	var once sync.Once
	done := func() { once.Do(func() { resp.Body.Close() }) }
	t.Cleanup(done)
	return done
}

func xff(addr string) http.Header { return http.Header{"X-Forwarded-For": {addr}} }

// limitReady returns a counter of /readyz: clients, streams or polls.
func limitReady(t testing.TB, g *gw, key string) float64 {
	t.Helper()
	code, body, err := getJSON(g.base + "/readyz")
	if err != nil || code != http.StatusOK {
		t.Fatalf("/readyz: %d %v %v", code, body, err)
	}
	n, _ := body[key].(float64)
	return n
}

func limitWaitReady(t testing.TB, g *gw, key string, want float64) {
	t.Helper()
	waitFor(t, 20*time.Second, fmt.Sprintf("/readyz %s = %v", key, want), func() bool { return limitReady(t, g, key) == want })
}

// dialRaw opens a TCP connection to the gateway. rcvbuf > 0 sets its kernel
// receive buffer (before connecting, so the window is small from the start).
func dialRaw(t testing.TB, g *gw, rcvbuf int) net.Conn {
	t.Helper()
	conn, err := dialRawErr(g, rcvbuf)
	if err != nil {
		t.Fatalf("dial %s: %v", g.base, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func dialRawErr(g *gw, rcvbuf int) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if rcvbuf > 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	return d.DialContext(context.Background(), "tcp", strings.TrimPrefix(g.base, "http://"))
}

// A message over GATEWAY_MAX_MESSAGE_BYTES closes the socket with 1009;
// messages faster than GATEWAY_MESSAGE_RATE (after GATEWAY_MESSAGE_BURST)
// close it with 1008, whatever they are: pings, junk, binary frames or
// control pings. Clients beside them notice nothing.
func TestLimitMessageSizeAndRate(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	// 0.01 messages a second: no token comes back during the test, so the
	// sixth message is always over.
	g := startGateway(t, db, "GATEWAY_MAX_MESSAGE_BYTES=1000", "GATEWAY_MESSAGE_RATE=0.01", "GATEWAY_MESSAGE_BURST=5")
	bystander := dialWS(t, g, "")

	pad := func(n int) []byte {
		b := []byte(`{"type":"ping","pad":"`)
		b = append(b, bytes.Repeat([]byte("x"), n-len(b)-2)...)
		return append(b, `"}`...)
	}
	// Exactly at the limit: answered.
	c := dialWS(t, g, "")
	if err := c.conn.WriteMessage(websocket.TextMessage, pad(1000)); err != nil {
		t.Fatal(err)
	}
	if f := c.next(t, 5*time.Second); f.Type != "pong" {
		t.Fatalf("answer to a 1000-byte ping: %s, want pong", f.Type)
	}
	// One byte over, as text or binary: 1009.
	for _, typ := range []int{websocket.TextMessage, websocket.BinaryMessage} {
		c := dialWS(t, g, "")
		if err := c.conn.WriteMessage(typ, pad(1001)); err != nil {
			t.Fatal(err)
		}
		if ce := c.waitClose(t, 5*time.Second); ce == nil || ce.Code != gateway.CloseTooBig {
			t.Fatalf("after a 1001-byte message (type %d): close %v, want %d", typ, ce, gateway.CloseTooBig)
		}
	}

	// Five pings are answered; the sixth closes with 1008 and the reason.
	// (The close frame goes out at once, ahead of anything still queued, so
	// the test reads the pongs before it sends the sixth.)
	r := dialWS(t, g, "")
	for i := range 5 {
		if err := r.conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`)); err != nil {
			t.Fatalf("write ping %d: %v", i+1, err)
		}
	}
	for i := range 5 {
		if f := r.next(t, 5*time.Second); f.Type != "pong" {
			t.Fatalf("answer %d: %s, want pong", i+1, f.Type)
		}
	}
	if err := r.conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	if ce := r.waitClose(t, 5*time.Second); ce == nil || ce.Code != gateway.ClosePolicy || ce.Text != gateway.ReasonRate {
		t.Fatalf("after the sixth ping: close %v, want %d %q", ce, gateway.ClosePolicy, gateway.ReasonRate)
	}

	// Junk counts too: five ignored messages use the burst up.
	j := dialWS(t, g, "")
	for _, m := range []struct {
		typ  int
		data string
	}{{websocket.BinaryMessage, "\xff\x00"}, {websocket.TextMessage, "not json"}, {websocket.BinaryMessage, `{"type":"ping"}`},
		{websocket.TextMessage, `{"type":"subscribe"}`}, {websocket.TextMessage, `[]`}, {websocket.TextMessage, `{"type":"ping"}`}} {
		if err := j.conn.WriteMessage(m.typ, []byte(m.data)); err != nil {
			t.Fatal(err)
		}
	}
	if ce := j.waitClose(t, 5*time.Second); ce == nil || ce.Code != gateway.ClosePolicy {
		t.Fatalf("after five junk messages and a ping: close %v, want %d", ce, gateway.ClosePolicy)
	}
	if len(j.frames) != 0 {
		t.Fatalf("the junk sender got %d frames (%v), want none: its ping was over the rate", len(j.frames), (<-j.frames).Type)
	}

	// Control pings: each costs a pong, so they count as well. This client
	// reads on its own, to count the pongs.
	conn, _, err := websocket.DefaultDialer.Dial(g.wsURL(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pongs := 0
	conn.SetPongHandler(func(string) error { pongs++; return nil })
	for i := range 6 {
		if err := conn.WriteControl(websocket.PingMessage, []byte{byte(i)}, time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var readErr error
	for readErr == nil {
		_, _, readErr = conn.ReadMessage()
	}
	if ce := (*websocket.CloseError)(nil); !errors.As(readErr, &ce) || ce.Code != gateway.ClosePolicy || pongs != 5 {
		t.Fatalf("after six control pings: %v and %d pongs, want close %d after 5 pongs", readErr, pongs, gateway.ClosePolicy)
	}

	// The bystander saw none of it.
	id := db.insertFact(t, 1, "2026-01-09")
	if f := bystander.next(t, 10*time.Second); f.Type != "budget_fact_created" || f.field(t, "id") != float64(id) {
		t.Fatalf("bystander: %s %s, want fact %d", f.Type, f.Data, id)
	}
	bystander.protoPingPong(t)
}

// The default rate leaves the app's client far more room than it uses: a
// burst of 20 messages (ten times what a reconnect sends) is answered in
// full, and the socket stays open.
func TestLimitDefaultRateIsGenerous(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db)
	c := dialWS(t, g, "")
	for i := range 20 {
		m := `{"type":"ping"}`
		if i%2 == 1 {
			m = `{"type":"check_online"}`
		}
		if err := c.conn.WriteMessage(websocket.TextMessage, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 {
		want := "pong"
		if i%2 == 1 {
			want = "online_status"
		}
		if f := c.next(t, 5*time.Second); f.Type != want {
			t.Fatalf("answer %d: %s, want %s", i+1, f.Type, want)
		}
	}
	id := db.insertFact(t, 1, "2026-01-09")
	if f := c.next(t, 10*time.Second); f.Type != "budget_fact_created" || f.field(t, "id") != float64(id) {
		t.Fatalf("after the burst: %s %s, want fact %d", f.Type, f.Data, id)
	}
}

// GATEWAY_MAX_CONNECTIONS_PER_ADDRESS counts WebSockets, SSE streams and
// waiting long-polls of one client address together. The address is the
// one a trusted proxy (loopback by default) names in X-Forwarded-For, else
// X-Real-IP, else the TCP peer's; an IPv6 address counts by its /64.
func TestLimitConnectionsPerAddress(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS=2")
	events := g.base + "/api/v1/budget/events"
	poll := g.base + "/api/v1/budget/poll?timeout=0"
	wsRefused := func(h http.Header) {
		t.Helper()
		if code := protoDialRefused(t, g, "", h); code != http.StatusForbidden {
			t.Fatalf("WebSocket with %v: %d, want 403", h, code)
		}
	}

	a1 := dialWSHeader(t, g, "", xff("203.0.113.1"))
	dialWSHeader(t, g, "", xff("203.0.113.1"))
	wsRefused(xff("203.0.113.1"))
	limitRefused(t, events, xff("203.0.113.1"), http.StatusTooManyRequests, "too many connections from this address")
	limitRefused(t, poll, xff("203.0.113.1"), http.StatusTooManyRequests, "too many connections from this address")
	// The proxy's own address on the right is skipped; X-Real-IP counts
	// when there is no X-Forwarded-For.
	wsRefused(xff("203.0.113.1, 127.0.0.5"))
	wsRefused(http.Header{"X-Real-Ip": {"203.0.113.1"}})
	// Another address is not affected, nor is the loopback peer itself.
	dialWSHeader(t, g, "", xff("203.0.113.2"))
	dialWS(t, g, "")
	// A client can write anything left of the proxy's entry; only the
	// rightmost untrusted one counts, so this is 203.0.113.3, not .1.
	dialWSHeader(t, g, "", xff("203.0.113.1, 203.0.113.3"))

	// IPv6: one /64 is one subscriber.
	dialWSHeader(t, g, "", xff("2001:db8:1:2::1"))
	dialWSHeader(t, g, "", xff("2001:db8:1:2::2"))
	wsRefused(xff("2001:db8:1:2:ffff::9"))
	dialWSHeader(t, g, "", xff("2001:db8:1:3::1"))

	// A closed socket frees its place, for any transport.
	a1.protoCloseNormally()
	waitFor(t, 10*time.Second, "the closed socket's place", func() bool {
		resp := limitGet(t, events, xff("203.0.113.1"))
		if resp.StatusCode == http.StatusOK {
			t.Cleanup(func() { resp.Body.Close() })
			return true
		}
		resp.Body.Close()
		return false
	})
	limitRefused(t, poll, xff("203.0.113.1"), http.StatusTooManyRequests, "too many connections from this address")

	// A long-poll holds its place while it waits.
	const addr = "198.51.100.4"
	type answer struct {
		code int
		err  error
	}
	answers := make(chan answer, 2)
	for range 2 {
		go func() {
			resp, err := limitHTTP.Do(func() *http.Request {
				req, _ := http.NewRequest(http.MethodGet, g.base+"/api/v1/budget/poll?timeout=30", nil)
				req.Header.Set("X-Forwarded-For", addr)
				return req
			}())
			if err != nil {
				answers <- answer{err: err}
				return
			}
			resp.Body.Close()
			answers <- answer{code: resp.StatusCode}
		}()
	}
	limitWaitReady(t, g, "polls", 2)
	wsRefused(xff(addr))
	limitRefused(t, poll, xff(addr), http.StatusTooManyRequests, "too many connections from this address")
	db.insertFact(t, 1, "2026-01-10") // answers both
	for range 2 {
		if a := <-answers; a.err != nil || a.code != http.StatusOK {
			t.Fatalf("waiting poll: %d %v, want 200", a.code, a.err)
		}
	}
	limitWaitReady(t, g, "polls", 0)
	dialWSHeader(t, g, "", xff(addr))

	// From a peer that is not a trusted proxy, the headers mean nothing:
	// every request here comes from 127.0.0.1.
	distrust := startGateway(t, db, "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS=2", "GATEWAY_TRUSTED_PROXIES=none")
	dialWSHeader(t, distrust, "", xff("203.0.113.7"))
	dialWSHeader(t, distrust, "", xff("203.0.113.8"))
	if code := protoDialRefused(t, distrust, "", xff("203.0.113.9")); code != http.StatusForbidden {
		t.Fatalf("untrusted peer with a third X-Forwarded-For: %d, want 403", code)
	}
	limitRefused(t, distrust.base+"/api/v1/budget/events", http.Header{"X-Real-Ip": {"192.0.2.1"}},
		http.StatusTooManyRequests, "too many connections from this address")
}

// GATEWAY_MAX_SSE_CLIENTS and GATEWAY_MAX_POLLERS bound the streams and
// the waiting long-polls of the whole gateway: 503 with Retry-After beyond.
func TestLimitSSEAndPollCapacity(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, "GATEWAY_MAX_SSE_CLIENTS=2", "GATEWAY_MAX_POLLERS=1")
	events := g.base + "/api/v1/budget/events"

	first := limitStream(t, g, "", nil)
	limitStream(t, g, "", xff("203.0.113.1"))
	limitRefused(t, events, xff("203.0.113.2"), http.StatusServiceUnavailable, "too many event streams")
	first()
	limitWaitReady(t, g, "streams", 1)
	limitStream(t, g, "", xff("203.0.113.2"))

	waiting := make(chan int, 1)
	go func() {
		resp, err := limitHTTP.Get(g.base + "/api/v1/budget/poll?timeout=30")
		if err != nil {
			waiting <- 0
			return
		}
		resp.Body.Close()
		waiting <- resp.StatusCode
	}()
	limitWaitReady(t, g, "polls", 1)
	limitRefused(t, g.base+"/api/v1/budget/poll?timeout=0", xff("203.0.113.3"), http.StatusServiceUnavailable, "too many long-polls")
	db.insertFact(t, 1, "2026-01-11")
	if code := <-waiting; code != http.StatusOK {
		t.Fatalf("waiting poll answered %d, want 200", code)
	}
	limitWaitReady(t, g, "polls", 0)
	resp := limitGet(t, g.base+"/api/v1/budget/poll?timeout=0", nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("poll after the slot was freed: %d", resp.StatusCode)
	}
}

// ?types= is bounded in names (GATEWAY_MAX_TYPES) and bytes
// (GATEWAY_MAX_TYPES_BYTES): 400 with a message that says which.
func TestLimitTypesFilter(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, "GATEWAY_MAX_TYPES=3", "GATEWAY_MAX_TYPES_BYTES=60")
	events := g.base + "/api/v1/budget/events?types="
	limitStream(t, g, "types=a,b,c", nil)
	limitStream(t, g, "types=a,a,a,a,b,,c,", nil) // three distinct names
	limitRefused(t, events+"a,b,c,d", nil, http.StatusBadRequest, "types lists 4 event types, at most 3 are allowed")
	limitStream(t, g, "types="+strings.Repeat("x", 60), nil)
	limitRefused(t, events+strings.Repeat("x", 61), nil, http.StatusBadRequest, "types is 61 bytes long, at most 60 are allowed")
	limitWaitReady(t, g, "streams", 3) // refusals hold nothing
}

// Slowloris: a connection that does not finish its headers within
// GATEWAY_HEADER_TIMEOUT is closed, however it trickles; headers over
// GATEWAY_MAX_HEADER_BYTES get 431; a keep-alive connection is closed after
// GATEWAY_IDLE_TIMEOUT; a trickled /ws/disconnect body is cut too.
func TestLimitHTTPTimeouts(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, "GATEWAY_HEADER_TIMEOUT=1s", "GATEWAY_IDLE_TIMEOUT=1s", "GATEWAY_MAX_HEADER_BYTES=2048")

	// closed reads until the server closes conn, and says how long it took.
	closed := func(name string, conn net.Conn) {
		t.Helper()
		start := time.Now()
		_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err := io.Copy(io.Discard, conn)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("%s: still open after 20s", name)
		}
		t.Logf("%s: closed by the gateway after %v", name, time.Since(start).Round(10*time.Millisecond))
	}
	silent := dialRaw(t, g, 0)
	closed("connected, sent nothing", silent)

	partial := dialRaw(t, g, 0)
	if _, err := io.WriteString(partial, "GET /api/v1/budget/events HTTP/1.1\r\nHost: x\r\nX-Pad: "); err != nil {
		t.Fatal(err)
	}
	closed("partial headers", partial)

	trickle := dialRaw(t, g, 0)
	stop := make(chan struct{})
	go func() {
		msg := "GET /api/v1/budget/events HTTP/1.1\r\nHost: x\r\nX-Pad: " + strings.Repeat("y", 1000)
		for i := 0; i < len(msg); i++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := trickle.Write([]byte{msg[i]}); err != nil {
				return
			}
		}
	}()
	closed("headers trickled a byte every 50 ms", trickle)
	close(stop)

	big := dialRaw(t, g, 0)
	if _, err := io.WriteString(big, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "+strings.Repeat("z", 2048+4096)+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(big), nil)
	if err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("oversized headers: %v %v, want 431", resp, err)
	}

	idle := dialRaw(t, g, 0)
	br := bufio.NewReader(idle)
	if _, err := io.WriteString(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("keep-alive request: %v %v", resp, err)
	} else {
		_, _ = io.Copy(io.Discard, resp.Body)
	}
	closed("keep-alive connection left idle", idle)

	slowBody := dialRaw(t, g, 0)
	body := `{"connection_id":"9d7a0f6e-3b8e-4c1d-9a55-0e2f6f7b1c2d"}`
	if _, err := fmt.Fprintf(slowBody, "POST /api/v1/budget/ws/disconnect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body[:5]); err != nil {
		t.Fatal(err)
	}
	_ = slowBody.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err = http.ReadResponse(bufio.NewReader(slowBody), nil)
	if err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a body that stops after 5 bytes: %v %v, want 400 once the read deadline passes", resp, err)
	}
}

// An SSE client that stops reading is cut once it falls out of the replay
// window: the stream it got is a gap-free prefix, ends with the comment
// ": close 4008 <reason>" and a clean end, and Last-Event-ID resumes it
// exactly.
func TestSSESlowConsumerIsCut(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, "GATEWAY_SEND_QUEUE=4", "GATEWAY_REPLAY_EVENTS=16", "GATEWAY_WRITE_TIMEOUT=30s",
		"GATEWAY_SOCKET_SEND_BUFFER=16384")
	healthy := dialWS(t, g, "")
	raw := dialRaw(t, g, 0)
	if _, err := io.WriteString(raw, "GET /api/v1/budget/events HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(raw), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("SSE request: %v %v", resp, err)
	}
	limitWaitReady(t, g, "clients", 2)

	desc := strings.Repeat("0123456789abcdef", 64*1024/16)
	var all []frame
	kickedAt := 0
	for i := 0; kickedAt == 0 || i < kickedAt+5; i++ {
		if i == 400 {
			t.Fatalf("the stalled SSE client was not cut after %d events of 64 KB", i)
		}
		db.exec(t, `INSERT INTO facts (amount, fact_date, description) VALUES ($1, '2026-01-07', $2)`, i, desc)
		all = append(all, healthy.next(t, 10*time.Second))
		if kickedAt == 0 && limitReady(t, g, "clients") == 1 {
			kickedAt = i + 1
		}
	}
	t.Logf("stalled SSE client cut after %d events of 64 KB", kickedAt)

	// Now it reads what it was sent.
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 256*1024), 1<<20)
	var got []string
	var last []string // the lines after the last event
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			got = append(got, strings.TrimPrefix(line, "id: "))
			last = nil
		case line != "" && !strings.HasPrefix(line, "event: ") && !strings.HasPrefix(line, "data: ") && line != "retry: 1000":
			last = append(last, line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("stalled SSE stream ended with %v, want a clean end", err)
	}
	k := len(got)
	t.Logf("stalled SSE client got %d of %d events", k, len(all))
	if k == 0 || k >= len(all) || !slices.Equal(got, ids(all[:k])) {
		t.Fatalf("stalled SSE client got %v, want a proper prefix of %v", got, ids(all))
	}
	want := fmt.Sprintf(": close %d %s", gateway.CloseSlow, gateway.ReasonSlow)
	if !slices.Equal(last, []string{want}) {
		t.Fatalf("after its last event the stream has %q, want %q", last, want)
	}
	again := dialSSE(t, g, "", http.Header{"Last-Event-ID": {got[k-1]}})
	var rest []string
	for _, ev := range again.take(t, len(all)-k) {
		rest = append(rest, ev.ID)
	}
	if !slices.Equal(rest, ids(all[k:])) {
		t.Fatalf("resumed stream got %v, want %v", rest, ids(all[k:]))
	}
}

// A long-poll answer has no queue: it is built when sent and written under
// GATEWAY_WRITE_TIMEOUT. A client that does not read it is cut when that
// passes, its slot is freed, and it loses nothing: polling again from the
// same since gets the same events.
func TestPollUnreadAnswerIsCut(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, "GATEWAY_WRITE_TIMEOUT=3s", "GATEWAY_MAX_POLLERS=1", "GATEWAY_SOCKET_SEND_BUFFER=16384")
	desc := strings.Repeat("0123456789abcdef", 100*1024/16)
	const n = 20 // 2 MB: far more than the socket buffers hold
	for i := range n {
		db.exec(t, `INSERT INTO facts (amount, fact_date, description) VALUES ($1, '2026-01-07', $2)`, i, desc)
	}
	waitFor(t, 10*time.Second, "the events in the window", func() bool {
		resp := limitGet(t, g.base+"/api/v1/budget/poll?timeout=0", nil)
		defer resp.Body.Close()
		var a protoPollAnswer
		return json.NewDecoder(resp.Body).Decode(&a) == nil && len(a.Events) == n
	})

	raw := dialRaw(t, g, 4096)
	if _, err := io.WriteString(raw, "GET /api/v1/budget/poll?since=0&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	limitWaitReady(t, g, "polls", 1)
	limitRefused(t, g.base+"/api/v1/budget/poll?timeout=0", nil, http.StatusServiceUnavailable, "too many long-polls")
	limitWaitReady(t, g, "polls", 0) // cut by the write deadline
	_ = raw.SetReadDeadline(time.Now().Add(20 * time.Second))
	b, _ := io.ReadAll(raw)
	if len(b) >= n*100*1024 || bytes.HasSuffix(bytes.TrimSpace(b), []byte("}")) {
		t.Fatalf("the unread answer arrived whole (%d bytes): the client was not cut", len(b))
	}
	t.Logf("the stalled poller got %d bytes of the answer before it was cut", len(b))
	resp := limitGet(t, g.base+"/api/v1/budget/poll?since=0&timeout=0", nil)
	defer resp.Body.Close()
	var a protoPollAnswer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil || len(a.Events) != n {
		t.Fatalf("polling again: %d events (%v), want %d", len(a.Events), err, n)
	}
}

// At shutdown an SSE stream also ends with its reason, as a comment.
func TestSSEShutdownSaysWhy(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db)
	s := openRawSSE(t, g.base+"/api/v1/budget/events", nil)
	limitWaitReady(t, g, "clients", 1)
	g.cancel()
	want := fmt.Sprintf(": close %d %s", gateway.CloseGoingAway, gateway.ReasonShutdown)
	if l := s.waitLine(t, ": close", 10*time.Second); l != want {
		t.Fatalf("last words %q, want %q", l, want)
	}
	if err := s.waitEnd(t, 10*time.Second); err != nil {
		t.Fatalf("stream ended with %v, want a clean end", err)
	}
	if err := <-g.done; err != nil {
		t.Errorf("serve returned %v", err)
	}
	close(g.done) // tells the cleanup's stop that serve already returned
}
