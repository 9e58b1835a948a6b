package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/budget-rt/gateway/notify"
)

// The answer to the upgrade (101) and the connected frame leave the gateway
// in one write: the client's socket receives them as one TCP segment (Go
// sets TCP_NODELAY, so two writes would be two segments). A reconnect storm
// is thousands of handshakes; each write is a system call on both sides.
func TestUpgradeAnswerAndConnectedFrameInOneSegment(t *testing.T) {
	srv := startOurs(t)
	addr := strings.TrimPrefix(strings.TrimSuffix(srv.url, "/api/v1/budget/ws"), "ws://")
	conn, _ := dialUpgraded(t, addr)
	info := tcpInfo(t, conn)
	if info.Data_segs_in != 1 {
		t.Fatalf("the 101 and the connected frame came in %d TCP segments, want 1 (one write)", info.Data_segs_in)
	}
}

// Listen's sockets have no TCP keepalive (Go's default would set it up
// with four system calls per accepted connection; see Listen).
func TestListenWithoutKeepalive(t *testing.T) {
	ln, err := Listen(t.Context(), "127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var on int
	var serr error
	if err := raw.Control(func(fd uintptr) { on, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	if on != 0 {
		t.Fatal("an accepted socket has SO_KEEPALIVE on")
	}
}

// At shutdown each client's close frame and the end of its stream leave in
// one TCP segment (a frame, then a FIN, would be two trips through both
// ends' TCP stacks for each of thousands of clients), and the client reads
// the whole close frame, 1001 and its reason, then the end of the stream.
func TestShutdownCloseFrameAndFINInOneSegment(t *testing.T) {
	s := New(slog.New(slog.DiscardHandler), nil, nil, Options{Window: 100, SendQueue: 16, WriteTimeout: 10 * time.Second,
		MaxMessageBytes: 4096, MessageRate: 2, MessageBurst: 20, HeaderTimeout: 10 * time.Second,
		HandshakeTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 32768})
	s.Hub().Load(nil, notify.Position{}, true)
	srv := s.HTTPServer()
	addr := strings.TrimPrefix(serveBench(t, srv), "ws://")
	t.Cleanup(func() { _ = srv.Close() })
	conn, br := dialUpgraded(t, addr)
	// The connection is attached once the hub counts it: only then is the
	// hub's shutdown, not the transport's, the one that closes it.
	for deadline := time.Now().Add(10 * time.Second); s.Hub().Len() != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the connection was not attached within 10 s")
		}
	}
	before := segsIn(t, conn)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s.Close(ctx)
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("read to the end of the stream: %v", err)
	}
	want := append([]byte{0x88, byte(2 + len(ReasonShutdown)), 0x03, 0xe9}, ReasonShutdown...)
	if !bytes.Equal(rest, want) {
		t.Fatalf("after the connected frame came % x, want the close frame % x and the end", rest, want)
	}
	if n := segsIn(t, conn) - before; n != 1 {
		t.Fatalf("the close frame and the end of the stream came in %d TCP segments, want 1", n)
	}
}

// dialUpgraded opens a WebSocket by hand and reads the 101 and the
// connected frame.
func dialUpgraded(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET /api/v1/budget/ws HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade answered %s", resp.Status)
	}
	// The first frame: an unmasked final text frame, its length in 7 or
	// 7+16 bits.
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(br, hdr); err != nil {
		t.Fatal(err)
	}
	n := int(hdr[1] & 0x7f)
	if n == 126 {
		ext := make([]byte, 2)
		if _, err := io.ReadFull(br, ext); err != nil {
			t.Fatal(err)
		}
		n = int(ext[0])<<8 | int(ext[1])
	}
	if hdr[0] != 0x81 || n > 4096 {
		t.Fatalf("first frame header % x, length %d: want a final text frame", hdr, n)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(br, payload); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(payload, []byte(`"type":"connected"`)) {
		t.Fatalf("first frame %s: want connected", payload)
	}
	return conn, br
}

// tcpInfo is the kernel's TCP_INFO of conn.
func tcpInfo(t *testing.T, conn net.Conn) *unix.TCPInfo {
	t.Helper()
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var serr error
	if err := raw.Control(func(fd uintptr) { info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	return info
}

func segsIn(t *testing.T, conn net.Conn) uint32 { return tcpInfo(t, conn).Segs_in }

// With reusePort a second gateway listens on the same address while the
// first still does, and takes every connection once the first has closed
// its listener; without it the second cannot listen there.
func TestListenReusePort(t *testing.T) {
	first, err := Listen(t.Context(), "127.0.0.1:0", true)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	addr := first.Addr().String()
	if ln, err := Listen(t.Context(), addr, false); err == nil {
		ln.Close()
		t.Fatal("a listener without SO_REUSEPORT opened an address taken with it")
	} else if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("listen without SO_REUSEPORT: %v, want EADDRINUSE", err)
	}
	second, err := Listen(t.Context(), addr, true)
	if err != nil {
		t.Fatalf("second listener with SO_REUSEPORT: %v", err)
	}
	defer second.Close()
	first.Close()
	accepted := make(chan error, 1)
	go func() {
		c, err := second.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial after the first listener closed: %v", err)
	}
	defer c.Close()
	select {
	case err := <-accepted:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second listener did not accept within 10 s")
	}
}
