//go:build unix

package gateway

import (
	"errors"
	"syscall"
)

// rawWrite makes one write(2) of b into the socket, never waiting for room:
// it returns how much the socket took (0 when it is full).
func rawWrite(rc syscall.RawConn, b []byte) (int, error) {
	var (
		n    int
		werr error
	)
	err := rc.Write(func(fd uintptr) bool {
		for {
			n, werr = syscall.Write(int(fd), b)
			if !errors.Is(werr, syscall.EINTR) {
				return true // done, whatever happened: never park for room
			}
		}
	})
	if err != nil {
		return 0, err // closed, or past its write deadline
	}
	if errors.Is(werr, syscall.EAGAIN) {
		return 0, nil
	}
	if werr != nil {
		return 0, werr
	}
	return n, nil
}
