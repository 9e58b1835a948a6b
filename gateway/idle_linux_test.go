package gateway

import (
	"context"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/budget-rt/gateway/notify"
)

// parkedOf counts s's connections whose reader is parked.
func parkedOf(s *Server) int {
	n := 0
	for _, c := range s.ws.conns.all() {
		if c.parked.Load() {
			n++
		}
	}
	return n
}

// waitParked waits, a bounded while, until n of s's connections are
// parked.
func waitParked(t *testing.T, s *Server, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for parkedOf(s) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections parked, want %d", parkedOf(s), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// readType reads frames until one of type typ (see readUntil).
func readType(t *testing.T, ws *websocket.Conn, typ string) {
	t.Helper()
	if _, err := readUntil(ws, typ); err != nil {
		t.Fatal(err)
	}
}

// An idle connection has no goroutine: its reader parks between messages
// and a reader is started again when the socket turns readable. Parked
// connections still get events; their messages, control pings, messages
// that arrive together, a fragmented message with a ping inside it, are
// all read and answered; a client that leaves is cleaned up.
func TestIdleConnectionsParkTheirReader(t *testing.T) {
	const n = 40
	srv := startOursWith(t, func(*Options) {})
	g0 := runtime.NumGoroutine()
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = dialIdle(t, srv.url)
	}
	waitParked(t, srv.ours, n)
	if g := runtime.NumGoroutine() - g0; g >= n/2 {
		t.Errorf("%d more goroutines for %d idle connections, want none per connection", g, n)
	}

	// Events reach parked connections: the fan-out never needed the reader.
	srv.publish([]notify.Event{benchEvent(1)})
	for _, ws := range conns {
		readType(t, ws, "budget_fact_created")
	}

	// A message wakes the reader, which answers it and parks again.
	for _, ws := range conns {
		if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`)); err != nil {
			t.Fatal(err)
		}
	}
	for _, ws := range conns {
		readType(t, ws, "pong")
	}
	waitParked(t, srv.ours, n)

	// A control ping is answered by the gateway, not by gorilla's reader.
	ws := conns[0]
	pongs := make(chan string, 4)
	ws.SetPongHandler(func(data string) error { pongs <- data; return nil })
	if err := ws.WriteControl(websocket.PingMessage, []byte("are you there"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	// The pong is read by ws's reader, which the next message keeps going.
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"check_online"}`)); err != nil {
		t.Fatal(err)
	}
	readType(t, ws, "online_status")
	select {
	case p := <-pongs:
		if p != "are you there" {
			t.Errorf("pong %q, want the ping's payload", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no pong for a control ping")
	}

	// Two messages in one segment: both answered, none left waiting.
	raw := conns[1].UnderlyingConn()
	two := append(clientFrame(true, websocket.TextMessage, []byte(`{"type":"ping"}`)),
		clientFrame(true, websocket.TextMessage, []byte(`{"type":"check_online"}`))...)
	if _, err := raw.Write(two); err != nil {
		t.Fatal(err)
	}
	readType(t, conns[1], "pong")
	readType(t, conns[1], "online_status")

	// A message in two fragments with a ping between them, the ping and
	// the rest written once the first fragment woke the reader, which then
	// waits for them inside gorilla: answered whole, the ping too.
	waitParked(t, srv.ours, n)
	raw = conns[2].UnderlyingConn()
	pongs2 := make(chan string, 1)
	conns[2].SetPongHandler(func(data string) error { pongs2 <- data; return nil })
	if _, err := raw.Write(clientFrame(false, websocket.TextMessage, []byte(`{"type":`))); err != nil {
		t.Fatal(err)
	}
	waitParked(t, srv.ours, n-1)
	for _, f := range [][]byte{
		clientFrame(true, websocket.PingMessage, []byte("mid")),
		clientFrame(true, 0, []byte(`"ping"}`)),
	} {
		if _, err := raw.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	readType(t, conns[2], "pong")
	select {
	case p := <-pongs2:
		if p != "mid" {
			t.Errorf("pong %q, want mid", p)
		}
	default:
		t.Error("no pong for the ping inside the fragmented message")
	}

	// A pong alone, as every client sends one for each keepalive ping,
	// wakes the reader, which notes it and parks again: no message follows
	// to carry it out of its wait.
	waitParked(t, srv.ours, n)
	var sc *wsConn
	for _, c := range srv.ours.ws.conns.all() {
		if c.sock.RemoteAddr().String() == conns[3].LocalAddr().String() {
			sc = c
		}
	}
	if sc == nil {
		t.Fatal("no server connection for the client")
	}
	before := sc.lastPong.Load()
	if err := conns[3].WriteControl(websocket.PongMessage, []byte("alive"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for sc.lastPong.Load() == before {
		if time.Now().After(deadline) {
			t.Fatal("the pong was not read")
		}
		time.Sleep(5 * time.Millisecond)
	}
	waitParked(t, srv.ours, n)

	// A client that goes away is cleaned up, parked or not.
	for _, ws := range conns[n/2:] {
		ws.UnderlyingConn().Close()
	}
	deadline = time.Now().Add(20 * time.Second)
	for srv.conns() != n/2 {
		if time.Now().After(deadline) {
			t.Fatalf("the server holds %d connections after %d left, want %d", srv.conns(), n-n/2, n/2)
		}
		time.Sleep(5 * time.Millisecond)
	}
	waitParked(t, srv.ours, n/2)
}

// A parked connection closed by the server (shutdown here) is cleaned up
// and its client gets the close frame.
func TestParkedConnectionsClosedAtShutdown(t *testing.T) {
	const n = 20
	s := New(slog.New(slog.DiscardHandler), nil, nil, Options{Window: 100, SendQueue: 64, WriteTimeout: 10 * time.Second,
		MaxMessageBytes: 4096, MessageRate: 2, MessageBurst: 20, HeaderTimeout: 10 * time.Second,
		HandshakeTimeout: 10 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 32768})
	s.Hub().Load(nil, notify.Position{}, true)
	hs := s.HTTPServer()
	url := serveBench(t, hs) + "/api/v1/budget/ws"
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = dialIdle(t, url)
	}
	waitParked(t, s, n)
	parked0 := idle.parkedN.Load()

	var wg sync.WaitGroup
	codes := make(chan int, n)
	for _, ws := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = ws.SetReadDeadline(time.Now().Add(20 * time.Second))
			for {
				if _, _, err := ws.ReadMessage(); err != nil {
					code := -1
					if ce, ok := err.(*websocket.CloseError); ok {
						code = ce.Code
					}
					codes <- code
					return
				}
			}
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s.Close(ctx)
	wg.Wait()
	close(codes)
	for code := range codes {
		if code != CloseGoingAway {
			t.Errorf("close code %d, want %d", code, CloseGoingAway)
		}
	}
	// Each connection was cleaned up: out of the registry, the hub and the
	// poller's count.
	deadline := time.Now().Add(20 * time.Second)
	for len(s.ws.conns.all()) != 0 || s.Hub().Len() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections registered, %d in the hub after shutdown", len(s.ws.conns.all()), s.Hub().Len())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := idle.parkedN.Load(); got > parked0-n {
		t.Errorf("parked count %d after shutdown, want at most %d", got, parked0-n)
	}
	_ = hs.Close()
}

// A client that never answers the gateway's pings is cut after pongWait,
// also while its connection is parked (no read deadline runs then); one
// that answers stays.
func TestParkedConnectionWithoutPongsIsCut(t *testing.T) {
	was, wasPeriod := pongWait, pingPeriod
	// Short, but with room for a pong under -race on a machine busy with
	// other test packages: the answering client has 2.5 s for each.
	pongWait, pingPeriod = 3*time.Second, 500*time.Millisecond
	t.Cleanup(func() { pongWait, pingPeriod = was, wasPeriod })
	srv := startOursWith(t, func(*Options) {})

	mute, muteID := dialIdleID(t, srv.url) // reads nothing more, so answers no ping
	alive, aliveID := dialIdleID(t, srv.url)
	done := make(chan error, 1)
	go func() { // reading answers pings (gorilla's default handler)
		for {
			_ = alive.SetReadDeadline(time.Now().Add(30 * time.Second))
			if _, _, err := alive.ReadMessage(); err != nil {
				done <- err
				return
			}
		}
	}()
	held := func(id string) bool {
		for _, c := range srv.ours.ws.conns.all() {
			if c.id == id {
				return true
			}
		}
		return false
	}
	started := time.Now()
	for held(muteID) {
		if time.Since(started) > 30*time.Second {
			t.Fatal("the mute client is still held after 30 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !held(aliveID) {
		t.Fatalf("the answering client was cut too (%v after the start)", time.Since(started))
	}
	// The mute one's socket is closed.
	_ = mute.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := mute.ReadMessage(); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("the mute client's socket is still open")
			}
			break
		}
	}
	// The one that answers outlives two more pongWaits.
	time.Sleep(2 * pongWait)
	select {
	case err := <-done:
		t.Fatalf("the answering client was cut: %v", err)
	default:
	}
	if !held(aliveID) {
		t.Fatal("the server let go of the answering client")
	}
}

// Control frames the protocol forbids are refused as gorilla refused them
// (1002), though the gateway now takes valid ones out before gorilla.
func TestBadControlFramesRefused(t *testing.T) {
	srv := startOursWith(t, func(*Options) {})
	for name, f := range map[string][]byte{
		"unmasked ping":   {0x89, 0x01, 'x'},
		"ping over 125":   clientFrame(true, websocket.PingMessage, []byte(strings.Repeat("x", 126))),
		"fragmented ping": clientFrame(false, websocket.PingMessage, []byte("x")),
	} {
		t.Run(name, func(t *testing.T) {
			ws := dialIdle(t, srv.url)
			if _, err := ws.UnderlyingConn().Write(f); err != nil {
				t.Fatal(err)
			}
			_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
			for {
				_, _, err := ws.ReadMessage()
				if err == nil {
					continue
				}
				ce, ok := err.(*websocket.CloseError)
				if !ok || ce.Code != websocket.CloseProtocolError {
					t.Fatalf("read ended with %v, want close 1002", err)
				}
				return
			}
		})
	}
}

// idleFailEnv runs TestIdlePollerFailure's body: it breaks the process's
// idle poller for good, so it runs in a process of its own.
const idleFailEnv = "RTGW_TEST_IDLE_FAIL"

// Should the idle poller's epoll set ever fail to be waited for, every
// parked connection gets its reader back (its messages are answered again)
// and no reader parks after that, old or new connection.
func TestIdlePollerFailure(t *testing.T) {
	if os.Getenv(idleFailEnv) == "" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestIdlePollerFailure$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), idleFailEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestIdlePollerFailure") {
			t.Fatalf("the test's own process (%v):\n%s", err, out)
		}
		return
	}

	const n = 10
	srv := startOursWith(t, func(*Options) {})
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = dialIdle(t, srv.url)
	}
	waitParked(t, srv.ours, n)
	g0 := runtime.NumGoroutine()

	// Closing the set makes the poller's wait fail, as a failure of its own
	// would.
	if err := idle.file.Close(); err != nil {
		t.Fatal(err)
	}
	waitParked(t, srv.ours, 0)
	if idle.usable() {
		t.Fatal("the poller still takes readers after its set failed")
	}

	// Each connection's reader is back: messages are answered, and the
	// readers wait in their sockets instead of parking.
	conns = append(conns, dialIdle(t, srv.url)) // connected after the failure
	srv.publish([]notify.Event{benchEvent(1)})
	for _, ws := range conns {
		readType(t, ws, "budget_fact_created")
		if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`)); err != nil {
			t.Fatal(err)
		}
		readType(t, ws, "pong")
	}
	// A reader each, less the poller's goroutine, which ended.
	want := len(conns) - 1
	deadline := time.Now().Add(20 * time.Second)
	for runtime.NumGoroutine()-g0 < want {
		if time.Now().After(deadline) {
			t.Fatalf("%d more goroutines, want %d: a reader for each of %d connections, the poller's gone", runtime.NumGoroutine()-g0, want, len(conns))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if p, pn := parkedOf(srv.ours), idle.parkedN.Load(); p != 0 || pn != 0 {
		t.Fatalf("%d connections parked (count %d) after the poller failed, want none", p, pn)
	}

	// A client that leaves is still cleaned up by its reader.
	conns[0].Close()
	for srv.conns() != len(conns)-1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d clients in the hub, want %d", srv.conns(), len(conns)-1)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
