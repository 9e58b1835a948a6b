package main

import (
	"sync/atomic"
	"time"
)

// clock gives receipt and commit times as microseconds since the run's
// start, plus one so that zero means "not yet". An int32 holds 35 minutes,
// which bounds -duration; it halves the memory of the per-client arrays.
type clock struct{ start time.Time }

func (c clock) now() int32 { return int32(time.Since(c.start)/time.Microsecond) + 1 }

// tally is one client's record: when it received each of the writer's
// rows, and how often it received one twice. Only the client's own
// goroutine writes it; the report reads it after that goroutine ended.
type tally struct {
	got        []int32 // receipt time of row i, 0 if not received
	received   int64   // deliveries of the tool's rows, duplicates included
	dups       int64
	resets     int64
	reconnects int64

	connectTime int32 // first successful connect: how long it took
	lastDown    int32 // when its connection last ended (0: never)
	lastUp      int32 // when it last reconnected (0: never)

	lastID  [64]byte // the last event id, sent back to resume
	lastLen int
}

// progress counts distinct rows received by all clients, so the run can
// end as soon as every client has every row instead of waiting out the
// grace period.
type progress struct{ distinct atomic.Int64 }

// record notes event ev received at t.
func (tl *tally) record(ev event, t int32, p *progress) {
	if len(ev.id) <= len(tl.lastID) {
		tl.lastLen = copy(tl.lastID[:], ev.id)
	}
	if ev.reset {
		tl.resets++
		return
	}
	if ev.row < 0 {
		return
	}
	tl.received++
	if ev.row >= int64(len(tl.got)) {
		n := max(2*len(tl.got), int(ev.row)+1, 1024)
		grown := make([]int32, n)
		copy(grown, tl.got)
		tl.got = grown
	}
	if tl.got[ev.row] != 0 {
		tl.dups++
		return
	}
	tl.got[ev.row] = t
	p.distinct.Add(1)
}

// last is the id to resume from, "" before any event.
func (tl *tally) last() string { return string(tl.lastID[:tl.lastLen]) }
