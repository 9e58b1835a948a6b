//go:build !unix

package gateway

import "syscall"

// rawWriter is the unix fast path; elsewhere every write takes the
// connection's blocking writer.
type rawWriter struct{}

func newRawWriter(syscall.RawConn) *rawWriter { return nil }

func (*rawWriter) Write([]byte) (int, error) { return 0, nil }

func (*rawWriter) writeLast([]byte) (int, error) { return 0, nil }
