package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/budget-rt/gateway/internal/testnet"
)

// wsPeer is a WebSocket server written out byte by byte, on a real
// loopback socket, so that the test decides where the tool's reads find
// frame boundaries: the 101 and the first frame leave in one write, as
// the gateway sends them.
type wsPeer struct {
	ln      net.Listener
	answer  func(key string) string // the handshake answer
	afterOK []byte                  // sent in the same write as a 101
	conns   chan net.Conn
	targets chan string
}

func newWSPeer(t *testing.T, answer func(key string) string, afterOK []byte) *wsPeer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &wsPeer{ln: ln, answer: answer, afterOK: afterOK, conns: make(chan net.Conn, 4), targets: make(chan string, 4)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			req, err := http.ReadRequest(bufio.NewReader(c))
			if err != nil {
				c.Close()
				continue
			}
			a := p.answer(req.Header.Get("Sec-WebSocket-Key"))
			out := []byte(a)
			if len(a) > 12 && a[9:12] == "101" {
				out = append(out, p.afterOK...)
			}
			if _, err := c.Write(out); err != nil {
				c.Close()
				continue
			}
			p.targets <- req.URL.RequestURI()
			p.conns <- c
		}
	}()
	return p
}

func switching(key string) string {
	return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
		acceptKey(key) + "\r\n\r\n"
}

// exchange plays the rest of allWire to the client on c: the ping it
// holds is answered before the close is sent.
func exchange(t *testing.T, c net.Conn) {
	t.Helper()
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	first := len(frame(true, 1, []byte(`{"type":"connected"}`)))
	closeAt := len(allWire) - len(frame(true, 8, []byte{0x03, 0xe9})) - len(frame(true, 1, []byte("after the close")))
	if _, err := c.Write(allWire[first:closeAt]); err != nil {
		t.Errorf("write frames: %v", err)
		return
	}
	pong := make([]byte, 8)
	if _, err := io.ReadFull(c, pong); err != nil {
		t.Errorf("read the pong: %v", err)
		return
	}
	if pong[0] != 0x8A || pong[1] != 0x82 || pong[6]^pong[2] != 'p' || pong[7]^pong[3] != '1' {
		t.Errorf("pong % x, want a masked pong of p1", pong)
	}
	if _, err := c.Write(allWire[closeAt:]); err != nil {
		t.Errorf("write the close: %v", err)
	}
}

// peerTransport is the tool's WebSocket transport aimed at peer, with a
// token (empty: none) and batched frames or not.
func peerTransport(t *testing.T, peer *wsPeer, token string, batch bool) *wsTransport {
	t.Helper()
	tr, err := newWSTransport("http://"+peer.ln.Addr().String(), token, batch, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// readerKinds are the ways the tool reads a WebSocket: "io_uring" is what
// a run uses on Linux (epoll loops reading the ready sockets through a
// ring), "epoll" the same loops with a read(2) each (where the kernel
// refuses io_uring, or -read-io-uring=false), "goroutine" the reader used
// for TLS and off Linux. The first two are one kind off Linux.
var readerKinds = []string{"io_uring", "epoll", "goroutine"}

// useRing turns the epoll loops' io_uring reads on or off for the rest of
// the test. On, the test fails unless some reads went through a ring (a
// kernel that refuses io_uring would otherwise pass it with read(2)):
// GATEWAY_TEST_NO_IO_URING=1 says the machine refuses, and skips it.
func useRing(t *testing.T, on bool) {
	t.Helper()
	if on && os.Getenv(testnet.NoIOURing) != "" {
		t.Skipf("io_uring refused here, as %s says", testnet.NoIOURing)
	}
	was := readURing.Load()
	readURing.Store(on)
	calls := ringReads.Load()
	t.Cleanup(func() {
		readURing.Store(was)
		if on && pollAvailable && ringReads.Load() == calls {
			t.Errorf("no read went through io_uring (refused here? set %s=1)", testnet.NoIOURing)
		}
	})
}

// openStream opens a stream to tr with the reader kind names, over the
// same handshake.
func openStream(t *testing.T, ctx context.Context, tr *wsTransport, kind, lastID string) stream {
	t.Helper()
	if kind != "goroutine" {
		useRing(t, kind == "io_uring")
		s, err := tr.open(ctx, lastID)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		return s
	}
	conn, err := net.Dial("tcp", tr.addr)
	if err != nil {
		t.Fatal(err)
	}
	target := "/api/v1/budget/ws"
	if lastID != "" {
		target += "?last_event_id=" + lastID
	}
	rest, err := handshake(conn, tr.host, target)
	if err != nil {
		conn.Close()
		t.Fatalf("open: %v", err)
	}
	return newConnStream(conn, rest)
}

// TestWSStreamOverSocket: the tool's own handshake and readers against a
// real socket. Both readers (the epoll loops where there are some, and
// the goroutine reader used for TLS and elsewhere) get every message in
// order, including the one that came with the 101, answer the ping, and
// end at the close without handing on what follows it.
func TestWSStreamOverSocket(t *testing.T) {
	first := frame(true, 1, []byte(`{"type":"connected"}`))
	peer := newWSPeer(t, switching, first)
	tr := peerTransport(t, peer, "tok", true)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, kind := range readerKinds {
		t.Run(kind, func(t *testing.T) {
			s := openStream(t, ctx, tr, kind, "5-5")
			if target := <-peer.targets; kind != "goroutine" && target != "/api/v1/budget/ws?batch=1&last_event_id=5-5&token=tok" {
				t.Errorf("request target %q", target)
			}
			exchanged := make(chan struct{})
			go func() { defer close(exchanged); exchange(t, <-peer.conns) }()
			defer func() { <-exchanged }()
			var msgs []string
			err := s.read(func(b []byte) { msgs = append(msgs, string(b)) })
			s.close()
			if !errors.Is(err, errClosed) {
				t.Errorf("read ended with %v, want errClosed", err)
			}
			if len(msgs) != len(allMsgs) {
				t.Fatalf("%d messages, want %d", len(msgs), len(allMsgs))
			}
			for i := range msgs {
				if msgs[i] != allMsgs[i] {
					t.Errorf("message %d: %.40q (%d bytes), want %.40q (%d bytes)", i, msgs[i], len(msgs[i]), allMsgs[i], len(allMsgs[i]))
				}
			}
		})
	}
}

// TestWSStreamCloseEndsRead: the end of a run closes streams from another
// goroutine while their gateway stays silent; read must return.
func TestWSStreamCloseEndsRead(t *testing.T) {
	peer := newWSPeer(t, switching, nil)
	tr := peerTransport(t, peer, "", false)
	s, err := tr.open(context.Background(), "")
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	c := <-peer.conns
	defer c.Close()
	reading := make(chan error, 1)
	go func() { reading <- s.read(func([]byte) {}) }()
	s.close()
	select {
	case err := <-reading:
		if err == nil {
			t.Fatal("read ended without an error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read still blocked 10 s after close")
	}
	// The gateway's side sees the connection end.
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 16)); err != io.EOF {
		t.Fatalf("peer read %d bytes, %v: want EOF", n, err)
	}
}

// TestWSStreamReset: a gateway that resets the connection (killed, or its
// host gone) ends the read with the system's error, in both readers, after
// the messages that came before it; never a panic, a hang or a clean end.
func TestWSStreamReset(t *testing.T) {
	first := frame(true, 1, []byte(`{"type":"connected"}`))
	peer := newWSPeer(t, switching, first)
	tr := peerTransport(t, peer, "", false)
	for _, kind := range readerKinds {
		t.Run(kind, func(t *testing.T) {
			s := openStream(t, context.Background(), tr, kind, "")
			defer s.close()
			<-peer.targets
			c := (<-peer.conns).(*net.TCPConn)
			// Linger 0: close sends a reset instead of a FIN.
			if err := c.SetLinger(0); err != nil {
				t.Fatal(err)
			}
			got := make(chan string, 4)
			reading := make(chan error, 1)
			go func() { reading <- s.read(func(b []byte) { got <- string(b) }) }()
			select {
			case m := <-got:
				if m != `{"type":"connected"}` {
					t.Fatalf("first message %q", m)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no first message within 10 s")
			}
			c.Close()
			select {
			case err := <-reading:
				if !errors.Is(err, syscall.ECONNRESET) {
					t.Fatalf("read ended with %v, want the connection reset", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("read still going 10 s after the reset")
			}
		})
	}
}

// TestWSHandshakeAnswers: refusals are errRefused (the run reports them
// instead of retrying), other answers and a wrong accept key are errors.
func TestWSHandshakeAnswers(t *testing.T) {
	for name, tc := range map[string]struct {
		answer  func(string) string
		refused bool
	}{
		"429":       {func(string) string { return "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n" }, true},
		"401":       {func(string) string { return "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n" }, true},
		"503":       {func(string) string { return "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n" }, false},
		"wrong key": {func(string) string { return switching("another key") }, false},
		"not http":  {func(string) string { return "hello\r\n\r\n" }, false},
	} {
		t.Run(name, func(t *testing.T) {
			peer := newWSPeer(t, tc.answer, nil)
			tr := peerTransport(t, peer, "", false)
			s, err := tr.open(context.Background(), "")
			if err == nil {
				s.close()
				t.Fatal("open succeeded")
			}
			if errors.Is(err, errRefused) != tc.refused {
				t.Fatalf("open: %v; refused: %v, want %v", err, errors.Is(err, errRefused), tc.refused)
			}
		})
	}
}
