package gateway

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"

	"github.com/budget-rt/gateway/notify"
)

// wsConn is one WebSocket connection: who it is, its hub client, and its
// way out. It is the client's sink (the hub offers it frames) and, while it
// attaches, its emitter (the replay is written directly).
//
// Frames wait in a queue guarded by mu; writing says whose turn it is to
// write them. The first frame offered to an idle connection puts it on the
// fan-out's list (see fanout): a worker shared by every connection writes
// its frames into the socket if it has room, in one write(2) and without
// waiting. Only a socket without room gets a goroutine of its own (drain),
// which waits for room, writes the queue until it is empty, and ends. An
// idle connection therefore costs no goroutine (its reader parks: see
// idlePoller), and a busy one no goroutine start, no wake-up and no lock
// but its own.
type wsConn struct {
	id     string // connection_id, for /ws/disconnect
	user   User
	client *client
	t      *wsTransport
	ws     *websocket.Conn
	sock   *corkConn       // ws's socket
	last   string          // ?last_event_id=
	from   notify.Position // the head before the upgrade
	sub    *Subscription   // from the query: what it starts subscribed to
	nsub   int             // subscriptions it named, for ids of unnamed ones
	addr   netip.Addr      // the client's address, for the per-address limit
	rate   *rate.Limiter   // the client's messages
	batch  bool            // ?batch=1: events queued together go out as one frame
	zip    bool            // it negotiated permessage-deflate: events go compressed
	cut    atomic.Bool     // closed for breaking a limit: ignore what it sent after
	// readClosing: the reader sent a close frame (closeFromReader) and
	// reads until the client answers, under a deadline: it must not park.
	readClosing atomic.Bool
	lastPong    atomic.Int64 // unix nanoseconds of the last pong (or the attach)
	// parked: the connection has no reader; its socket waits in the idle
	// poller's set (idle_linux.go). Whoever clears it starts the reader.
	parked    atomic.Bool
	idleKey   uint64   // its key in the idle poller; 0 before it first parks
	pingSlot  uint8    // its group for the app-level ping (registry.slots)
	inIdleSet bool     // its socket was added to the set (later parks modify it)
	why       closeTag // metrics: why it ended
	cancel    context.CancelFunc

	pending atomic.Int32 // frames queued or being written, against max
	max     int32        // the send queue plus room for control frames

	mu      sync.Mutex
	q       []*entry    // frames waiting for the writer, oldest first
	spare   []*entry    // the writer's last batch, emptied, reused by q
	writing bool        // a writer drains q (or the attach still writes directly)
	closed  bool        // closing or gone: write nothing more
	ping    *time.Timer // the next control ping, or pong check
	// nextPing is when the next control ping is due; only the keepalive
	// timer's runs (one at a time) touch it after the attach.
	nextPing time.Time

	// cl is client's object, kept here rather than allocated apart: every
	// delivery reads both, and next to each other they take fewer cache
	// misses when thousands of connections no longer fit the caches.
	cl client
}

// Keepalive, as melody had it: a control ping every pingPeriod; a client
// that has not answered one within pongWait is cut (the browser answers by
// itself). Variables only so that a test can wait less.
var (
	pongWait   = 60 * time.Second
	pingPeriod = pongWait * 9 / 10
)

// maxBatchBytes caps one batched frame; more queued events wait for the
// next frame, written right after.
const maxBatchBytes = 64 << 10

// send queues e, and has the fan-out write it when the connection was
// idle. It reports false when the queue is full (the hub then cuts the
// client as slow). A closing connection takes frames and drops them: it is
// going away.
func (c *wsConn) send(e *entry) bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return true
	}
	if c.pending.Load() >= c.max {
		c.mu.Unlock()
		return false
	}
	c.pending.Add(1)
	c.q = append(c.q, e)
	start := !c.writing
	c.writing = true
	c.mu.Unlock()
	if start {
		c.t.fan.schedule(c)
	}
	return true
}

// startWriter hands the socket to the queue once the attach has written
// the connected frame and the replay; what was queued meanwhile follows.
func (c *wsConn) startWriter() {
	c.mu.Lock()
	start := len(c.q) > 0 && !c.closed
	c.writing = start
	c.mu.Unlock()
	if start {
		c.t.fan.schedule(c)
	}
}

// take hands the writer what is queued, or ends its turn when nothing is.
// done is the batch it wrote last, kept for the next.
func (c *wsConn) take(done []*entry) []*entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recycle(done)
	if c.idle() {
		return nil
	}
	batch := c.q
	c.q, c.spare = c.spare, nil
	return batch
}

// more recycles the batch the fan-out wrote and reports whether frames were
// queued meanwhile; if not, the writer's turn ends.
func (c *wsConn) more(done []*entry) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recycle(done)
	return !c.idle()
}

// recycle empties a written batch and keeps it for the queue to reuse.
// Call with mu held.
func (c *wsConn) recycle(done []*entry) {
	if done != nil {
		clear(done) // the entries may leave the window; do not pin them
		c.spare = done[:0]
	}
}

// idle ends the writer's turn (writing false) when nothing is queued or
// the connection is closing; a burst's queues then go back to the heap, so
// an idle connection does not keep them. Call with mu held.
func (c *wsConn) idle() bool {
	if !c.closed && len(c.q) > 0 {
		return false
	}
	c.writing = false
	if cap(c.q) > 64 || cap(c.spare) > 64 {
		c.q, c.spare = nil, nil
	}
	return true
}

// push is the fan-out's turn at c: it writes what c has queued if the
// socket takes it all now. Otherwise c's own writer (drain) takes over and
// waits for room, so no fan-out worker ever waits on one slow client. buf
// is the worker's buffer, for frames that go out together.
func (c *wsConn) push(buf *[]byte) {
	batch := c.take(nil)
	if batch == nil {
		return
	}
	b, shared := c.assemble(batch, (*buf)[:0])
	if !shared && cap(b) <= 4*maxBatchBytes {
		*buf = b[:0]
	}
	done, tried, err := c.sock.tryWrite(b, shared)
	c.pushed(batch, done, tried, err)
}

// pushed goes on after the fan-out's write of batch: done, all of it is
// in the socket; tried, part of it may be (the socket keeps the rest);
// err, the socket is broken.
func (c *wsConn) pushed(batch []*entry, done, tried bool, err error) {
	switch {
	case err != nil:
		c.fail(err)
	case !done:
		// tried: the socket took part of it, the rest waits in the socket;
		// not tried: nothing was written.
		c.t.metrics.socketFull()
		go c.drain(batch, tried)
	default:
		c.wroteAll(batch)
		if c.more(batch) {
			c.t.fan.schedule(c) // its next turn comes after the others'
		}
	}
}

// drain is the connection's own writer, for a socket that had no room: it
// waits for room (under the write timeout), finishes batch, then writes what
// is queued until the queue is empty, and ends. written says batch is
// already in the socket's hands (tryWrite kept its rest). A failed write
// closes the socket; the read loop then ends and cleans up.
func (c *wsConn) drain(batch []*entry, written bool) {
	var err error
	if written {
		err = c.sock.finish(c.t.writeTimeout)
	} else {
		err = c.writeBatch(batch)
	}
	for err == nil {
		c.wroteAll(batch)
		if batch = c.take(batch); batch == nil {
			return
		}
		err = c.writeBatch(batch)
	}
	c.fail(err)
}

// assemble returns batch as it goes on the wire: each frame whole, or, with
// ?batch=1, each run of events as one frame holding a JSON array of them
// (control frames always go alone, in their place). A single frame is the
// entry's own bytes (shared true); anything else is built in dst.
func (c *wsConn) assemble(batch []*entry, dst []byte) (b []byte, shared bool) {
	if len(batch) == 1 {
		return c.wireOf(batch[0]), true
	}
	if !c.batch {
		for _, e := range batch {
			dst = append(dst, c.wireOf(e)...)
		}
		return dst, false
	}
	for i := 0; i < len(batch); {
		j, size := i+1, len(batch[i].frame)
		if batch[i].isEvent() {
			for j < len(batch) && batch[j].isEvent() && size+len(batch[j].frame) < maxBatchBytes {
				size += len(batch[j].frame) + 1
				j++
			}
		}
		if j == i+1 {
			dst = append(dst, c.wireOf(batch[i])...)
		} else {
			// An array is this connection's own: it goes uncompressed.
			dst = append(appendHeader(dst, size+2), '[')
			for k, e := range batch[i:j] {
				if k > 0 {
					dst = append(dst, ',')
				}
				dst = append(dst, e.frame...)
			}
			dst = append(dst, ']')
		}
		i = j
	}
	return dst, false
}

// wireOf is e's frame as this connection sends it alone: compressed when
// it negotiated compression and e is an event (the transport's own frames
// are small, and each connection's own).
func (c *wsConn) wireOf(e *entry) []byte {
	if c.zip && e.isEvent() {
		return e.deflated()
	}
	return e.wire
}

// batchBufs are the buffers the connections' own writers assemble in.
var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// writeBatch writes batch, waiting for room under the write timeout.
func (c *wsConn) writeBatch(batch []*entry) error {
	bp := batchBufs.Get().(*[]byte)
	b, shared := c.assemble(batch, (*bp)[:0])
	err := c.sock.writeWithin(b, c.t.writeTimeout)
	if !shared && cap(b) <= 4*maxBatchBytes {
		*bp = b[:0]
	}
	batchBufs.Put(bp)
	return err
}

// wroteAll accounts for a batch written (it is in the socket): each frame
// leaves the queue, each event is counted, and their credit comes back (a
// lagging client then pulls the next events from the window).
func (c *wsConn) wroteAll(batch []*entry) {
	for _, e := range batch {
		c.pending.Add(-1)
		c.t.metrics.sentWS(e)
		if c.client.sent() {
			c.t.hub.refill(c.client)
		}
	}
}

// fail gives up on a broken socket: nothing more is written, and closing it
// ends the read loop, which cleans up. The close runs apart: the caller may
// be a fan-out worker, which must not wait.
func (c *wsConn) fail(err error) {
	c.t.log.Debug("websocket write", "err", err, "conn", c.id)
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	go c.ws.Close()
}

// write writes one text frame through gorilla, under the write timeout:
// the attach's frames, before the queue's writers start.
func (c *wsConn) write(b []byte) error {
	if err := c.ws.SetWriteDeadline(time.Now().Add(c.t.writeTimeout)); err != nil {
		return err
	}
	return c.ws.WriteMessage(websocket.TextMessage, b)
}

// event and reset make the connection the emitter of its own replay,
// written before the writer starts.
func (c *wsConn) event(e *entry) error { return c.write(e.frame) }

func (c *wsConn) reset(reason string, head notify.Position) error {
	return c.write(resetFrame(reason, head))
}

// close sends the close frame directly (WriteControl is safe beside the
// writer, and the queue may be full) and closes the socket; the read loop
// then ends and cleans up. The writer stops after the frame it is writing.
// The close frame first waits for the socket, which the writer holds
// while a frame is stuck in it (the usual state of a slow client). A slow client's close waits as long as that frame may take:
// giving up sooner would cut the frame short and the client would see an
// abnormal closure, not 4008. At shutdown a stalled client gets a second,
// so it cannot hold up the exit.
func (c *wsConn) close(code int, reason string) {
	c.why.code(code)
	c.stop()
	wait := time.Second
	if code == CloseSlow {
		wait = c.t.writeTimeout
	}
	deadline := time.Now().Add(wait)
	// Cut first: a write stuck in the socket (the writer's, or the rest of
	// a frame) gives up at the deadline, and the close frame, which waits
	// for it, cannot be held up longer either. The close frame may also
	// wait among the attach's gathered frames (corkConn), which Close
	// flushes under the same deadline.
	_ = c.sock.cut(deadline)
	payload := websocket.FormatCloseMessage(code, reason)
	if c.sock.closeWith(closeFrame(payload)) {
		return
	}
	_ = c.ws.WriteControl(websocket.CloseMessage, payload, deadline)
	_ = c.ws.Close()
}

// closeFrame is a server's (unmasked) close frame around payload; a control
// frame is never compressed.
func closeFrame(payload []byte) []byte {
	return append([]byte{0x88, byte(len(payload))}, payload...)
}

// stop marks the connection closing: nothing more is queued or written,
// the keepalive stops, and an attach in progress is cancelled.
func (c *wsConn) stop() {
	c.mu.Lock()
	c.closed = true
	if c.ping != nil {
		c.ping.Stop()
	}
	c.mu.Unlock()
	c.cancel()
}

// armPing schedules the first control ping. A timer, not a goroutine: an
// idle connection has nothing running. The first ping comes at a random
// point of the period's second half: connections that came together (the
// reconnect storm after a restart) would otherwise be pinged together for
// as long as they last, every period a burst of sends and of pongs that
// wake readers, which the events of that moment wait behind.
func (c *wsConn) armPing() {
	first := pingPeriod/2 + rand.N(pingPeriod/2+1)
	c.nextPing = time.Now().Add(first)
	c.armKeepalive(first)
}

func (c *wsConn) armKeepalive(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.ping = time.AfterFunc(d, c.keepalive)
	}
}

// keepalive sends the control ping when it is due, and cuts a client
// whose last pong is pongWait old: the read deadline did that alone when
// every reader waited in gorilla, but a parked connection has none
// running. It runs at the earlier of the two times, so a client is cut as
// soon as before.
func (c *wsConn) keepalive() {
	now := time.Now()
	dead := time.Unix(0, c.lastPong.Load()).Add(pongWait)
	if !now.Before(dead) {
		// The reader started for the closed socket cleans up.
		_ = c.ws.Close()
		return
	}
	if !now.Before(c.nextPing) {
		// An error is the read loop's to notice, as with melody's pings.
		_ = c.ws.WriteControl(websocket.PingMessage, nil, now.Add(c.t.writeTimeout))
		c.nextPing = now.Add(pingPeriod)
	}
	next := c.nextPing
	if dead.Before(next) {
		next = dead
	}
	c.armKeepalive(next.Sub(now))
}

// wake gives a parked connection a reader again: its socket turned
// readable, or was closed.
func (c *wsConn) wake() {
	if c.parked.CompareAndSwap(true, false) {
		idle.parkedN.Add(-1)
		go c.t.reading(c)
	}
}

// isEvent tells an event's frame from the transport's own frames (which
// have no position).
func (e *entry) isEvent() bool { return !e.Pos.IsZero() }
