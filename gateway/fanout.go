package gateway

import (
	"errors"
	"runtime"
	"sync"
	"syscall"

	"github.com/budget-rt/gateway/internal/iouring"
)

// fanout writes the frames queued for connections, from a few goroutines
// shared by every connection rather than one per connection.
//
// On a small virtual machine a delivery is mostly its write(2); starting a
// goroutine per connection per event, and waking a thread to run it, cost
// about as much again. A worker here goes down the list of connections
// with frames queued and writes each one's frames straight into its
// socket, without waiting: a socket without room gets the connection's own
// goroutine (wsConn.drain), so one slow client holds up no one. Workers
// start when connections are listed and end when the list is empty, at
// most one per CPU the Go runtime may use. Where the kernel allows, a
// worker writes its chunk of connections in one system call (uring).
type fanout struct {
	mu      sync.Mutex
	list    []*wsConn // waiting for their turn, oldest first
	next    int       // list[next:] are still waiting
	running int
	max     int
	uring   bool  // send through io_uring when a ring can be had
	touched int32 // what the workers' touch loops read, kept so that their loads are made
}

// fanChunk is how many connections a worker takes from the list at once.
const fanChunk = 32

func newFanout(uring bool) *fanout { return &fanout{max: runtime.GOMAXPROCS(0), uring: uring} }

// schedule lists c for a turn. c must not be listed already: the caller
// has just taken its writing turn.
func (f *fanout) schedule(c *wsConn) {
	f.mu.Lock()
	f.list = append(f.list, c)
	start := f.running < f.max
	if start {
		f.running++
	}
	f.mu.Unlock()
	if start {
		go f.work()
	}
}

// work gives listed connections their turn until the list is empty.
func (f *fanout) work() {
	var (
		chunk   [fanChunk]*wsConn
		buf     []byte
		ring    *uring
		touched int32
	)
	if f.uring {
		ring = getURing()
	}
	defer func() {
		if ring != nil {
			putURing(ring)
		}
	}()
	for {
		f.mu.Lock()
		n := copy(chunk[:], f.list[f.next:])
		clear(f.list[f.next : f.next+n])
		f.next += n
		if f.next == len(f.list) {
			f.list, f.next = f.list[:0], 0
		}
		if n == 0 {
			f.running--
			f.touched |= touched
			f.mu.Unlock()
			return
		}
		f.mu.Unlock()
		touched |= touch(chunk[:n])
		if ring != nil && n > 1 {
			if err := pushAll(ring, chunk[:n]); err != nil {
				dropURing(ring) // its state is unknown; the next worker makes another
				ring = nil
			}
			clear(chunk[:n])
			continue
		}
		for i, c := range chunk[:n] {
			c.push(&buf)
			chunk[i] = nil
		}
	}
}

// touch reads a field of each of the chunk's connections' objects (the
// connection, its socket, its hub client) in plain loads that do not wait
// for each other. With thousands of connections each is a cache miss:
// here they overlap, where taken one connection at a time, under the
// locks that follow (a lock waits for the loads before it), they add up.
// Paced benchmark at 10,000 sockets, alternated with the code before:
// 0.08-0.41 µs less user CPU per delivery in 12 of 12 pairs (of 0.6-1.0).
// At 1,000 sockets, where the objects stay in the caches, no difference.
func touch(chunk []*wsConn) (seen int32) {
	for _, c := range chunk {
		seen |= c.pending.Load() | c.sock.fd | c.cl.limit
	}
	return seen
}

// uringScratch is a ring's room for one chunk, kept with the ring so that
// a worker starting allocates nothing.
type uringScratch struct {
	fds   [fanChunk]int32
	bufs  [fanChunk][]byte
	res   [fanChunk]int32
	slots [fanChunk]pushSlot
	arena []byte // where connections' frames are put together, one after another
}

// pushSlot is one connection's part of pushAll.
type pushSlot struct {
	c          *wsConn
	batch      []*entry
	b          []byte // the frame when shared (an entry's own bytes)
	start, end int    // else where its bytes are in the arena
	shared     bool
	done       bool
	tried      bool
	err        error
}

// uringArenaBytes is about as much as one system call sends of frames put
// together for it (queued frames, ?batch=1 arrays); a ring keeps its arena
// up to twice that, and rings live as long as the process.
const uringArenaBytes = 128 << 10

var errUringLost = errors.New("io_uring failed before the send was answered")

// pushAll is push for a chunk of connections, their writes made together
// in one system call (or a few, when much was queued). Each socket is held
// (its corkConn lock) from before the call until its answer is read, so it
// cannot be closed, and its descriptor reused, while the kernel has it.
// What a full socket did not take goes to the connection's own writer, as
// in push. It returns the ring's error, after which the ring must not be
// used again; the sends it left unanswered fail their connections, which
// then resume elsewhere or again from their last id.
func pushAll(r *uring, chunk []*wsConn) error {
	k := 0
	r.arena = r.arena[:0]
	for i, c := range chunk {
		batch := c.take(nil)
		if batch == nil {
			continue
		}
		start := len(r.arena)
		b, shared := c.assemble(batch, r.arena)
		if !shared {
			r.arena, b = b, nil
		}
		fd, err := c.sock.begin()
		if fd < 0 {
			r.arena = r.arena[:start]
			c.pushed(batch, false, err != nil, err)
			continue
		}
		r.slots[k] = pushSlot{c: c, batch: batch, b: b, start: start, end: len(r.arena), shared: shared}
		r.fds[k] = fd
		k++
		if len(r.arena) >= uringArenaBytes && i < len(chunk)-1 {
			if err := r.flush(k); err != nil {
				return err
			}
			k, r.arena = 0, r.arena[:0]
		}
	}
	err := r.flush(k)
	if cap(r.arena) > 2*uringArenaBytes {
		r.arena = nil // a burst's: do not keep it
	}
	return err
}

// flush sends the first k slots' frames in one system call and goes on
// with each connection as push does.
func (r *uring) flush(k int) error {
	if k == 0 {
		return nil
	}
	for i := range k {
		s := &r.slots[i]
		if !s.shared {
			s.b = r.arena[s.start:s.end]
		}
		r.bufs[i] = s.b
	}
	err := r.Send(r.fds[:k], r.bufs[:k], r.res[:k])
	// Every socket is let go before any connection goes on: going on may
	// take other locks (the hub's, to refill its credit). end copies what
	// a socket did not take out of the arena.
	for i := range k {
		s := &r.slots[i]
		n, werr := sendResult(r.res[i])
		s.done, s.tried, s.err = s.c.sock.end(s.b, s.shared, n, werr)
	}
	clear(r.bufs[:k])
	r.slots[0].c.t.metrics.uringSent(k)
	for i := range k {
		s := r.slots[i]
		r.slots[i] = pushSlot{}
		s.c.pushed(s.batch, s.done, s.tried, s.err)
	}
	return err
}

// sendResult reads a send's answer as write(2)'s: EAGAIN is no room, not
// an error.
func sendResult(res int32) (int, error) {
	switch {
	case res >= 0:
		return int(res), nil
	case res == iouring.NoAnswer:
		return 0, errUringLost
	case syscall.Errno(-res) == syscall.EAGAIN:
		return 0, nil
	default:
		return 0, syscall.Errno(-res)
	}
}
