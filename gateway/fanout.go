package gateway

import (
	"runtime"
	"sync"
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
// most one per CPU the Go runtime may use.
type fanout struct {
	mu      sync.Mutex
	list    []*wsConn // waiting for their turn, oldest first
	next    int       // list[next:] are still waiting
	running int
	max     int
}

// fanChunk is how many connections a worker takes from the list at once.
const fanChunk = 32

func newFanout() *fanout { return &fanout{max: runtime.GOMAXPROCS(0)} }

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
		chunk [fanChunk]*wsConn
		buf   []byte
	)
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
			f.mu.Unlock()
			return
		}
		f.mu.Unlock()
		for i, c := range chunk[:n] {
			c.push(&buf)
			chunk[i] = nil
		}
	}
}
