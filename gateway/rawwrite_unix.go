//go:build unix

package gateway

import (
	"errors"
	"syscall"
)

// rawWriter makes one write(2) into a socket that never waits for room.
// It is made once per connection: a closure per write would be an
// allocation per delivery.
type rawWriter struct {
	rc  syscall.RawConn
	b   []byte
	n   int
	err error
	fn  func(fd uintptr) bool
}

func newRawWriter(rc syscall.RawConn) *rawWriter {
	w := &rawWriter{rc: rc}
	w.fn = w.write
	return w
}

// writeLast writes b, the connection's last frame, and ends the stream:
// sent with MSG_MORE (Linux) the frame waits in the socket for the FIN
// that shutdown adds to it, and both leave in one segment instead of two,
// each of which would cross both ends' TCP stacks (at shutdown, 10,000 of
// each). shutdown rather than close: close would send a reset instead if
// the client's last bytes were still unread, and drop the frame with it.
// The stream is ended only when all of b was taken; n is how much was.
func (w *rawWriter) writeLast(b []byte) (n int, err error) {
	cerr := w.rc.Write(func(fd uintptr) bool {
		for {
			n, err = syscall.SendmsgN(int(fd), b, nil, nil, lastFrameFlags)
			if !errors.Is(err, syscall.EINTR) {
				break
			}
		}
		if err == nil && n == len(b) {
			err = syscall.Shutdown(int(fd), syscall.SHUT_WR)
		}
		return true
	})
	if cerr != nil {
		return 0, cerr
	}
	if errors.Is(err, syscall.EAGAIN) {
		return 0, nil
	}
	return n, err
}

func (w *rawWriter) write(fd uintptr) bool {
	for {
		w.n, w.err = writeNoPark(fd, w.b)
		if !errors.Is(w.err, syscall.EINTR) {
			return true // done, whatever happened: never park for room
		}
	}
}

// Write returns how much of b the socket took (0 when it is full). Call it
// from one goroutine at a time (corkConn's lock).
func (w *rawWriter) Write(b []byte) (int, error) {
	w.b = b
	err := w.rc.Write(w.fn)
	w.b = nil
	if err != nil {
		return 0, err // closed, or past its write deadline
	}
	if errors.Is(w.err, syscall.EAGAIN) {
		return 0, nil
	}
	if w.err != nil {
		return 0, w.err
	}
	return w.n, nil
}
