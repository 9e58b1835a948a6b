package gateway

import (
	"bufio"
	"net"
	"net/http"
	"sync"
)

// corkConn is a client's socket as gorilla sees it. While it is corked,
// writes are gathered in a buffer and go out in one system call when it is
// uncorked, or when the buffer holds corkFlushBytes. The connection's
// writer corks while it writes what it took from its queue, so frames
// queued together cost one write(2) instead of one each: on this kind of
// virtual machine the system call is most of what a delivery costs. Each
// frame stays a frame of its own (the client sees no difference), whole
// and in order: gorilla serializes its writes, and the buffer keeps their
// order. A frame written by another goroutine meanwhile (a close frame, a
// pong) joins the buffer behind the others; Close flushes the buffer
// before it closes the socket, so such a close frame is not lost.
type corkConn struct {
	net.Conn

	mu     sync.Mutex
	corked bool
	buf    *[]byte // from corkBufs while corked
	err    error   // the first failed flush: the socket is broken
}

// corkFlushBytes bounds what one writer gathers before it writes.
const corkFlushBytes = 64 << 10

var corkBufs = sync.Pool{New: func() any { b := make([]byte, 0, 8192); return &b }}

func (c *corkConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.Conn.Write(b)
	}
	if c.err != nil {
		return 0, c.err
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

// uncork writes what was gathered and stops gathering.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	err := c.flush()
	c.release()
	return err
}

// flush writes the buffer, under the deadline gorilla set for the last
// frame (or a shorter one a close frame set since). Call with mu held.
func (c *corkConn) flush() error {
	if c.err != nil {
		return c.err
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

// Close writes what is gathered (a close frame may be among it), then
// closes the socket.
func (c *corkConn) Close() error {
	c.mu.Lock()
	c.corked = false
	_ = c.flush()
	c.release()
	if c.err == nil {
		c.err = net.ErrClosed
	}
	c.mu.Unlock()
	return c.Conn.Close()
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
	w.conn = &corkConn{Conn: nc}
	return w.conn, brw, nil
}
