package gateway

import (
	"runtime"
	"sync"

	"github.com/budget-rt/gateway/internal/iouring"
)

// uring is a ring lent to a fan-out worker, with the worker's room for one
// chunk (see pushAll). Where the kernel allows, a worker sends its chunk
// of sockets their frames in one system call (iouring.Ring.Send).
type uring struct {
	*iouring.Ring
	uringScratch
}

func newURing(entries uint32) (*uring, error) {
	r, err := iouring.New(entries)
	if err != nil {
		return nil, err
	}
	return &uring{Ring: r}, nil
}

// uringPool lends rings to fan-out workers. Rings are made on demand, up
// to limit (beyond it a worker writes as it would without io_uring), and
// live as long as the process: a few kilobytes each, and at most a few per
// CPU.
var uringPool struct {
	mu   sync.Mutex
	free []*uring
	made int
	err  error // the kernel refused: never ask again
}

// uringLimit bounds the rings made: every server in the process shares
// them (tests run several).
var uringLimit = 4 * runtime.GOMAXPROCS(0)

// getURing lends a ring, or nil when none can be had.
func getURing() *uring {
	p := &uringPool
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		r := p.free[n-1]
		p.free = p.free[:n-1]
		return r
	}
	if p.err != nil || p.made >= uringLimit {
		return nil
	}
	r, err := newURing(fanChunk)
	if err != nil {
		p.err = err
		return nil
	}
	p.made++
	return r
}

func putURing(r *uring) {
	p := &uringPool
	p.mu.Lock()
	p.free = append(p.free, r)
	p.mu.Unlock()
}

// dropURing closes a ring whose state is unknown after a failed send.
func dropURing(r *uring) {
	r.Close()
	p := &uringPool
	p.mu.Lock()
	p.made--
	p.mu.Unlock()
}

// uringUsable reports whether this process can send through io_uring, and
// why not when it cannot.
func uringUsable() error {
	r := getURing()
	if r != nil {
		putURing(r)
		return nil
	}
	p := &uringPool
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	return nil // all lent: it works
}
