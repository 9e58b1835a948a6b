package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// dialIdle opens a WebSocket to srv and reads its connected frame.
func dialIdle(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	ws, _ := dialIdleID(t, url)
	return ws
}

// dialIdleID is dialIdle, with the connection_id of the connected frame.
func dialIdleID(t *testing.T, url string) (*websocket.Conn, string) {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	var f struct {
		Type string `json:"type"`
		Data struct {
			ConnectionID string `json:"connection_id"`
		} `json:"data"`
	}
	if err := ws.ReadJSON(&f); err != nil || f.Type != "connected" || f.Data.ConnectionID == "" {
		t.Fatalf("first frame %+v (%v), want connected with an id", f, err)
	}
	return ws, f.Data.ConnectionID
}

// The app-level ping round is spread over its interval: each connection is
// pinged once an interval, and not all of them at the same moment (a round
// to thousands of sockets at once would hold up the events behind it).
func TestPingsSpreadOverTheInterval(t *testing.T) {
	const n = 200
	const every = time.Second
	srv := startOursWith(t, func(*Options) {})
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = dialIdle(t, srv.url)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.ours.ws.pinger(ctx, every); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	// Each client's first two pings, by the time the server put in them.
	got := make([][2]time.Time, n)
	var wg sync.WaitGroup
	for i, ws := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 2 {
				ts, err := readPing(ws)
				if err != nil {
					t.Errorf("client %d, ping %d: %v", i, k, err)
					return
				}
				got[i][k] = ts
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	first := map[time.Time]int{}
	for _, g := range got {
		first[g[0]]++
	}
	if len(first) < pingSlices(every)/2 {
		t.Errorf("the first round's %d pings went out at %d moments, want them spread over about %d", n, len(first), pingSlices(every))
	}
	for i, g := range got {
		if d := g[1].Sub(g[0]); d < every/2 {
			t.Errorf("client %d pinged twice within %s, want once an interval (%s)", i, d, every)
		}
	}

	// A connection made in the middle of a round is pinged within about an
	// interval, not after the round and its own turn in the next.
	for i := range 20 {
		ws := dialIdle(t, srv.url)
		connected := time.Now()
		ts, err := readPing(ws)
		if err != nil {
			t.Fatalf("new client %d: %v", i, err)
		}
		if d := ts.Sub(connected); d > every+every/2 {
			t.Errorf("new client %d: first ping %s after connecting, want about an interval (%s) at most", i, d, every)
		}
	}
}

// readUntil reads ws until a frame of type typ, passing over the others,
// and returns that frame.
func readUntil(ws *websocket.Conn, typ string) ([]byte, error) {
	_ = ws.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		_, msg, err := ws.ReadMessage()
		if err != nil {
			return nil, fmt.Errorf("wait for %s: %w", typ, err)
		}
		var f struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(msg, &f) == nil && f.Type == typ {
			return msg, nil
		}
	}
}

// readPing reads ws until an app-level ping and returns the time the
// server put in it.
func readPing(ws *websocket.Conn) (time.Time, error) {
	msg, err := readUntil(ws, "ping")
	if err != nil {
		return time.Time{}, err
	}
	var f struct {
		Data struct {
			Timestamp string `json:"timestamp"`
		} `json:"data"`
	}
	_ = json.Unmarshal(msg, &f)
	ts, err := time.Parse(time.RFC3339Nano, f.Data.Timestamp)
	if err != nil {
		return time.Time{}, fmt.Errorf("ping timestamp %q: %w", f.Data.Timestamp, err)
	}
	return ts, nil
}

// Connections that come together are not pinged together: the first
// control ping comes at a random point of the second half of the period,
// so a reconnect storm's connections do not stay in step.
func TestControlPingsOfAStormSpread(t *testing.T) {
	const n = 40
	was, wasPeriod := pongWait, pingPeriod
	pongWait, pingPeriod = 10*time.Second, time.Second
	t.Cleanup(func() { pongWait, pingPeriod = was, wasPeriod })
	srv := startOursWith(t, func(*Options) {})

	firsts := make(chan time.Duration, n)
	var wg sync.WaitGroup
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		ws := dialIdle(t, srv.url)
		conns[i] = ws
		connected := time.Now()
		var once sync.Once
		ws.SetPingHandler(func(data string) error {
			once.Do(func() { firsts <- time.Since(connected) })
			return ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		})
		wg.Add(1)
		go func() { // reading runs the ping handler
			defer wg.Done()
			_ = ws.SetReadDeadline(time.Now().Add(20 * time.Second))
			for {
				if _, _, err := ws.ReadMessage(); err != nil {
					return
				}
			}
		}()
	}
	lo, hi := time.Duration(1<<62), time.Duration(0)
	for range n {
		select {
		case d := <-firsts:
			// Measured from the client's side, which may see the connected
			// frame well after the server armed the timer: a loose bound.
			if d < pingPeriod/4 {
				t.Errorf("first ping %s after connecting, want about half a period (%s) or more", d, pingPeriod/2)
			}
			lo, hi = min(lo, d), max(hi, d)
		case <-time.After(3 * pingPeriod):
			t.Fatal("a client got no ping")
		}
	}
	if hi-lo < pingPeriod/4 {
		t.Errorf("the first pings of %d connections made together came within %s of each other, want them spread over half a period (%s)", n, hi-lo, pingPeriod/2)
	}
	for _, ws := range conns {
		ws.Close() // ends its reader
	}
	wg.Wait()
}
