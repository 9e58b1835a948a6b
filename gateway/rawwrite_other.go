//go:build !unix

package gateway

import "syscall"

// rawWrite is the unix fast path; elsewhere every write takes the
// connection's blocking writer.
func rawWrite(syscall.RawConn, []byte) (int, error) { return 0, nil }
