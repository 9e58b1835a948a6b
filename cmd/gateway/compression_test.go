package main

import (
	"bytes"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// countingConn counts the bytes a client reads off its socket.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// dialCounting dials with or without offering permessage-deflate and
// counts what the client reads.
func dialCounting(t *testing.T, g *gw, query string, compress bool) (*websocket.Conn, *atomic.Int64) {
	t.Helper()
	n := new(atomic.Int64)
	d := websocket.Dialer{EnableCompression: compress, NetDial: func(network, addr string) (net.Conn, error) {
		c, err := net.Dial(network, addr)
		if err != nil {
			return nil, err
		}
		return countingConn{Conn: c, n: n}, nil
	}}
	conn, _, err := d.Dial(g.wsURL(query), nil)
	if err != nil {
		t.Fatalf("dial (compression %v): %v", compress, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, n
}

// readMessages reads n text messages.
func readMessages(t *testing.T, c *websocket.Conn, n int) [][]byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var out [][]byte
	for len(out) < n {
		typ, msg, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("read message %d of %d: %v", len(out)+1, n, err)
		}
		if typ == websocket.TextMessage {
			out = append(out, msg)
		}
	}
	return out
}

// With GATEWAY_WS_COMPRESSION on, a client that offers permessage-deflate
// gets every event compressed (each compressed once for all such clients),
// and reads exactly the frames a client without it reads, in fewer bytes;
// a client that does not offer it is unaffected, and so is everyone when
// the setting is off (the default).
func TestWebSocketCompression(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	on := startGateway(t, db, "GATEWAY_WS_COMPRESSION=true")
	off := startGateway(t, db)

	zipped, zn := dialCounting(t, on, "", true)
	plain, pn := dialCounting(t, on, "", false)
	offered, on2 := dialCounting(t, off, "", true)
	// Two clients of the same kind: the second one gets the bytes the first
	// one's connection compressed.
	zipped2, _ := dialCounting(t, on, "", true)
	for _, c := range []*websocket.Conn{zipped, plain, offered, zipped2} {
		readMessages(t, c, 1) // connected
	}
	z0, p0, o0 := zn.Load(), pn.Load(), on2.Load()

	// Rows that compress (repeated text) and one over 64 KiB (a frame with
	// a 64-bit length), then a marker.
	const rows = 30
	db.exec(t, `INSERT INTO facts (amount, fact_date, description)
SELECT i, '2026-01-16', repeat('abc', 200 * i) FROM generate_series(1, $1) i`, rows)
	db.exec(t, `INSERT INTO facts (amount, fact_date, description) VALUES (0, '2026-01-16', repeat('z', 100000))`)

	want := readMessages(t, plain, rows+1)
	for name, c := range map[string]*websocket.Conn{"compressed": zipped, "compressed, second client": zipped2,
		"offered, gateway without compression": offered} {
		got := readMessages(t, c, rows+1)
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("%s client, frame %d differs from the plain client's:\n got %.120s\nwant %.120s", name, i, got[i], want[i])
			}
		}
	}
	zipBytes, plainBytes, offBytes := zn.Load()-z0, pn.Load()-p0, on2.Load()-o0
	t.Logf("bytes read for the same %d events: compressed %d, plain %d, offered to a gateway without compression %d",
		rows+1, zipBytes, plainBytes, offBytes)
	if zipBytes*4 > plainBytes {
		t.Errorf("compressed client read %d bytes, plain %d: want well under a quarter for repeated text", zipBytes, plainBytes)
	}
	if offBytes != plainBytes {
		t.Errorf("with compression off, a client offering it read %d bytes, a plain one %d: want the same frames", offBytes, plainBytes)
	}
}
