package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/budget-rt/gateway/internal/testnet"
)

// socketPair returns both ends of a loopback TCP connection, the server's
// wrapped as a hijacked WebSocket's is, with small kernel buffers so that
// a frame of a MiB cannot fit.
func socketPair(t *testing.T) (*corkConn, net.Conn) {
	t.Helper()
	client, server := testnet.TCPPair(t)
	_ = client.SetReadBuffer(64 << 10)
	_ = server.SetWriteBuffer(64 << 10)

	// The same wrapping as the upgrade's hijack.
	var hj hijacker
	hj.conn = server
	cw := &corkingWriter{ResponseWriter: &hj}
	sock, _, err := cw.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	if cw.conn.raw == nil {
		t.Fatal("a TCP socket must get the direct write path")
	}
	// Corked until the connected frame is written (wsTransport.connect):
	// then it is an established connection's socket.
	if err := cw.conn.uncork(); err != nil {
		t.Fatal(err)
	}
	return sock.(*corkConn), client
}

// hijacker hands out a socket as an http.ResponseWriter's Hijack would.
type hijacker struct {
	httptest.ResponseRecorder
	conn net.Conn
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) { return h.conn, nil, nil }

var _ http.Hijacker = (*hijacker)(nil)

// frameOf is a WebSocket text frame of n bytes of payload filled with b.
func frameOf(b byte, n int) []byte {
	p := append(make([]byte, wsHeadroom), bytes.Repeat([]byte{b}, n)...)
	return framed(p)
}

// A frame the socket could take only in part is finished before anything
// else is written: a control frame gorilla writes meanwhile (a pong, a
// close) comes after it, whole, never inside it.
func TestTryWriteKeepsFramesWhole(t *testing.T) {
	sock, client := socketPair(t)
	big := frameOf('a', 1<<20)
	done, tried, err := sock.tryWrite(big, false)
	if err != nil || !tried || done {
		t.Fatalf("tryWrite of %d bytes into a small socket: done %v tried %v err %v; want part written", len(big), done, tried, err)
	}
	if len(sock.partial) == 0 || len(sock.partial) > len(big) {
		t.Fatalf("kept %d bytes of %d", len(sock.partial), len(big))
	}
	// While the rest waits, the direct path does not write: another frame
	// must wait behind the rest.
	if done, tried, _ := sock.tryWrite(frameOf('b', 10), true); done || tried {
		t.Fatalf("tryWrite with a frame unfinished: done %v tried %v; want nothing tried", done, tried)
	}
	// Scribble over the caller's buffer: what was kept must be a copy.
	for i := range big {
		big[i] = 'x'
	}
	want := append(frameOf('a', 1<<20), frameOf('p', 3)...)

	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(client, int64(len(want))))
		got <- b
	}()
	// gorilla's pong, written on the read loop; then the writer finishes.
	if _, err := sock.Write(frameOf('p', 3)); err != nil {
		t.Fatalf("write a control frame: %v", err)
	}
	if err := sock.finish(5 * time.Second); err != nil {
		t.Fatalf("finish: %v", err)
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("the client read %d bytes, not the frame then the control frame (%d bytes)", len(b), len(want))
	}
}

// A deadline that passed after a blocking write must not fail the direct
// writes that follow: a deadline is a point in time, not a duration.
func TestTryWriteAfterDeadlinePassed(t *testing.T) {
	sock, client := socketPair(t)
	deadline := time.Now().Add(20 * time.Millisecond)
	if err := sock.SetWriteDeadline(deadline); err != nil { // as gorilla does before a control frame
		t.Fatal(err)
	}
	if _, err := sock.Write(frameOf('p', 3)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(deadline) + time.Millisecond) // the condition is the clock itself
	done, tried, err := sock.tryWrite(frameOf('e', 100), true)
	if err != nil || !done || !tried {
		t.Fatalf("tryWrite after the deadline passed: done %v tried %v err %v", done, tried, err)
	}
	want := append(frameOf('p', 3), frameOf('e', 100)...)
	b := make([]byte, len(want))
	if _, err := io.ReadFull(client, b); err != nil || !bytes.Equal(b, want) {
		t.Fatalf("read %q (%v)", b, err)
	}
}

// Once a socket is cut (closing), its deadline only comes nearer: the
// writers' own deadlines do not extend it, and the direct path leaves the
// frame to the blocking one, which fails at once.
func TestCutSocketWaitsNoLonger(t *testing.T) {
	sock, _ := socketPair(t)
	if _, _, err := sock.tryWrite(frameOf('a', 1<<20), false); err != nil {
		t.Fatal(err)
	}
	if err := sock.cut(time.Now()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := sock.finish(time.Minute)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("finish on a cut socket: %v, want a timeout", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("finish waited %v on a cut socket", waited)
	}
	if done, _, err := sock.tryWrite(frameOf('b', 10), true); done || err == nil {
		t.Fatalf("tryWrite on a broken socket: done %v err %v", done, err)
	}
}

// The frames built once per event are what a WebSocket client reads,
// at every size of length field (7, 16 and 64 bits): gorilla's client
// reads them off a real socket.
func TestWireFramesReadByGorilla(t *testing.T) {
	sizes := []int{0, 1, 125, 126, 127, 65535, 65536, 200000}
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		for _, n := range sizes {
			if _, err := ws.UnderlyingConn().Write(newFrame(bytes.Repeat([]byte{'z'}, n)).wire); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, n := range sizes {
		typ, msg, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("read the frame of %d bytes: %v", n, err)
		}
		if typ != websocket.TextMessage || len(msg) != n || bytes.Count(msg, []byte{'z'}) != n {
			t.Fatalf("frame of %d bytes read as type %d with %d bytes", n, typ, len(msg))
		}
	}
}

// A close frame that finds the socket full is not written by closeWith (the
// caller then writes it the blocking way, wsConn.close): nothing of it, or
// of the frames gathered while corked, may be lost or doubled, whether or
// not any were gathered.
func TestCloseWithFullSocket(t *testing.T) {
	for _, gather := range []bool{false, true} {
		t.Run(map[bool]string{false: "nothing gathered", true: "a frame gathered"}[gather], func(t *testing.T) {
			sock, client := socketPair(t)
			filler := bytes.Repeat([]byte{'x'}, 1024)
			filled := 0
			for i := 0; ; i++ {
				n, err := sock.raw.Write(filler)
				if err != nil {
					t.Fatal(err)
				}
				if n == 0 {
					break
				}
				if filled += n; i == 10_000 {
					t.Fatalf("the socket took %d bytes and is still not full", filled)
				}
			}
			sock.cork()
			var want []byte
			if gather {
				f := frameOf('g', 10)
				if _, err := sock.Write(f); err != nil {
					t.Fatal(err)
				}
				want = append(want, f...)
			}
			cf := closeFrame(websocket.FormatCloseMessage(CloseGoingAway, ReasonShutdown))
			if sock.closeWith(cf) {
				t.Fatal("closeWith wrote into a full socket")
			}
			want = append(want, cf...)
			// The blocking way, as wsConn.close does it, while the client reads.
			read := make(chan []byte, 1)
			go func() {
				_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
				b, _ := io.ReadAll(client)
				read <- b
			}()
			if _, err := sock.Write(cf); err != nil {
				t.Fatal(err)
			}
			if err := sock.Close(); err != nil {
				t.Fatal(err)
			}
			got := <-read
			if len(got) != filled+len(want) || bytes.Count(got[:filled], []byte{'x'}) != filled || !bytes.Equal(got[filled:], want) {
				t.Fatalf("the client read %d bytes, ending % x; want %d bytes of filler, then % x", len(got), got[max(0, len(got)-len(want)):], filled, want)
			}
		})
	}
}
