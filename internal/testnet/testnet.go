// Package testnet is what the tests of several packages need from the
// machine: a loopback TCP connection, and the rule for a kernel or sandbox
// that refuses io_uring. Only tests import it.
package testnet

import (
	"net"
	"os"
	"testing"
)

// TCPPair returns both ends of a loopback TCP connection, closed when the
// test ends.
func TCPPair(tb testing.TB) (client, server *net.TCPConn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	s, ok := <-accepted
	if !ok {
		tb.Fatal("accept failed")
	}
	tb.Cleanup(func() { s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// NoIOURing is the variable that says the machine refuses io_uring.
const NoIOURing = "GATEWAY_TEST_NO_IO_URING"

// NeedRing deals with err, a ring's setup error: a machine that refuses
// io_uring fails the test rather than skipping it silently, unless
// NoIOURing says so.
func NeedRing(tb testing.TB, err error) {
	tb.Helper()
	if err == nil {
		return
	}
	if os.Getenv(NoIOURing) != "" {
		tb.Skipf("io_uring refused here (%v), as %s says", err, NoIOURing)
	}
	tb.Fatalf("%v: on a kernel or sandbox that refuses io_uring, set %s=1", err, NoIOURing)
}
