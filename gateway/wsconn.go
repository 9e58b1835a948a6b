package gateway

import (
	"context"
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
// Frames wait in a queue guarded by mu. No goroutine writes while the queue
// is empty: the first frame offered to an idle connection starts a writer,
// which drains the queue and ends when it finds it empty. An idle
// connection therefore costs its reader's goroutine and nothing else.
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
	cut    atomic.Bool     // closed for breaking a limit: ignore what it sent after
	why    closeTag        // metrics: why it ended
	cancel context.CancelFunc

	pending atomic.Int32 // frames queued or being written, against max
	max     int32        // the send queue plus room for control frames

	mu      sync.Mutex
	q       []*entry    // frames waiting for the writer, oldest first
	spare   []*entry    // the writer's last batch, emptied, reused by q
	writing bool        // a writer drains q (or the attach still writes directly)
	closed  bool        // closing or gone: write nothing more
	ping    *time.Timer // the next control ping
}

// Keepalive, as melody had it: a control ping every pingPeriod; a client
// that has not answered one within pongWait is cut (the browser answers by
// itself).
const (
	pongWait   = 60 * time.Second
	pingPeriod = pongWait * 9 / 10
)

// maxBatchBytes caps one batched frame; more queued events wait for the
// next frame, written right after.
const maxBatchBytes = 64 << 10

// send queues e for the writer, starting one when none runs. It reports
// false when the queue is full (the hub then cuts the client as slow). A
// closing connection takes frames and drops them: it is going away.
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
		go c.drain()
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
		go c.drain()
	}
}

// drain writes what is queued until the queue is empty, then ends. A
// failed write closes the socket; the read loop then ends and cleans up.
func (c *wsConn) drain() {
	var done []*entry
	for {
		c.mu.Lock()
		if done != nil {
			clear(done) // the entries may leave the window; do not pin them
			c.spare = done[:0]
		}
		if c.closed || len(c.q) == 0 {
			c.writing = false
			if cap(c.q) > 64 {
				c.q, c.spare = nil, nil // a burst's queue goes back to the heap
			}
			c.mu.Unlock()
			return
		}
		batch := c.q
		c.q, c.spare = c.spare, nil
		c.mu.Unlock()
		c.sock.cork()
		err := c.writeAll(batch)
		if ferr := c.sock.uncork(); err == nil {
			err = ferr
		}
		if err != nil {
			c.t.log.Debug("websocket write", "err", err, "conn", c.id)
			c.mu.Lock()
			c.closed = true
			c.mu.Unlock()
			_ = c.ws.Close()
			return
		}
		for _, e := range batch {
			c.wrote(e)
		}
		done = batch
	}
}

// writeAll writes a batch taken from the queue: each frame on its own, or,
// with ?batch=1, each run of events as one frame holding a JSON array.
// Control frames always go alone, in their place.
func (c *wsConn) writeAll(batch []*entry) error {
	if !c.batch {
		for _, e := range batch {
			if err := c.write(e.frame); err != nil {
				return err
			}
		}
		return nil
	}
	for i := 0; i < len(batch); {
		j, size := i+1, len(batch[i].frame)
		if batch[i].isEvent() {
			for j < len(batch) && batch[j].isEvent() && size+len(batch[j].frame) < maxBatchBytes {
				size += len(batch[j].frame) + 1
				j++
			}
		}
		if err := c.writeRun(batch[i:j], size); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// batchBufs are the buffers batched frames are assembled in.
var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// writeRun writes run as one frame: a single frame as it is, several
// event frames as a JSON array of them.
func (c *wsConn) writeRun(run []*entry, size int) error {
	if len(run) == 1 {
		return c.write(run[0].frame)
	}
	bp := batchBufs.Get().(*[]byte)
	b := append((*bp)[:0], '[')
	if cap(b) < size+2 {
		b = append(make([]byte, 0, size+2), '[')
	}
	for k, e := range run {
		if k > 0 {
			b = append(b, ',')
		}
		b = append(b, e.frame...)
	}
	b = append(b, ']')
	err := c.write(b)
	if cap(b) <= maxBatchBytes+2 {
		*bp = b[:0]
		batchBufs.Put(bp)
	}
	return err
}

// wrote accounts for a frame written (its batch is on the socket): it
// leaves the queue, an event is counted, and its credit comes back (a
// lagging client then pulls the next events from the window).
func (c *wsConn) wrote(e *entry) {
	c.pending.Add(-1)
	c.t.metrics.sentWS(e)
	if c.client.sent() {
		c.t.hub.refill(c.client)
	}
}

// write writes one text frame, under the write timeout.
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
// WriteControl first waits for gorilla's write lock, which the writer
// holds while a frame is stuck in a full socket (the usual state of a slow
// client). A slow client's close waits as long as that frame may take:
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
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), deadline)
	// The close frame may wait in the writer's gathered frames (corkConn),
	// which Close flushes: a write still stuck gives up at the same
	// deadline, so Close cannot wait longer.
	_ = c.sock.SetWriteDeadline(deadline)
	_ = c.ws.Close()
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

// armPing schedules the next control ping. A timer, not a goroutine: an
// idle connection has nothing running but its reader.
func (c *wsConn) armPing() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.ping = time.AfterFunc(pingPeriod, c.keepalive)
	}
}

func (c *wsConn) keepalive() {
	// An error is the read loop's to notice, as with melody's pings.
	_ = c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.t.writeTimeout))
	c.armPing()
}

// isEvent tells an event's frame from the transport's own frames (which
// have no position).
func (e *entry) isEvent() bool { return !e.Pos.IsZero() }
