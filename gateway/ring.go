package gateway

import (
	"sort"

	"github.com/budget-rt/gateway/notify"
)

// ring is the in-memory replay window: the newest events, oldest first, in a
// fixed-size circular buffer so that a full window costs no allocation.
type ring struct {
	buf   []*entry
	start int // index of the oldest entry
	n     int
}

func newRing(size int) ring { return ring{buf: make([]*entry, size)} }

func (r *ring) len() int { return r.n }

func (r *ring) at(i int) *entry { return r.buf[(r.start+i)%len(r.buf)] }

// push appends e and returns the entry it evicted, if any.
func (r *ring) push(e *entry) (evicted *entry) {
	if r.n == len(r.buf) {
		evicted = r.buf[r.start]
		r.buf[r.start] = e
		r.start = (r.start + 1) % len(r.buf)
		return evicted
	}
	r.buf[(r.start+r.n)%len(r.buf)] = e
	r.n++
	return nil
}

// pop removes and returns the oldest entry.
func (r *ring) pop() *entry {
	if r.n == 0 {
		return nil
	}
	e := r.buf[r.start]
	r.buf[r.start] = nil
	r.start = (r.start + 1) % len(r.buf)
	r.n--
	return e
}

// after returns the index of the first entry whose position is after p.
func (r *ring) after(p notify.Position) int {
	return sort.Search(r.n, func(i int) bool { return r.at(i).Pos.Compare(p) > 0 })
}

// find returns the index of the entry at exactly p.
func (r *ring) find(p notify.Position) (int, bool) {
	i := sort.Search(r.n, func(i int) bool { return r.at(i).Pos.Compare(p) >= 0 })
	return i, i < r.n && r.at(i).Pos == p
}

// slice copies the entries from index i on.
func (r *ring) slice(i int) []*entry {
	out := make([]*entry, 0, r.n-i)
	for ; i < r.n; i++ {
		out = append(out, r.at(i))
	}
	return out
}
