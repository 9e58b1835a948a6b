package iouring

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/budget-rt/gateway/internal/testnet"
)

// testRing is a ring for a test (see testnet.NeedRing).
func testRing(t *testing.T, entries uint32) *Ring {
	t.Helper()
	r, err := New(entries)
	testnet.NeedRing(t, err)
	t.Cleanup(r.Close)
	return r
}

// tcpPair returns the descriptors of both ends of a loopback TCP
// connection, each a duplicate the test owns: the Go connections are
// closed at once, so that closing a descriptor ends its side.
func tcpPair(t *testing.T) (a, b int) {
	t.Helper()
	client, server := testnet.TCPPair(t)
	dup := func(c *net.TCPConn) int {
		raw, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		fd := -1
		if cerr := raw.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); cerr != nil {
			t.Fatal(cerr)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = unix.Close(fd) })
		_ = c.Close()
		return fd
	}
	return dup(client), dup(server)
}

// waitReadable waits until each socket has something to read (or its end):
// loopback usually hands bytes over within write(2), but a busy machine may
// leave that to a kernel thread.
func waitReadable(t *testing.T, fds ...int) {
	t.Helper()
	for _, fd := range fds {
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
		for {
			n, err := unix.Poll(p, 10_000)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n == 0 {
				t.Fatalf("socket %d never became readable (%v)", fd, err)
			}
			break
		}
	}
}

// One call reads each socket into its own buffer and answers for each as
// recv(2) would: the bytes there were (at most the buffer), nothing yet
// (EAGAIN, at once: it never waits), the end of the stream, or the
// socket's own error. Whatever did not fit stays for the next read.
func TestRecvAnswersForEachSocket(t *testing.T) {
	r := testRing(t, 8)
	one, oneW := tcpPair(t)
	two, twoW := tcpPair(t)
	empty, _ := tcpPair(t)
	ended, endedW := tcpPair(t)
	long, longW := tcpPair(t)
	notSocket, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(notSocket)

	for fd, msg := range map[int]string{oneW: "a", twoW: "bb", longW: "0123456789"} {
		if _, err := unix.Write(fd, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Close(endedW); err != nil {
		t.Fatal(err)
	}
	waitReadable(t, one, two, ended, long)
	fds := []int32{int32(one), int32(two), int32(empty), int32(ended), int32(long), int32(notSocket)}
	bufs := make([][]byte, len(fds))
	for i := range bufs {
		bufs[i] = make([]byte, 4)
	}
	res := make([]int32, len(fds))
	if err := r.Recv(fds, bufs, res); err != nil {
		t.Fatal(err)
	}
	want := []int32{1, 2, -int32(syscall.EAGAIN), 0, 4, -int32(syscall.ENOTSOCK)}
	for i := range want {
		if res[i] != want[i] {
			t.Errorf("socket %d: answer %d, want %d", i, res[i], want[i])
		}
	}
	if got := string(bufs[0][:1]) + "|" + string(bufs[1][:2]) + "|" + string(bufs[4]); got != "a|bb|0123" {
		t.Errorf("read %q, want %q", got, "a|bb|0123")
	}
	// The rest of the long one is still there, for the next call.
	rest := make([]byte, 16)
	res = res[:1]
	if err := r.Recv([]int32{int32(long)}, [][]byte{rest}, res); err != nil {
		t.Fatal(err)
	}
	if res[0] != 6 || string(rest[:6]) != "456789" {
		t.Errorf("second read: %d %q, want 6 \"456789\"", res[0], rest[:max(res[0], 0)])
	}
}

// Sends and receives through rings, many sockets to a call, arrive whole
// and each at its own socket, over as many calls as it takes.
func TestSendThenRecvManySockets(t *testing.T) {
	const n = 40 // more than one ring's worth: the callers chunk
	send, recv := testRing(t, 16), testRing(t, 16)
	var ends, peers []int32
	for range n {
		a, b := tcpPair(t)
		ends, peers = append(ends, int32(a)), append(peers, int32(b))
	}
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = fmt.Appendf(nil, "message to socket %d", i)
	}
	res := make([]int32, 16)
	for from := 0; from < n; from += 16 {
		to := min(from+16, n)
		if err := send.Send(ends[from:to], msgs[from:to], res[:to-from]); err != nil {
			t.Fatal(err)
		}
		for i, r := range res[:to-from] {
			if int(r) != len(msgs[from+i]) {
				t.Fatalf("send %d: answer %d, want %d", from+i, r, len(msgs[from+i]))
			}
		}
	}
	for _, fd := range peers {
		waitReadable(t, int(fd))
	}
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, 64)
	}
	for from := 0; from < n; from += 16 {
		to := min(from+16, n)
		if err := recv.Recv(peers[from:to], bufs[from:to], res[:to-from]); err != nil {
			t.Fatal(err)
		}
		for i, r := range res[:to-from] {
			if r < 0 || !bytes.Equal(bufs[from+i][:r], msgs[from+i]) {
				t.Errorf("socket %d: answer %d, read %q, want %q", from+i, r, bufs[from+i][:max(r, 0)], msgs[from+i])
			}
		}
	}
	if err := send.Send(ends, msgs, make([]int32, n)); err == nil {
		t.Error("40 sends through a ring of 16: no error")
	}
}
