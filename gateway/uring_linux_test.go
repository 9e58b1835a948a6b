package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/budget-rt/gateway/internal/testnet"
	"github.com/budget-rt/gateway/notify"
)

// testRing is a ring for a test (see testnet.NeedRing); without one, the
// write(2) path is all there is.
func testRing(t *testing.T) *uring {
	t.Helper()
	r, err := newURing(fanChunk)
	testnet.NeedRing(t, err)
	t.Cleanup(r.Close)
	return r
}

// One system call sends each buffer to its own socket and answers for each
// as send(2) would: all taken, part taken (the rest is the connection's
// writer's), or an error of that socket alone. Sockets that are busy or
// closed are not handed to the kernel at all.
func TestURingSendsEachBufferToItsSocket(t *testing.T) {
	r := testRing(t)
	a, ca := socketPair(t)
	b, cb := socketPair(t)
	big, cbig := socketPair(t)
	full, _ := socketPair(t)
	busy, _ := socketPair(t)
	closed, _ := socketPair(t)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()

	// A full socket: a Unix one, whose room does not come back by itself
	// as a TCP socket's may (its buffer grows as acknowledgements come).
	// Its answer is handed to full, a TCP socket held as if it were full.
	unixFull := fullUnixSocket(t)
	if _, tried, _ := busy.tryWrite(frameOf('z', 1<<20), true); !tried {
		t.Fatal("could not leave a frame unfinished in a socket")
	}
	if fd, err := busy.begin(); fd >= 0 || err != nil {
		t.Fatalf("begin on a socket with a frame unfinished: fd %d err %v; want not held", fd, err)
	}
	_ = closed.Close()
	if fd, err := closed.begin(); fd >= 0 || err == nil {
		t.Fatalf("begin on a closed socket: fd %d err %v; want its error", fd, err)
	}

	frames := [][]byte{frameOf('a', 100), frameOf('b', 200), frameOf('c', 1<<20), frameOf('d', 10), []byte("not a socket")}
	socks := []*corkConn{a, b, big, full}
	fds := make([]int32, 0, len(frames))
	for _, s := range socks {
		fd, err := s.begin()
		if fd < 0 || err != nil {
			t.Fatalf("begin on an idle socket: fd %d err %v", fd, err)
		}
		fds = append(fds, fd)
	}
	fds[3] = unixFull
	fds = append(fds, int32(pw.Fd()))
	res := make([]int32, len(frames))
	if err := r.Send(fds, frames, res); err != nil {
		t.Fatalf("send: %v", err)
	}
	if res[0] != int32(len(frames[0])) || res[1] != int32(len(frames[1])) {
		t.Errorf("small frames: sent %d and %d bytes, want %d and %d", res[0], res[1], len(frames[0]), len(frames[1]))
	}
	if res[2] <= 0 || res[2] >= int32(len(frames[2])) {
		t.Errorf("a MiB into a small socket: answer %d, want part of %d", res[2], len(frames[2]))
	}
	if syscall.Errno(-res[3]) != syscall.EAGAIN {
		t.Errorf("a full socket: answer %d, want -EAGAIN", res[3])
	}
	if syscall.Errno(-res[4]) != syscall.ENOTSOCK {
		t.Errorf("a pipe: answer %d, want -ENOTSOCK", res[4])
	}
	for i, s := range socks {
		n, werr := sendResult(res[i])
		done, tried, err := s.end(frames[i], true, n, werr)
		if err != nil || !tried || done != (i < 2) {
			t.Fatalf("end %d: done %v tried %v err %v", i, done, tried, err)
		}
	}
	if !bytes.Equal(full.partial, frames[3]) {
		t.Errorf("a full socket keeps %d bytes to write, want its whole frame", len(full.partial))
	}
	if _, err := sendResult(res[4]); !errors.Is(err, syscall.ENOTSOCK) {
		t.Errorf("a pipe's answer reads as %v", err)
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(cbig, int64(len(frames[2]))))
		got <- b
	}()
	if err := big.finish(10 * time.Second); err != nil {
		t.Fatalf("finish the big frame: %v", err)
	}
	if g := <-got; !bytes.Equal(g, frames[2]) {
		t.Errorf("the big frame arrived as %d bytes, not whole", len(g))
	}
	for i, c := range []net.Conn{ca, cb} {
		g := make([]byte, len(frames[i]))
		if _, err := io.ReadFull(c, g); err != nil || !bytes.Equal(g, frames[i]) {
			t.Errorf("socket %d read %q (%v), want its own frame", i, g[:min(len(g), 8)], err)
		}
	}
}

// The fan-out through io_uring delivers every event, in order, to every
// socket, among them one too slow for its socket: its writes come back
// short or refused and its own writer finishes them. The same with a
// write(2) per socket (GATEWAY_IO_URING=false), which must not use a ring.
func TestFanOutThroughURing(t *testing.T) {
	for _, tc := range []struct {
		name  string
		uring bool
	}{{"io_uring", true}, {"write", false}} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.uring {
				testRing(t) // the machine allows it
			}
			fanOutEvents(t, tc.uring)
		})
	}
}

func fanOutEvents(t *testing.T, uring bool) {
	const (
		fast   = 3 * fanChunk // several chunks of sockets
		events = 64
	)
	srv := startOursWith(t, func(o *Options) {
		o.WriteTimeout = 30 * time.Second // the slow socket is read last
		o.SendBuffer = 8192
		o.NoIOURing = !uring
	})
	s := srv.ours
	dial := func(rcvbuf int) *websocket.Conn {
		d := websocket.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nd := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
				if rcvbuf == 0 {
					return nil
				}
				var serr error
				err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf) })
				if err != nil {
					return err
				}
				return serr
			}}
			return nd.DialContext(ctx, network, addr)
		}}
		ws, _, err := d.Dial(srv.url, http.Header{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ws.Close() })
		if _, msg, err := ws.ReadMessage(); err != nil || !strings.Contains(string(msg), `"connected"`) {
			t.Fatalf("first frame %q (%v), want connected", msg, err)
		}
		return ws
	}
	slow := dial(4096)
	conns := make([]*websocket.Conn, fast)
	for i := range conns {
		conns[i] = dial(0)
	}

	// Events of 4 KiB, published one after another once every fast socket
	// has read the last: one frame per write, as a quiet stream goes. The
	// slow socket (8 KiB to send, 4 KiB to receive) reads nothing until the
	// end, so it is full after a few.
	pad := strings.Repeat("x", 4096)
	read := func(ws *websocket.Conn, want int) error {
		_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, msg, err := ws.ReadMessage()
		if err != nil {
			return fmt.Errorf("event %d: %w", want, err)
		}
		var f struct {
			Data struct {
				ID  int    `json:"id"`
				Pad string `json:"pad"`
			} `json:"data"`
		}
		if err := json.Unmarshal(msg, &f); err != nil {
			return fmt.Errorf("event %d is not whole JSON: %w", want, err)
		}
		if f.Data.ID != want || f.Data.Pad != pad {
			return fmt.Errorf("got event %d (%d bytes of padding), want %d", f.Data.ID, len(f.Data.Pad), want)
		}
		return nil
	}
	acks := make(chan error, fast)
	for _, ws := range conns {
		go func() {
			for want := 1; want <= events; want++ {
				err := read(ws, want)
				acks <- err
				if err != nil {
					return
				}
			}
		}()
	}
	for i := 1; i <= events; i++ {
		ev := notify.Event{Pos: notify.Position{Seq: int64(i), ID: int64(i)}, Table: "facts", Op: notify.Insert,
			Type: "budget_fact_created", Data: fmt.Appendf(nil, `{"id":%d,"pad":%q}`, i, pad), Time: time.Now()}
		s.Hub().Publish([]notify.Event{ev})
		for range fast {
			if err := <-acks; err != nil {
				t.Fatalf("a fast socket: %v", err)
			}
		}
	}
	for want := 1; want <= events; want++ {
		if err := read(slow, want); err != nil {
			t.Fatalf("the slow socket: %v", err)
		}
	}

	if full := testutil.ToFloat64(s.metrics.full); full == 0 {
		t.Error("no write found the slow socket full: the test did not reach the short-write path")
	}
	sent := testutil.ToFloat64(s.metrics.uringSends)
	if uring && sent < events*fast/2 {
		t.Errorf("%v writes went through io_uring, want most of the %d to the fast sockets", sent, events*fast)
	}
	if !uring && sent != 0 {
		t.Errorf("%v writes went through io_uring with it turned off", sent)
	}
}

// fullUnixSocket returns one end of a Unix stream socket pair with no room
// left to send.
func fullUnixSocket(t *testing.T) int32 {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fds[0]); syscall.Close(fds[1]) })
	if err := syscall.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4096)
	for size := len(b); size > 0; size /= 2 { // smaller writes fill what a bigger one could not
		for {
			_, err := syscall.Write(fds[0], b[:size])
			if errors.Is(err, syscall.EAGAIN) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	return int32(fds[0])
}
