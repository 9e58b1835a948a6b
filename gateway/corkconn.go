package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"math"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// corkConn is a client's socket, as gorilla and the connection's writers
// see it.
//
// The fan-out writes events with tryWrite: straight into the socket if it
// has room, without waiting and without a goroutine of the connection's
// own. What a full socket did not take is kept in partial, which every
// later write sends first, so a frame is never cut by another (a pong from
// gorilla, say); the connection's blocking writer (wsConn.drain) finishes it.
//
// While it is corked, writes are gathered in a buffer and go out in one
// system call when it is flushed or uncorked, or when the buffer holds
// corkFlushBytes. It is corked from the upgrade until the attach is done:
// gorilla's answer (the 101) and the connected frame leave in one write,
// then a replay of many events in a few rather than one each. On this kind
// of virtual machine the system call is most of what a delivery, or a
// handshake, costs. Each frame stays a frame of its own, whole and in
// order. A frame written by another goroutine meanwhile (a close frame,
// a pong) joins the buffer behind the others; Close flushes the buffer
// before it closes the socket, so such a close frame is not lost.
type corkConn struct {
	net.Conn
	raw *rawWriter // the descriptor, for tryWrite; nil when the socket has none
	fd  int32      // the descriptor's number, for the fan-out's io_uring; -1: none

	mu      sync.Mutex
	corked  bool
	buf     *[]byte     // from corkBufs while corked
	partial []byte      // the rest of a frame tryWrite could not finish
	isCut   atomic.Bool // closing: write deadlines only come nearer
	answer  bool        // the next write is gorilla's answer to the upgrade
	deflate bool        // that answer agreed to permessage-deflate
	err     error       // the first failed write: the socket is broken

	rd frameReader // the reading side: gorilla's reads, the reader's look ahead (wsread.go)
	// onClose runs once the socket is closed, by whichever path: a
	// connection whose reader is parked has no read to fail (idlePoller).
	onClose func()
}

// corkFlushBytes bounds what one writer gathers before it writes.
const corkFlushBytes = 64 << 10

var corkBufs = sync.Pool{New: func() any { b := make([]byte, 0, 8192); return &b }}

func (c *corkConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.answer {
		// gorilla negotiates compression and says so only in its answer,
		// which it writes in one piece: read its decision there.
		c.answer = false
		c.deflate = bytes.Contains(b, []byte("\r\nSec-WebSocket-Extensions: permessage-deflate"))
	}
	if err := c.settle(); err != nil {
		return 0, err
	}
	if !c.corked {
		n, err := c.Conn.Write(b)
		c.undeadline()
		return n, err
	}
	*c.buf = append(*c.buf, b...)
	if len(*c.buf) >= corkFlushBytes {
		if err := c.flush(); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}

// cork starts gathering writes.
func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked = true
	if c.buf == nil {
		c.buf = corkBufs.Get().(*[]byte)
	}
	c.mu.Unlock()
}

// flushGathered writes what was gathered and goes on gathering.
func (c *corkConn) flushGathered() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.flush()
	c.undeadline()
	return err
}

// uncork writes what was gathered and stops gathering.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	err := c.flush()
	c.release()
	c.undeadline()
	return err
}

// tryWrite writes b as far as the socket takes it now, without waiting.
// It reports done when all of b is written; otherwise what is left is kept
// to go before anything else, and the caller's blocking writer must call
// finish. shared says b stays unchanged (an event's wire bytes), so the
// rest need not be copied. tried false means nothing was attempted: the
// socket is busy (a write is in progress, perhaps stuck in a full socket)
// or cannot be written to directly.
func (c *corkConn) tryWrite(b []byte, shared bool) (done, tried bool, err error) {
	if c.raw == nil || !c.mu.TryLock() {
		return false, false, nil
	}
	if c.err != nil {
		c.mu.Unlock()
		return false, true, c.err
	}
	if c.corked || len(c.partial) > 0 {
		c.mu.Unlock()
		return false, false, nil
	}
	n, err := c.raw.Write(b)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.mu.Unlock()
		return false, false, nil // being cut: the blocking path tells
	}
	return c.end(b, shared, n, err)
}

// begin holds the socket for a write made elsewhere (the fan-out's
// io_uring) and returns its descriptor, which stays open until end: every
// close of the socket goes through this lock (Close, closeWith) and marks
// it broken first. It returns -1, holding nothing, when the socket is
// busy, being cut or cannot be written to directly, and with the error
// when it is broken: what tryWrite reports then.
func (c *corkConn) begin() (fd int32, err error) {
	if c.fd < 0 || c.raw == nil || !c.mu.TryLock() {
		return -1, nil
	}
	switch {
	case c.err != nil:
		err = c.err
	case c.corked || len(c.partial) > 0 || c.isCut.Load():
	default:
		return c.fd, nil // held
	}
	c.mu.Unlock()
	return -1, err
}

// end lets go of the socket after a write of b that took n bytes, or
// failed with err, and reports as tryWrite does. Call with mu held (begin,
// tryWrite).
func (c *corkConn) end(b []byte, shared bool, n int, err error) (done, tried bool, _ error) {
	defer c.mu.Unlock()
	if err != nil {
		c.err = err
		return false, true, err
	}
	if n == len(b) {
		return true, true, nil
	}
	rest := b[n:]
	if !shared {
		rest = append([]byte(nil), rest...)
	}
	c.partial = rest
	return false, true, nil
}

// finish writes what tryWrite left, waiting for room at most d.
func (c *corkConn) finish(d time.Duration) error {
	return c.writeWithin(nil, d)
}

// writeWithin writes what tryWrite left, then b, waiting for room at most
// d. The deadline is set under the lock, with the write: gorilla's own
// deadline for a control frame (a second for a pong) must not cut it.
func (c *corkConn) writeWithin(b []byte, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	if !c.isCut.Load() {
		if err := c.Conn.SetWriteDeadline(time.Now().Add(d)); err != nil {
			return err
		}
	}
	defer c.undeadline()
	if err := c.settle(); err != nil || len(b) == 0 {
		return err
	}
	if _, err := c.Conn.Write(b); err != nil {
		c.err = err
		return err
	}
	return nil
}

// undeadline clears the write deadline after a blocking write, unless the
// socket is being cut: a deadline is a point in time, and once it passed
// it would fail every later write, tryWrite's among them. Call with mu
// held.
func (c *corkConn) undeadline() {
	if !c.isCut.Load() {
		_ = c.Conn.SetWriteDeadline(time.Time{})
	}
}

// SetWriteDeadline, which gorilla calls before each frame it writes, waits
// for a write in progress, as gorilla's own write lock made it wait when
// every frame went through gorilla: a pong's one-second deadline must not
// cut a long write to a slow client. cut changes the deadline at once.
func (c *corkConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.isCut.Load() {
		return nil // closing: the deadline cut set stands
	}
	return c.Conn.SetWriteDeadline(t)
}

// cut sets the write deadline without waiting, for good: a write stuck in
// a full socket gives up at t, and no later write may wait beyond it.
func (c *corkConn) cut(t time.Time) error {
	c.isCut.Store(true)
	return c.Conn.SetWriteDeadline(t)
}

// settle writes what tryWrite left, if anything. Call with mu held.
func (c *corkConn) settle() error {
	if c.err != nil {
		return c.err
	}
	if len(c.partial) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.partial)
	c.partial = nil
	if err != nil {
		c.err = err
	}
	return err
}

// flush writes the buffer, under the deadline gorilla set for the last
// frame (or a shorter one a close frame set since). Call with mu held.
func (c *corkConn) flush() error {
	if err := c.settle(); err != nil {
		return err
	}
	if c.buf == nil || len(*c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(*c.buf)
	*c.buf = (*c.buf)[:0]
	if err != nil {
		c.err = err
	}
	return err
}

// release gives the buffer back to the pool, unless a burst grew it far
// beyond its usual size. Call with mu held.
func (c *corkConn) release() {
	if c.buf != nil && cap(*c.buf) <= 2*corkFlushBytes {
		*c.buf = (*c.buf)[:0]
		corkBufs.Put(c.buf)
	}
	c.buf = nil
}

// closeWith writes frame, the connection's last (a close frame), ends the
// stream and closes the socket, the frame and the FIN in one segment
// (rawWriter.writeLast); frames still gathered go first, in the same
// write. Like any write it waits for one in progress, which the deadline
// cut set bounds. It reports false, having written nothing, when the socket
// cannot take the frame now (full, or no descriptor to write to): the
// caller then writes it the blocking way.
func (c *corkConn) closeWith(frame []byte) bool {
	if c.raw == nil {
		return false
	}
	c.mu.Lock()
	if c.err != nil || len(c.partial) > 0 {
		c.mu.Unlock()
		return false
	}
	out, gathered := frame, 0
	if c.corked && len(*c.buf) > 0 {
		gathered = len(*c.buf)
		out = append(*c.buf, frame...)
		*c.buf = out
	}
	n, err := c.raw.writeLast(out)
	switch {
	case err != nil:
		c.err = err // broken, or past the deadline cut set: nothing more can go
	case n == 0:
		if gathered > 0 {
			*c.buf = (*c.buf)[:gathered] // the caller writes the frame behind them
		}
		c.mu.Unlock()
		return false
	case n < len(out):
		// The rest waits for room (under the deadline cut set); the FIN
		// follows it on its own, at the close.
		c.partial = append([]byte(nil), out[n:]...)
		_ = c.settle()
	}
	if c.corked {
		*c.buf = (*c.buf)[:0]
		c.corked = false
	}
	if c.err == nil {
		c.err = net.ErrClosed
	}
	c.release()
	c.mu.Unlock()
	_ = c.Conn.Close()
	c.closed()
	return true
}

// Close writes what is gathered (a close frame may be among it), then
// closes the socket.
func (c *corkConn) Close() error {
	if !c.isCut.Load() {
		_ = c.cut(time.Now().Add(time.Second)) // no write may hold up the close for long
	}
	c.mu.Lock()
	c.corked = false
	_ = c.flush()
	c.release()
	if c.err == nil {
		c.err = net.ErrClosed
	}
	c.mu.Unlock()
	err := c.Conn.Close()
	c.closed()
	return err
}

// closed runs onClose, after the socket is closed.
func (c *corkConn) closed() {
	if c.onClose != nil {
		c.onClose()
	}
}

// corkingWriter hands gorilla's upgrade a corkConn in place of the
// hijacked socket.
type corkingWriter struct {
	http.ResponseWriter
	conn *corkConn
}

func (w *corkingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.conn = &corkConn{Conn: nc, answer: true, fd: -1}
	w.conn.cork() // until the attach is done (wsTransport.connect)
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			w.conn.raw = newRawWriter(rc) // without it, every write takes the blocking path
			_ = rc.Control(func(fd uintptr) {
				if fd <= math.MaxInt32 {
					w.conn.fd = int32(fd)
				}
			})
		}
	}
	return w.conn, brw, nil
}
