package main

import (
	"encoding/json"
	"net"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// With ?batch=1, events queued together for a socket go out as one frame
// holding a JSON array of them, in order; an event alone, and every frame
// of the gateway's own (connected, pong), stays an object. Without it every
// frame is one object, as the app's client needs. Batching only coalesces
// what is queued: here a reader that stops while a 200-row statement is
// delivered, behind small socket buffers, finds most of it queued.
func TestWebSocketBatchedFrames(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, "GATEWAY_SOCKET_SEND_BUFFER=4096")

	plain := dialWS(t, g, "")
	d := websocket.Dialer{NetDial: func(network, addr string) (net.Conn, error) {
		c, err := net.Dial(network, addr)
		if err == nil {
			_ = c.(*net.TCPConn).SetReadBuffer(4096)
		}
		return c, err
	}}
	batched, _, err := d.Dial(g.wsURL("batch=1"), nil)
	if err != nil {
		t.Fatalf("dial with batch=1: %v", err)
	}
	defer batched.Close()
	_ = batched.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, msg, err := batched.ReadMessage(); err != nil || !isObject(msg, "connected") {
		t.Fatalf("first frame with batch=1: %s (%v), want the connected object", msg, err)
	}

	const rows = 200
	db.exec(t, `INSERT INTO facts (amount, fact_date, description)
SELECT i, '2026-01-15', repeat('x', 1000) FROM generate_series(1, $1) i`, rows)
	// The plain client gets one event per frame. Once it has them all, the
	// gateway has offered every one to the batched client too, which has
	// not read since its connected frame.
	want := ids(plain.take(t, rows))

	var got []string
	frames, arrays := 0, 0
	for len(got) < rows {
		_, msg, err := batched.ReadMessage()
		if err != nil {
			t.Fatalf("read batched frames after %d events: %v", len(got), err)
		}
		frames++
		var evs []frame
		if len(msg) > 0 && msg[0] == '[' {
			arrays++
			if err := json.Unmarshal(msg, &evs); err != nil || len(evs) < 2 {
				t.Fatalf("batched frame of %d events (%v), want an array of at least two", len(evs), err)
			}
		} else {
			var f frame
			if err := json.Unmarshal(msg, &f); err != nil {
				t.Fatalf("frame %.80s: %v", msg, err)
			}
			evs = []frame{f}
		}
		for _, f := range evs {
			if f.ID == "" || f.Type != "budget_fact_created" {
				t.Fatalf("batched frame holds %s %q, want events only", f.Type, f.ID)
			}
			got = append(got, f.ID)
		}
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("batched event %d is %s, want %s (the plain client's order)", i, got[i], want[i])
		}
	}
	if arrays == 0 {
		t.Fatalf("%d events came in %d frames, none an array", rows, frames)
	}
	t.Logf("%d events in %d frames, %d of them arrays", rows, frames, arrays)

	// The gateway's own frames stay objects.
	if err := batched.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := batched.ReadMessage(); err != nil || !isObject(msg, "pong") {
		t.Fatalf("answer to ping with batch=1: %s (%v), want the pong object", msg, err)
	}
}

func isObject(msg []byte, typ string) bool {
	var f frame
	return json.Unmarshal(msg, &f) == nil && f.Type == typ
}
